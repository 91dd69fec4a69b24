"""Reproduction: LeanQuant-nu vs GPTQ at W3/W2 per output channel on DIGITS-MLP and CHAR-LM (catalogue [177])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds, p = 4): at the CI scale (CHAR-LM 150 steps) the W3 layer objective is above "
    "GPTQ's on 3 of 11 layers (DIGITS head 1.03x, CHAR-LM qkv0 1.04x, fc1_0 1.04x) and DIGITS W2 acc 0.9667 vs GPTQ "
    "0.9696 (claim +2pt), though CHAR-LM W3 ppl 4.958 < GPTQ 5.027; the record (full run): the same 3 layers (1.03x, "
    "1.05x, 1.03x), CHAR-LM W3 ppl 2.757 vs GPTQ 2.735, the same DIGITS W2 accuracies"))
def test_leanquant_beats_gptq(run_claim, tmp_path):
  result = run_claim("quant/leanquant", tmp_path, paper_id=177)
  claim = result["claim"]
  assert not claim["control_passes"], "GPTQ passed as LeanQuant must fail the claim"
  ppl, acc = claim["char_ppl"], claim["digits_accuracy"]
  # quantization costs something on both substrates, so the comparisons are not between two copies of the model
  assert ppl["fp"] < ppl["gptq_w3"] and ppl["fp"] < ppl["leanquant_w3"]
  assert acc["leanquant_w2"] < acc["fp"] and acc["gptq_w2"] < acc["fp"]
  assert len(claim["layer_objective_ratio_leanquant_over_gptq"]) == 11  # 3 DIGITS + 8 CHAR-LM layers compared
  require_reproduced(claim)
