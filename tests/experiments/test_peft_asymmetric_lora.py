"""Reproduction: asymmetric LoRA -- train B with a frozen random A (catalogue [381])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the catalogue's setting (label-permuted digits, LoRA r=8 on the hidden kernels, 300 "
    "steps, 3 seeds), at the CI scale (lr grid {3e-3, 1e-2}: the record's chosen points) as in the full run (the "
    "record): B-only 0.8637 vs A-only 0.9170 (-5.3pt, claim +5pt) and vs full LoRA 0.9418 (-7.8pt, claim -3pt)"))
def test_training_b_alone_matches_lora_and_beats_training_a(run_claim, tmp_path):
  result = run_claim("peft/asymmetric_lora", tmp_path, paper_id=381)
  claim = result["claim"]
  assert not claim["control_passes"], "A-only passed as the method must fail the claim"
  assert claim["test_accuracy"]["lora"] >= 0.9  # the adaptation itself works: full LoRA learns the permuted task
  assert claim["trainable_params"]["b_only"] < 0.1 * claim["base_params"]
  require_reproduced(claim)
