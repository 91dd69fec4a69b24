"""Reproductions of losses part B (uncertainty weighting, loss-free MoE balancing, VAT, ...): each asserts its
catalogue claim at CI scale."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the catalogue's setting (noise 0.1/3.0, 2-layer trunk, 2000 Adam steps, lr chosen on "
    "validation: 1e-3 for both arms, 3 seeds): task-1 MSE ratio 0.32 <= 0.7 and task-2 0.90 <= 1.1 hold, but "
    "exp(s)/residual MSE is 8.9 (task 1) and 0.74 (task 2), outside 25%"))
def test_uncertainty_weighting_learns_the_noise_and_helps_the_low_noise_task(run_claim, tmp_path):
  result = run_claim("losses/uncertainty_weighting", tmp_path, paper_id=133)
  claim = result["claim"]
  assert result["protocol"]["seeds"] == [0, 1, 2]
  assert not claim["control_passes"], "equal weighting passed as the method must fail the claim"
  assert claim["task1_mse_ratio"] <= 0.7 and claim["task2_mse_ratio"] <= 1.1  # the MSE half holds
  require_reproduced(claim)
