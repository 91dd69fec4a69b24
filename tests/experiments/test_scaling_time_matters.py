"""Reproduction of [220]: memory copies predict a transformer step's wall-clock time better than FLOPs."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_copy_count_model_explains_step_time_better_than_flops(run_claim, tmp_path):
  result = run_claim("scaling/time_matters", tmp_path, paper_id=220)
  claim = result["claim"]
  assert not claim["control_passes"], "the FLOPs model in the copy model's place must fail the claim"
  assert len(result["configs"]) == 10
  require_reproduced(claim)
