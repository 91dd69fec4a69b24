"""Reproduction test for "Robust Weight Signatures" [3] on digits with Gaussian input noise."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_first_layer_signature_recovers_noise_robustness(run_claim, tmp_path):
  result = run_claim("merge/robust_weight_signatures", tmp_path, paper_id=3)
  assert result["claim"]["passed"], result["claim"]
