"""Reproduction of [571]: the magnitude-invariant hypernetwork parametrization against the default one."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced,
                   reason="with the same learning-rate grid, each arm tuned on validation, MIP's test loss at step 300 "
                          "is 0.79x the default's (0.00226 vs 0.00287; per seed 0.0016/0.0033/0.0019 vs "
                          "0.0017/0.0049/0.0020), not < 0.7x")
def test_mip_reaches_a_lower_loss_at_step_300_than_the_default_hypernetwork(run_claim, tmp_path):
  result = run_claim("param/mip_hypernet", tmp_path, paper_id=571)
  claim = result["claim"]
  assert not claim["control_passes"], "the default hypernetwork in MIP's place must fail the claim"
  assert claim["test_loss_mip"] < claim["test_loss_default"], claim  # MIP is ahead, only not by the claimed margin
  require_reproduced(claim)
