"""Reproduction: EQ-Net's elastic supernet (bits {2,4,8} x {per-tensor, per-channel} x {sym, asym}) against 12
separately QAT-trained models on DIGITS-MLP (catalogue [108]), at the CI scale of ``CI_CONFIG`` (one learning rate)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_every_supernet_form_is_within_tolerance_of_its_separately_trained_model(run_claim, tmp_path):
  result = run_claim("quant/eq_net", tmp_path, paper_id=108)
  claim = result["claim"]
  assert not claim["control_passes"], "the 8-bit-only supernet (no sandwich, GPG, WDR) must fail the claim"
  acc = claim["accuracy"]
  assert len(claim["forms"]) == 12
  assert acc["qat8"]["w2_tensor_sym"] < acc["separate"]["w2_tensor_sym"] - 0.1  # the control collapses at 2 bits
  assert acc["eqnet"]["w2_tensor_sym"] > acc["qat8"]["w2_tensor_sym"] + 0.3  # elastic training serves 2 bits
  require_reproduced(claim)
