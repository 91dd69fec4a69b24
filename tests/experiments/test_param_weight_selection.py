"""Reproduction: weight selection from a larger trained MLP beats a random init after one epoch (catalogue [149])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_weight_selection_beats_random_init(run_claim, tmp_path):
  result = run_claim("param/weight_selection", tmp_path, paper_id=149)
  claim = result["claim"]
  assert not claim["control_passes"], "the random init in the selected init's place must fail the claim"
  assert claim["teacher_test_accuracy"] > 0.9
  require_reproduced(claim)
