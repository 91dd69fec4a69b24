"""Reproduction test for experiments/merge/soups.py (Wortsman et al., arXiv:2203.05482), catalogue [61]."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_greedy_soup_matches_best_ingredient_and_random_init_soup_collapses(run_claim, tmp_path):
  # Measured (seeds 0-2): greedy 97.70% test / 44.44% OOD vs best ingredient 97.93% / 43.19%; soups keep 4, 3, 3
  # ingredients; random-init uniform soup 42.7 points below its ingredients.
  result = run_claim("merge/soups", tmp_path, paper_id=61)
  claim = result["claim"]
  assert not claim["control_passes"], "the best ingredient (a soup of one model) passed as the soup must fail"
  assert all(k >= 2 for k in claim["ingredients_kept"]), claim["ingredients_kept"]
  assert claim["random_init_control_passed"], claim["random_init_gap_per_seed"]
  assert len(result["greedy_soup"]["test"]) == 3
  require_reproduced(claim)
