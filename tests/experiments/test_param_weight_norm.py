"""Reproduction: weight normalization with data-dependent init trains a 6-layer MLP faster (catalogue [138])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_weight_norm_trains_faster_after_its_init_pass(run_claim, tmp_path):
  result = run_claim("param/weight_norm", tmp_path, paper_id=138)
  claim = result["claim"]
  assert not claim["control_passes"], "the plain parametrization in weight norm's place must fail the claim"
  assert claim["init_pass_every_seed"]
  require_reproduced(claim)
