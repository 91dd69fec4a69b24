"""Reproductions: RSQ [74] (rotation + AttnCon token weights + GPTQ on CHAR-LM W3 g32) and GuidedQuant [63]
(end-loss-guided GPTQ on DIGITS-MLP W2/W3 and CHAR-LM W3). Both run on the substrates of experiments/quant/fp6.py,
trained once per process."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
# At the CI scale (fp6.py's CI_CONFIG: CHAR-LM 150 steps, 64 eval windows) the claim holds: RSQ 4.9526 vs GPTQ +
# rotation 4.9768 (-0.49%), GPTQ 4.9804, RTN 5.2256. The full run (paperlab reproduce 74, the record) does not
# reproduce it: GPTQ 2.698, GPTQ+rotation 2.719 (+0.78%, claim <= GPTQ), RSQ 2.745 (+0.94%, claim <= +0.5%).
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
    "0.9659); W3 CE 0.1074 vs 0.1062 but acc 0.9733 vs 0.9689, at the CI scale and in the record alike (the DIGITS "
    "substrate is the same); the CHAR-LM W3 part holds (CI scale, 150 steps: ppl 5.027 -> 4.989; record: 2.735 -> "
    "2.731)"))
def test_guidedquant_beats_gptq(run_claim, tmp_path):
  result = run_claim("quant/guidedquant", tmp_path, paper_id=63)
  claim = result["claim"]
  assert not claim["control_passes"], "GPTQ passed as GuidedQuant must fail the claim"
  assert claim["char_w3_holds"]  # the part that holds
  require_reproduced(claim)
