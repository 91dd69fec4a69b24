"""Reproduction: AWQ vs RTN (and GPTQ) weight-only PTQ on DIGITS-MLP-OUT and a char transformer (catalogue [243])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds): DIGITS-MLP-OUT W3 g32 accuracy drop AWQ 0.15pt = RTN 0.15pt (needs <= 0.5x); "
    "CHAR-LM W3 g32 test ppl AWQ 2.500 < RTN 2.536 but > GPTQ 2.385 + 2% (2.433)"))
def test_awq_loses_less_than_rtn(run_claim, tmp_path):
  result = run_claim("quant/ptq_char", tmp_path, paper_id=243)
  claim = result["claim"]
  assert not claim["control_passes"], "RTN passed as AWQ must fail the claim"
  ppl = claim["char_ppl"]
  for bits in (4, 3):  # the parts that hold: both calibrated methods beat RTN, RTN loses more at W3
    assert ppl[f"awq_w{bits}"] < ppl[f"rtn_w{bits}"] and ppl[f"gptq_w{bits}"] < ppl[f"rtn_w{bits}"]
  assert ppl["fp"] < ppl["rtn_w4"] < ppl["rtn_w3"]
  assert (tmp_path / "ptq_table.md").exists() and (tmp_path / "ptq_ppl.png").exists()
  require_reproduced(claim)
