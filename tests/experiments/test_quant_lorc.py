"""Reproduction: LoRC (rank-8 low-rank compensation of the quantization error) on W3 g32 RTN/GPTQ DIGITS-MLP
(catalogue [572], ZeroQuant-V2) and the issue's "LoRC lowers W4 perplexity" on the char transformer."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds): DIGITS-MLP W3 g32 test accuracy fp 0.9733, RTN 0.9711, RTN+LoRC 0.9711 "
    "(closes 0% of a one-image gap, needs >= 30%), GPTQ = GPTQ+LoRC 0.9719, at the CI scale (CHAR-LM 150 steps) "
    "and in the record alike; the CHAR-LM W4 part holds (CI scale: RTN 4.923 -> RTN+LoRC 4.906; record: 2.672 -> "
    "2.660)"))
def test_lorc_closes_the_rtn_gap_and_lowers_w4_perplexity(run_claim, tmp_path):
  result = run_claim("quant/lorc", tmp_path, paper_id=572)
  claim = result["claim"]
  assert not claim["control_passes"], "RTN passed as RTN+LoRC must fail the claim"
  assert claim["digits_overhead"] < 0.1  # the overhead bound of the claim holds by construction (rank 8, hidden)
  ppl = claim["char_ppl"]
  assert ppl["rtn_lorc"] < ppl["rtn"]  # the part that holds
  require_reproduced(claim)
