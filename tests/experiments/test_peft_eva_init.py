"""Reproduction: EVA's explained-variance LoRA initialization vs random-A LoRA on noisy digits (catalogue [546])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (noisy digits, noise std 1.0, LoRA r=4 on the 2 hidden kernels, lr grid on validation loss, "
    "3 seeds), at the CI scale (lr grid {3e-3, 1e-2}: the record's chosen points) as in the full run (the record): "
    "test loss at step 50 EVA 0.693 vs random-A LoRA 0.691, ratio 1.003 (claim < 0.9); ranks sum to 8"))
def test_eva_init_lowers_the_loss_at_step_50_and_keeps_the_rank_budget(run_claim, tmp_path):
  result = run_claim("peft/eva", tmp_path, paper_id=546)
  claim = result["claim"]
  assert not claim["control_passes"], "random-A LoRA passed as EVA"
  assert claim["ranks_sum_to_budget"]  # the rank redistribution keeps L r = 8 ranks on every seed
  assert all(max(r.values()) <= 8 for r in claim["eva_ranks"])  # rho = 2 caps a layer at 2 r
  require_reproduced(claim)
