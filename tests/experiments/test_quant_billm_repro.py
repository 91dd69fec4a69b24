"""Reproduction: BiLLM vs naive binarization vs GPTQ-binary on DIGITS-MLP's hidden layer (catalogue [111])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds): BiLLM 0.9689 vs naive binarization 0.9696 (claim +15pt) and GPTQ-binary 0.9719; "
    "naive binarization of the one hidden-to-hidden layer loses only 0.37pt from full precision 0.9733"))
def test_billm_beats_naive_and_gptq_binarization(run_claim, tmp_path):
  result = run_claim("quant/billm", tmp_path, paper_id=111)
  claim = result["claim"]
  assert not claim["control_passes"], "naive binarization passed as BiLLM must fail the claim"
  acc = claim["digits_accuracy"]
  assert acc["naive"] < acc["w8_ends"]  # binarizing the layer costs accuracy, so the comparison is not vacuous
  assert 1.0 < claim["billm_bits_per_weight_paper"] <= 1.25  # about one bit per weight (paper: ~1.1)
  require_reproduced(claim)
