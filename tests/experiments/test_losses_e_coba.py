"""Reproduction: CoBa turns down a diverging task (catalogue [118])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_coba_downweights_a_diverging_task_and_lowers_the_worst_validation_loss(run_claim, tmp_path):
  # measured (seeds 0-2): weight stays below 1/K from 0/11/0 steps after the drift; worst val loss 0.142 vs 0.180
  result = run_claim("losses/coba", tmp_path, paper_id=118)
  claim = result["claim"]
  assert not claim["control_passes"], "equal weighting passed as CoBa must fail the claim"
  assert result["protocol"]["seeds"] == [0, 1, 2]
  require_reproduced(claim)
