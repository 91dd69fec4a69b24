"""Reproduction: AdaLoRA moves its rank budget to the one layer a label permutation needs (catalogue [403])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (label-permuted digits, 3 adapted layers, 24 -> 12 ranks, 400 steps, 3 seeds), at the CI "
    "scale (lr grid {3e-3, 1e-2}: the record's chosen points) as in the full run (the record): the head "
    "ends with 5 of 12 ranks (share 0.417, claim >= 0.5; hidden/1 gets 7) and AdaLoRA 0.9467 trails uniform LoRA "
    "0.9628 by 1.6pt (claim >= -1pt)"))
def test_adalora_gives_the_head_half_the_budget_and_matches_uniform_lora(run_claim, tmp_path):
  result = run_claim("peft/adalora", tmp_path, paper_id=403)
  claim = result["claim"]
  assert not claim["control_passes"], "uniform LoRA passed as AdaLoRA"
  assert claim["total_rank"]["lora"] == 12 and claim["total_rank"]["adalora"] <= 12  # the final budget
  assert claim["test_accuracy"]["lora"] >= 0.9  # the permuted task is learnt at this budget
  require_reproduced(claim)
