"""Reproduction: FlexRound vs AdaRound vs RTN on DIGITS-MLP at W3A8 per tensor (catalogue [14])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce (3 seeds, W3A8 per tensor): FlexRound 0.9726 >= AdaRound 0.9711 - 0.5pt holds, but "
    "FlexRound >= RTN + 3pt fails: RTN 0.9696 is already within 0.37pt of full precision 0.9733"))
def test_flexround_beats_rtn_and_matches_adaround(run_claim, tmp_path):
  result = run_claim("quant/flexround", tmp_path, paper_id=14)
  claim = result["claim"]
  assert not claim["control_passes"], "RTN passed as FlexRound must fail the claim"
  acc = claim["digits_accuracy"]
  assert acc["flexround_w3a8"] >= acc["adaround_w3a8"] - 0.005  # the part that holds
  assert acc["flexround_w3a8"] > 0.9 and acc["fp_a8"] > 0.9  # the quantized network still works
  require_reproduced(claim)
