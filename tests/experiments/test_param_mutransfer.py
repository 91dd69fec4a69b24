"""Reproduction: muTransfer of the best Adam learning rate across width under muP, not SP (catalogue [359])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_mup_best_learning_rate_transfers_across_width(run_claim, tmp_path):
  result = run_claim("param/mutransfer", tmp_path, paper_id=359)
  claim = result["claim"]
  assert not claim["control_passes"], "SP in muP's place must fail the claim"
  assert (tmp_path / "mutransfer_loss_vs_lr.png").exists() and (tmp_path / "coord_check_mup.png").exists()
  assert len(result["protocol"]["seeds"]) >= 3
  require_reproduced(claim)
