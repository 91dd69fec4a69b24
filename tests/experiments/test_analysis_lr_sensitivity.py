"""Reproduction: qk-layernorm + z-loss lower the LR sensitivity of a small transformer (catalogue [249])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "at the CI scale (100 steps, context 16, 32 held-out windows) the claim does not hold: LR sensitivity 0.315 vs "
    "0.355 (ratio 0.89, not < 0.7; max attention logit ratio 0.004 holds); the full run (paperlab reproduce 249, "
    "the record) reproduces it: sensitivity 0.449 vs 0.893 (ratio 0.50), max attention logit 13.4 vs 14243"))
def test_qk_layernorm_and_z_loss_lower_lr_sensitivity_and_attention_logits(run_claim, tmp_path):
  # Measured (full run, the record): sensitivity 0.449 vs 0.893 (ratio 0.50); max attention logit at LR 0.1 13.4 vs
  # 14243. At the CI scale: 0.315 vs 0.355 (0.89), 10.6 vs 2577.
  result = run_claim("analysis/lr_sensitivity", tmp_path, paper_id=249)
  claim = result["claim"]
  assert not claim["control_passes"], "the baseline passed as the method must fail the claim"
  assert len(claim["per_seed"]["baseline"]["lr_sensitivity"]) == 3
  require_reproduced(claim)
