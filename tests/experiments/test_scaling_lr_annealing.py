"""Reproduction: the LR-annealing law fitted on constant + cosine predicts the WSD curve (catalogue [21])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (teacher MLP regression, 3000 SGD steps, 3 seeds): WSD final-loss relative error 0.084 > "
    "0.03 (curve MAPE 0.0485 < 0.05); cosine ends worse than constant here, so the fit sets C ~ 0 and misses "
    "WSD's cooldown drop"))
def test_lr_annealing_law_predicts_wsd(run_claim, tmp_path):
  result = run_claim("scaling/lr_annealing", tmp_path, paper_id=21)
  claim = result["claim"]
  assert not claim["control_passes"], "the law without its annealing term must fail the claim"
  assert len(claim["wsd_mape_per_seed"]) == 3
  assert claim["wsd_mape"] < 0.05  # the curve-MAPE half of the claim holds
  require_reproduced(claim)
