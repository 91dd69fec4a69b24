"""Reproduction: essential sparsity -- one-shot magnitude pruning without retraining swept over sparsity, its knee,
and 2:4 vs unstructured at 50% (catalogue [64])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "knee part does not reproduce (DIGITS-MLP 128-128, 3 seeds), at the CI scale (7 sparsities) as in the full run "
    "(11, the record): s* = 0.5 (-0.9pt) but only -3.7pt by s = 0.7 (-9.0pt at 0.8 in the full run), the claim needs "
    ">= 5pt within +0.2; 2:4 at 50% 0.9591 vs unstructured 0.9554 holds"))
def test_essential_sparsity_knee_and_two_four_pattern(run_claim, tmp_path):
  result = run_claim("prune/essential_sparsity", tmp_path, paper_id=64)
  claim = result["claim"]
  assert not claim["control_passes"], "random pruning passed the claim"
  assert claim["essential_sparsity"]["magnitude"] > claim["essential_sparsity"]["random"]
  assert abs(claim["nm24_minus_unstructured50"]["magnitude"]) <= 0.02
  require_reproduced(claim)
