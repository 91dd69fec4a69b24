"""Reproduction: muTransfer of a char transformer's best Adam learning rate across 8x width under muP (1/d_head
attention), not SP -- the char-transformer part of issue 16 for catalogue [359] (experiments/param/mutransfer_char.py;
the MLP part is test_param_mutransfer.py)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_mup_char_transformer_best_learning_rate_transfers_across_width(run_claim, tmp_path):
  result = run_claim("param/mutransfer_char", tmp_path, paper_id=359)
  claim = result["claim"]
  assert not claim["control_passes"], "SP in muP's place must fail the claim"
  assert (tmp_path / "mutransfer_char_loss_vs_lr.png").exists()
  assert len(result["protocol"]["seeds"]) >= 3
  require_reproduced(claim)
