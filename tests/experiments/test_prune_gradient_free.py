"""Reproduction: gradient-free structured pruning with unlabeled data, R2 x D2 selection + KCM fold vs
magnitude-norm neuron pruning at 50% of the hidden neurons, no retraining (catalogue [83])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_select_and_fold_beats_magnitude_norm_neuron_pruning(run_claim, tmp_path):
  result = run_claim("prune/gradient_free", tmp_path, paper_id=83)
  claim = result["claim"]
  assert not claim["control_passes"], "magnitude-norm pruning passed as the method must fail the claim"
  assert claim["flop_reduction"] >= 0.4
  assert claim["test_accuracy"]["select_fold"] < claim["dense_test_accuracy"]  # pruning without retraining costs
  require_reproduced(claim)
