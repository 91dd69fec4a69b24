"""Reproduction: Gravity at its untuned defaults vs RMSProp on a digits MLP (catalogue [157])."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_gravity_defaults_match_rmsprop_accuracy(run_claim, tmp_path):
  # Measured (seeds 0-2): Gravity 0.9689 vs RMSProp 0.9726; the arm that does nothing 0.079.
  result = run_claim("optim/gravity", tmp_path, paper_id=157)
  claim = result["claim"]
  assert not claim["control_passes"], "an arm that does nothing must fail the claim"
  assert result["protocol"]["seeds"] == [0, 1, 2] and len(result["gravity"]["test_accuracy"]) == 3
  assert claim["zeta_bound_excess"] <= 0.0 and claim["zeta_odd_error"] == 0.0
  require_reproduced(claim)
