"""Reproduction: TopKLD- vs plain-KL-distilled W3 QAT of CHAR-LM (catalogue [598]), at the CI scale of ``CI_CONFIG``
(d 64 only, the learning rate 3e-4 that both arms choose at full scale, the W3 row of the table only)."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_topkld_distilled_w3_qat_is_within_one_percent_of_kl_distilled(run_claim, tmp_path):
  result = run_claim("quant/topkld", tmp_path, paper_id=598)
  claim = result["claim"]
  assert not claim["control_passes"], "W3 round-to-nearest passed as the method must fail the claim"
  ppl = claim["ppl"]["d64"]
  assert ppl["kl"] < ppl["rtn"] and ppl["topkld"] < ppl["rtn"]  # both distilled QAT arms recover from RTN
  table = result["table"]["d64"]
  assert table["fp"]["ppl"] < table["rtn_w3"]["ppl"] and table["rtn_w3"]["bits"] < table["fp"]["bits"]
  require_reproduced(claim)
