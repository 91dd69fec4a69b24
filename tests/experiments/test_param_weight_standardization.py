"""Reproduction: Weight Standardization on top of GroupNorm at batch size 2 (catalogue [73])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced,
                   reason="at the CI scale (300 steps, lr grid {0.01, 0.03}; seeds 0-2) test accuracy WS+GN 0.471 vs "
                          "GN 0.230 (that part holds), but the variance of the gradient norm over the steps is 1.53x "
                          "GN-only's (claim: < 0.9x); the record (500 steps): 0.603 vs 0.418, 1.9x")
def test_weight_standardization_keeps_accuracy_and_lowers_gradient_norm_variance(run_claim, tmp_path):
  result = run_claim("param/weight_standardization", tmp_path, paper_id=73)
  claim = result["claim"]
  assert not claim["control_passes"], "GroupNorm alone in WS+GN's place must fail the claim"
  assert claim["accuracy_holds"], (claim["test_accuracy_ws_gn"], claim["test_accuracy_gn"])
  require_reproduced(claim)
