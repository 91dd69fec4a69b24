"""Reproduction: QLLM's channel reassembly and low-rank error correction at W4A4 on DIGITS-MLP-OUT (catalogue [89],
arXiv:2310.08041)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_qllm_reassembly_shrinks_activation_error_and_beats_rtn_w4a4(run_claim, tmp_path):
  result = run_claim("quant/qllm", tmp_path, paper_id=89)
  claim = result["claim"]
  assert not claim["control_passes"], "RTN passed as QLLM must fail the claim"
  assert claim["act_mse_ratio"] <= 0.3
  assert claim["gain_over_rtn"] >= 0.05
  require_reproduced(claim)
