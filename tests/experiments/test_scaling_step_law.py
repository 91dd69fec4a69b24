"""Reproduction: the optimal LR of digits MLPs follows log eta = a + b log N + c log D with b < 0 (catalogue
[539])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_step_law_larger_models_want_smaller_lr(run_claim, tmp_path):
  # Measured: b = -0.397 (per seed -0.41/-0.53/-0.25), RMSE 0.94 log2 (1.07/0.97/0.78); control b = +0.37.
  result = run_claim("scaling/step_law", tmp_path, paper_id=539)
  claim = result["claim"]
  assert not claim["control_passes"], "the argmins assigned to reversed model sizes must fail the claim"
  assert len(claim["b_per_seed"]) == 3
  require_reproduced(claim)
