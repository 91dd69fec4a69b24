"""Reproduction: Sparse Wide at s = 0.75 (64-256-256-10, RigL) vs the dense 64-128-128-10 MLP at equal FLOPs
(catalogue [90])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_sparse_wide_matches_dense_at_equal_flops(run_claim, tmp_path):
  result = run_claim("prune/isoflop", tmp_path, paper_id=90)
  claim = result["claim"]
  assert not claim["control_passes"], "sparse training without widening passed the claim"
  assert abs(claim["flop_ratio"]["sparse_wide"] - 1.0) <= 0.05
  assert claim["wide_width"] == 256 and claim["densities"] == {"0/kernel": 0.5, "1/kernel": 0.25, "2/kernel": 0.5}
  require_reproduced(claim)
