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
@pytest.mark.xfail(strict=True, reason="does not reproduce at CI scale: greedy 4-gram repetition rate 0.730 under "
                   "TLDR vs 0.645 under CE (claim: TLDR <= CE - 0.05) for a context-3 character MLP LM")
def test_tldr_claim(run_claim, tmp_path):
  result = run_claim("losses/tldr", tmp_path)
  assert result["claim"]["passed"], result["claim"]
