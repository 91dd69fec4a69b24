"""Reproduction: MambaQuant's KLT-enhanced rotation vs a Hadamard rotation at W8A8 per tensor, synthetic heavy-tailed
activations through DIGITS-MLP-OUT layer 2 (catalogue [80], arXiv:2501.13484)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds): output MSE KLT+H 0.418 vs Hadamard 0.241 (ratio 1.73, needs <= 0.7) at the CI "
    "scale, 0.462 vs 0.264 (1.75) in the record; MSE(H) <= MSE(no rotation) holds (0.241 vs 2.73; record 0.264 vs "
    "3.14)"))
def test_klt_hadamard_rotation_lowers_w8a8_output_error_below_hadamard(run_claim, tmp_path):
  result = run_claim("quant/mambaquant", tmp_path, paper_id=80)
  claim = result["claim"]
  assert not claim["control_passes"], "the Hadamard arm passed as KLT+H must fail the claim"
  assert claim["h_le_none"]  # the part that holds: any rotation beats none
  assert claim["mse"]["h"] < 0.2 * claim["mse"]["none"]
  require_reproduced(claim)
