"""Reproduction: ART with the HyperSparse penalty vs GMP and L1-ART at 98% sparsity on digits (catalogue [96])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at CI scale (DIGITS-MLP 64-64-64-10, 98% sparsity, 15 + 20 + 15 epochs, 3 seeds): "
    "ART+HyperSparse 0.9207 vs GMP 0.9170 (+0.37pt, claim +1pt); vs L1-ART 0.9157 (+0.50pt) holds"))
def test_hypersparse_art_beats_gmp_and_l1_art(run_claim, tmp_path):
  result = run_claim("prune/hypersparse", tmp_path, paper_id=96)
  claim = result["claim"]
  assert not claim["control_passes"], "GMP passed as ART+HyperSparse: the claim cannot fail"
  assert all(abs(s - 0.98) < 1e-3 for s in claim["sparsity"].values())  # every arm at 98%
  assert all(1 <= e <= 20 for e in claim["art_epochs"].values())
  require_reproduced(claim)
