"""Reproduction: weight compander narrows the train-test gap on a small digits subset (catalogue [5])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced,
                   reason="measured (seeds 0-2): train-test gap 0.0578 with the compander vs 0.0548 plain (the gap is "
                          "larger); fraction |w_eff| < 1e-2 0.0646 vs 0.0663 (that part holds)")
def test_compander_narrows_the_gap_and_keeps_weights_away_from_zero(run_claim, tmp_path):
  result = run_claim("param/compander", tmp_path, paper_id=5)
  claim = result["claim"]
  assert not claim["control_passes"], "the plain arm in the compander's place must fail the claim"
  require_reproduced(claim)
