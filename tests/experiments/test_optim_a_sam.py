"""Reproduction: SAM finds flatter minima than SGD-momentum under label noise (catalogue [261])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the CI scale (CI_CONFIG: 10 epochs, seeds 0-2): lambda_max SAM 1.82 vs SGD 2.04 (ratio "
    "0.89 > 0.7), clean test accuracy 0.911 vs 0.906; nor at the full run (paperlab reproduce 261, the record: "
    "rho=0.05, SGD-M lr 0.05, 40 epochs, 3 seeds): lambda_max SAM "
    "1.86 vs SGD 1.84 (ratio 1.01 > 0.7), clean test accuracy 0.810 vs 0.816"))
def test_sam_is_flatter_and_no_less_accurate_under_label_noise(run_claim, tmp_path):
  result = run_claim("optim/sam", tmp_path, paper_id=261)
  claim = result["claim"]
  assert not claim["control_passes"], "SGD passed as the method must fail the claim"
  assert result["protocol"]["seeds"] == [0, 1, 2]
  require_reproduced(claim)
