"""Reproduction: Softmax Collapse in float32 modular addition, StableMax and the orthogonal gradient (catalogue [105])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced,
                   reason="at the CI scale (p=31, 384 training pairs, 2000 steps) the Softmax-Collapse part holds "
                          "(softmax SC fraction > 0.5, StableMax 0) but no arm generalizes: StableMax and "
                          "orthograd test accuracy are not 0.2 above softmax's (see experiments/records/105.json)")
def test_softmax_collapses_stablemax_does_not_and_one_of_them_groks(run_claim, tmp_path):
  result = run_claim("analysis/grokking_stability", tmp_path, paper_id=105)
  claim = result["claim"]
  assert not claim["control_passes"], "the softmax run in place of StableMax and orthograd must fail the claim"
  assert claim["sc_part_holds"], claim["sc_fraction"]
  require_reproduced(claim)
