"""Reproduction: Hessian vs inter-layer-augmented ordering for W3/W8 mixed precision on a 6-layer DIGITS-MLP
(catalogue [595])."""

from __future__ import annotations

import pytest

from paperlab.runner import protocol


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=protocol.ClaimNotReproduced,
                   reason="at W3/W8 this MLP stays within the 1pt tolerance even with every layer at 3 bits (test: "
                          "FP 0.9653, all-3-bit 0.9616), so the claim is vacuous (its control passes) and the "
                          "validation-driven bisection is noise: 8-bit layers per seed hessian [1, 0, 0], augmented "
                          "[1, 0, 6] (means 0.33 vs 2.33)")
def test_augmented_order_needs_no_more_8_bit_layers_within_1pt(run_claim, tmp_path):
  result = run_claim("quant/interlayer_hessian", tmp_path, paper_id=595)
  claim = result["claim"]
  k = claim["high_layers_per_seed"]
  assert all(0 <= v <= 6 for arm in ("hessian", "augmented") for v in k[arm])
  assert claim["accuracy"]["fp"] > 0.9
  protocol.require_reproduced(claim)
