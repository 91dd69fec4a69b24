"""Reproduction: DFloat11 compresses a trained bf16 model losslessly to ~70% (catalogue [112])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_dfloat11_is_lossless_at_about_70_percent(run_claim, tmp_path):
  result = run_claim("quant/dfloat11", tmp_path, paper_id=112)
  claim = result["claim"]
  assert not claim["control_passes"], "the raw bf16 model passed as the method must fail the claim"
  assert claim["roundtrip_exact"] == 1.0 and claim["max_logit_diff"] == 0.0
  require_reproduced(claim)
