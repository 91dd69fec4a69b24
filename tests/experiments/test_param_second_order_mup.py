"""Reproduction: the best K-FAC learning rate across width under the muP-K-FAC spec vs SP (catalogue [268])."""

from __future__ import annotations

import pytest

from paperlab.runner import protocol


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=protocol.ClaimNotReproduced,
                   reason="widths 16/64, seeds 0-2, at the CI scale (40 steps): best log2 lr muP-K-FAC 1/1 and SP "
                          "1/1 (0 grid steps each; SP must move >= 2). The full run (the record, widths 64..512, "
                          "100 steps): muP 1/0/1/1, SP 1/0/1/0 (1 step each)")
def test_kfac_mup_best_learning_rate_transfers_across_width_and_sp_does_not(run_claim, tmp_path):
  result = run_claim("param/second_order_mup", tmp_path, paper_id=268)
  claim = result["claim"]
  assert not claim["control_passes"], "SP in muP's place must fail the claim"
  assert claim["grid_steps_mup"] <= 1, "muP-K-FAC's argmin itself should move by at most one grid step"
  assert (tmp_path / "second_order_mup_loss_vs_lr.png").exists()
  assert len(result["protocol"]["seeds"]) >= 3
  protocol.require_reproduced(claim)
