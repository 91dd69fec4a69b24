"""Reproduction: AdaRound vs RTN on DIGITS-MLP at W3/W4 per channel (catalogue [110])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_adaround_loses_less_than_rtn(run_claim, tmp_path):
  result = run_claim("quant/adaround", tmp_path, paper_id=110)
  claim = result["claim"]
  assert not claim["control_passes"], "RTN passed as AdaRound must fail the claim"
  acc = claim["digits_accuracy"]
  assert acc["rtn_w3"] < acc["fp"]  # W3 RTN loses accuracy, so the 0.4x ratio is not vacuous
  assert acc["adaround_w3"] > acc["rtn_w3"]
  require_reproduced(claim)
