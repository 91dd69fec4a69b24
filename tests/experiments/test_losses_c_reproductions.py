"""Reproductions of the remaining losses papers (NKD, calibration, NeuralNDCG, ALDR-KL, PolyLoss, Inf-CL, ...):
each asserts its catalogue claim at CI scale."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("name", ["calibration", "aldr_kl", "poly"])
def test_claim_reproduces(name, run_claim, tmp_path):
  result = run_claim(f"losses/{name}", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="does not reproduce at CI scale with the per-token loss: the token-averaged "
                   "self-adjusting dice (alpha=0.1) predicts every token positive (F1 0.099 vs BCE 0.508); with the "
                   "official code's set-level reduction DSC reaches F1 0.561 (+0.053)")
def test_dice_claim(run_claim, tmp_path):
  result = run_claim("losses/dice", tmp_path)
  assert result["claim"]["passed"], result["claim"]
