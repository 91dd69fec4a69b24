"""Reproductions: RSQ [74] (rotation + AttnCon token weights + GPTQ on CHAR-LM W3 g32) and GuidedQuant [63]
(end-loss-guided GPTQ on DIGITS-MLP W2/W3 and CHAR-LM W3). Both run on the substrates of experiments/quant/fp6.py,
trained once per process."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds, CHAR-LM W3 g32 test ppl): GPTQ 2.698, GPTQ+rotation 2.719 (+0.78%, claim <= "
    "GPTQ), RSQ 2.745 (+0.94% over GPTQ+rotation, claim <= +0.5%); RTN 2.862"))
def test_rsq_is_no_worse_than_rotated_gptq(run_claim, tmp_path):
  result = run_claim("quant/guided_rsq", tmp_path, paper_id=74)
  claim = result["claim"]
  assert not claim["control_passes"], "RTN passed as RSQ must fail the claim"
  ppl = claim["char_ppl"]
  assert ppl["gptq"] < ppl["rtn"] and ppl["rsq"] < ppl["rtn"]  # every GPTQ variant beats round-to-nearest
  require_reproduced(claim)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds): DIGITS-MLP W2 per-row test CE GPTQ 0.1148 vs guided 0.1330 (acc 0.9696 vs "
    "0.9659); W3 CE 0.1074 vs 0.1062 but acc 0.9733 vs 0.9689; the CHAR-LM W3 part holds (ppl 2.735 -> 2.731)"))
def test_guidedquant_beats_gptq(run_claim, tmp_path):
  result = run_claim("quant/guidedquant", tmp_path, paper_id=63)
  claim = result["claim"]
  assert not claim["control_passes"], "GPTQ passed as GuidedQuant must fail the claim"
  assert claim["char_w3_holds"]  # the part that holds
  require_reproduced(claim)
