"""Reproductions of the analysis family: loss landscapes [232] and intrinsic dimension [360]."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_small_batch_minimum_is_flatter_under_filter_normalization(run_claim, tmp_path):
  result = run_claim("analysis/loss_landscape", tmp_path, paper_id=232)
  claim = result["claim"]
  assert not claim["control_passes"], "the large batch passed as the method must fail the claim"
  assert claim["trained_to_99"], claim["min_train_accuracy"]
  assert claim["rescaling_invariant"], (claim["rescaling_invariance_max_diff_filter"],
                                        claim["rescaling_invariance_min_diff_unnormalized"])
  require_reproduced(claim)


@pytest.mark.slow
def test_digits_mlp_intrinsic_dimension_is_small_and_width_independent(run_claim, tmp_path):
  result = run_claim("analysis/intrinsic_dimension", tmp_path, paper_id=360)
  claim = result["claim"]
  assert not claim["control_passes"], "untrained subspace runs must fail the claim"
  require_reproduced(claim)
