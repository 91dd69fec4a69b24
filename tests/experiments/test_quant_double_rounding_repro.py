"""Reproduction: Double Rounding joint {8,6,4,2}-bit QAT with ALRS vs separately trained LSQ models on DIGITS-MLP
(catalogue [528])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_switched_precisions_match_separately_trained_models(run_claim, tmp_path):
  result = run_claim("quant/double_rounding", tmp_path, paper_id=528)
  claim = result["claim"]
  assert not claim["control_passes"], "the 8-bit-only model switched by double rounding must fail the claim"
  acc = claim["accuracy"]
  assert acc["switch8"]["acc_w2"] < acc["separate"]["acc_w2"] - 0.03  # the control really collapses at 2 bits
  assert acc["joint"]["acc_w8"] >= acc["fp"]["acc_w8"] - 0.01  # the 8-bit switched model keeps float accuracy
  require_reproduced(claim)
