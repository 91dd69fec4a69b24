"""Reproduction: AdaQuant + bias tuning vs RTN at W4A4 and the IP bit allocation on DIGITS-MLP (catalogue [592])."""

from __future__ import annotations

import pytest

from paperlab.runner import protocol


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=protocol.ClaimNotReproduced,
                   reason="W4A4 on DIGITS-MLP hardly hurts (seed means: FP 0.9665, RTN 0.9603, AdaQuant + bias "
                          "tuning 0.9591: the 0.6pt RTN drop is below two test images per seed, and AdaQuant's "
                          "drop is not half of it); the IP at an average of 4 bits chooses uniform 4 bits (equal "
                          "accuracy, size = budget)")
def test_adaquant_halves_rtn_drop_and_ip_matches_uniform_4_bit(run_claim, tmp_path):
  result = run_claim("quant/bit_allocation", tmp_path, paper_id=592)
  claim = result["claim"]
  assert not claim["control_passes"], "RTN passed as AdaQuant must fail the claim"
  assert claim["ip_within_budget"]
  assert all(size <= budget for size, budget in zip(claim["ip_size_bits"], claim["budget_bits"]))
  assert claim["accuracy"]["rtn"] < claim["accuracy"]["fp"]  # the ratio is not vacuous
  protocol.require_reproduced(claim)
