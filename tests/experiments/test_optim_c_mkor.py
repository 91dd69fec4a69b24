"""Reproduction: MKOR vs SGD with momentum on a digits MLP (catalogue [410])."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "does not reproduce at CI scale: at the best LR of {0.03, 0.1, 0.3, 1.0} (0.3 for both) MKOR with the "
    "official algorithm and defaults (SM(0.95 F^-1 + 0.05 I, v), per-layer resets to I, factor update every 10 "
    "steps) reaches train loss 0.1 in 16.7 steps vs 16.0 for SGD-M (ratio 1.04 > 0.7); with factor updates every "
    "step 12.7 vs 16.0 (0.79), with the paper's Algorithm 1 update 14.3 vs 16.0 (0.90). The target is reached "
    "within 2 factor updates, and the first official factor update only resets the factors to I. Time per step "
    "holds (2.3x SGD-M on a shared 2-core CPU, <= 3x)."))
def test_mkor_reaches_the_target_loss_in_fewer_steps(run_claim, tmp_path):
  result = run_claim("optim/mkor", tmp_path, paper_id=410)
  claim = result["claim"]
  assert claim["time_per_step_ratio"] <= 3.0
  assert claim["passed"], claim
