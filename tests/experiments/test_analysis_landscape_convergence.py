"""Reproduction of [183]: the landscape settles like 1/k^2 in the sample size, under the second-order bound."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_delta_k_decays_like_one_over_k_squared_below_the_hessian_bound(run_claim, tmp_path):
  result = run_claim("analysis/landscape_convergence", tmp_path, paper_id=183)
  claim = result["claim"]
  assert not claim["control_slope_passes"], ("E_w[(L_k(w) - L_k(w*))^2] must not decay like 1/k^2",
                                             claim["control_slope"])
  assert not claim["control_bound_passes"], ("the bound without its Hessian term must fail somewhere",
                                             claim["min_bound_no_hessian_over_delta"])
  assert claim["train_loss"] < 1e-2, claim["train_loss"]
  require_reproduced(claim)
