"""Reproduction: muScaling -- the law fitted on narrow muP MLPs trained with the proxy's learning rate predicts the
wide one's loss, better than SP's (catalogue [287])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_mup_ladder_predicts_the_wide_loss_better_than_sp(run_claim, tmp_path):
  result = run_claim("scaling/mu_scaling", tmp_path, paper_id=287)
  claim = result["claim"]
  assert not claim["protocol_control_passes"], "SP's prediction errors in muP's place must fail the claim"
  assert not claim["no_extrapolation_control_passes"], "the widest rung's own loss must miss the target by > 5%"
  assert claim["chosen_log2_lr"]["mup"] == claim["chosen_log2_lr"]["sp"]  # the same model at the proxy width
  assert len(claim["target_loss_mup_per_seed"]) == 3
  require_reproduced(claim)
