"""Reproduction: GraNet (prune-and-regrow) vs GMP, one-shot pruning and static ERK at 95% sparsity (catalogue [15])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (DIGITS-MLP, 95%, 3 seeds): at the CI scale (20 epochs, mask updates over 15) GraNet 0.9318 "
    "vs GMP 0.9306 and vs one-shot 0.5192 hold, but sparse-to-sparse 0.9418 vs static ERK 0.9318 is +0.99pt (claim "
    "+1pt); the full run (paperlab reproduce 15, the record; 40 epochs) does not reproduce it either: GraNet 0.9591 "
    "vs GMP 0.9616 (-0.25pt, margin -0.2pt), while one-shot 0.8711 and s2s 0.9628 vs static ERK 0.9517 hold"))
def test_granet_beats_static_and_one_shot_pruning(run_claim, tmp_path):
  result = run_claim("prune/granet", tmp_path, paper_id=15)
  claim = result["claim"]
  assert not claim["control_passes"], "one-shot / static ERK passed as the method must fail the claim"
  assert all(abs(s - 0.95) < 1e-6 for s in claim["sparsity"].values())  # every arm at exactly 95%
  assert claim["granet_minus_oneshot"] >= 0.01
  require_reproduced(claim)
