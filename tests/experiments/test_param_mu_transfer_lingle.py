"""Reproduction: Lingle's muP recipe keeps a transformer's best Adam learning rate across width, SP does not
(catalogue [412], experiments/param/mu_transfer_lingle.py)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_lingle_mup_best_learning_rate_moves_at_most_one_grid_step_across_width(run_claim, tmp_path):
  result = run_claim("param/mu_transfer_lingle", tmp_path, paper_id=412)
  claim = result["claim"]
  assert not claim["control_passes"], "SP in muP's place must fail the claim"
  assert (tmp_path / "mu_transfer_lingle.png").exists()
  assert len(result["protocol"]["seeds"]) >= 3
  require_reproduced(claim)
