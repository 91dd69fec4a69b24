"""Reproduction: LSUV lets a 20-layer plain ReLU MLP train, a tiny Gaussian init does not (catalogue [219])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_lsuv_trains_a_deep_plain_relu_mlp(run_claim, tmp_path):
  result = run_claim("param/lsuv", tmp_path, paper_id=219)
  claim = result["claim"]
  assert not claim["control_passes"], "the small init in LSUV's place must fail the claim"
  require_reproduced(claim)
