"""Reproductions of losses part B (uncertainty weighting, loss-free MoE balancing, VAT, ...): each asserts its
catalogue claim at CI scale."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("name", ["uncertainty_weighting", "sample_reweighting", "coba",
                                  "gap_balancing", "power_law"])
def test_claim_reproduces(name, run_claim, tmp_path):
  result = run_claim(f"losses/{name}", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="does not reproduce at CI scale: CE+0.3 NTL-WAS MAE 0.505 vs CE 0.509 "
                   "(ratio 0.99, claim <= 0.85; exact match 0.527 vs 0.524); with 100 / 300 training points the "
                   "ratio is 0.986 / 0.985")
def test_number_token_loss_claim(run_claim, tmp_path):
  result = run_claim("losses/number_token", tmp_path)
  assert result["claim"]["passed"], result["claim"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="does not reproduce at CI scale: greedy 4-gram repetition rate 0.730 under "
                   "TLDR vs 0.645 under CE (claim: TLDR <= CE - 0.05) for a context-3 character MLP LM")
def test_tldr_claim(run_claim, tmp_path):
  result = run_claim("losses/tldr", tmp_path)
  assert result["claim"]["passed"], result["claim"]
