"""Reproduction: depth-muP's 1/sqrt(L) branch scaling transfers the best SGD learning rate across depth, unit
branches do not (catalogue [361])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_depth_mup_best_learning_rate_transfers_across_depth(run_claim, tmp_path):
  result = run_claim("param/depth_mup", tmp_path, paper_id=361)
  claim = result["claim"]
  assert not claim["control_passes"], "unit branches in depth-muP's place must fail the claim"
  assert (tmp_path / "depth_mup_loss_vs_lr.png").exists()
  assert len(result["protocol"]["seeds"]) >= 3
  require_reproduced(claim)
