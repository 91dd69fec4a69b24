"""Reproduction: MX direct-cast inference and MXFP6 training on DIGITS-MLP (catalogue [104])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_mx_direct_cast_and_mxfp6_training(run_claim, tmp_path):
  result = run_claim("quant/mx_formats", tmp_path, paper_id=104)
  claim = result["claim"]
  assert not claim["control_passes"], "MXFP4 in every slot must fail the thresholds"
  require_reproduced(claim)
