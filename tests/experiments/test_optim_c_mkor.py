"""Reproduction: MKOR vs SGD with momentum on a digits MLP (catalogue [410])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the CI scale (CI_CONFIG: 60 steps; the full run, paperlab reproduce 410, the record, "
    "gives the same numbers): with the LR picked on selection seeds from {0.03, 0.1, 0.3, 1.0} "
    "(0.3 for both) MKOR with the official algorithm and defaults (SM(0.95 F^-1 + 0.05 I, v), per-layer resets to "
    "I, factor update every 10 steps) reaches train loss 0.1 in 15.7 steps vs 15.0 for SGD-M on seeds 0-2 (ratio "
    "1.04 > 0.7). Time per step holds (1.32x SGD-M on a shared 2-core CPU, <= 3x)."))
def test_mkor_reaches_the_target_loss_in_fewer_steps(run_claim, tmp_path):
  result = run_claim("optim/mkor", tmp_path, paper_id=410)
  claim = result["claim"]
  assert result["protocol"]["seeds"] == [0, 1, 2] and len(result["mkor"]["steps_to_target"]) == 3
  assert not claim["control_passes"], "SGD-M passed as the method must fail the claim"
  assert claim["time_per_step_ratio"] <= 3.0
  require_reproduced(claim)
