"""Reproduction: is oracle pruning the true oracle? Kendall tau between the pruned loss and the accuracy after
retraining over 40 masks at 90% sparsity, DIGITS vs DIGITS with 50% label noise (catalogue [87])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_correlation_is_no_stronger_on_the_harder_task(run_claim, tmp_path):
  result = run_claim("prune/oracle_pruning", tmp_path, paper_id=87)
  claim = result["claim"]
  assert not claim["control_passes"], "a rank-preserving retraining passed the claim"
  assert claim["tau_in_range"] and claim["masks_reproducible"]
  assert all(abs(s - 0.9) < 0.01 for s in claim["sparsity"].values())
  assert len(result["tables"]["digits"]["loss_before"][0]) == 40
  require_reproduced(claim)
