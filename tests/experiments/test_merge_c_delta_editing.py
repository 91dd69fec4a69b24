"""Reproduction test for "A Unified View of Delta Parameter Editing" [272] on ROT-DIGITS."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.fixture(scope="module")
def delta_editing(run_claim, tmp_path_factory):
  return run_claim("merge/delta_editing", tmp_path_factory.mktemp("delta_editing"), paper_id=272)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason="does not reproduce at CI scale (ROT-DIGITS, seeds 0-2 x 5 tasks): ExPO alpha "
                   "0.3 lowers val acc 96.83 -> 96.41 (every seed; 0.1/0.2: 97.10/97.00), and the 6/6 sign agreement "
                   "is matched by a constant 'loss rises' predictor (6/6), so the sign test is vacuous")
def test_riemann_sign_matches_measured_loss_change_and_small_expo_helps(delta_editing):
  require_reproduced(delta_editing["claim"])


@pytest.mark.slow
def test_riemann_estimate_tracks_the_measured_loss_change(delta_editing):
  c = delta_editing["claim"]
  assert c["sign_agreements"] >= c["min_agree"]
  for name, measured in c["measured_dL_test"].items():
    if abs(measured) > 0.05:  # the large changes: within 10% (ExPO's ~0.005 is noise-level)
      assert abs(c["predicted_dL_val"][name] - measured) <= 0.1 * abs(measured), name


@pytest.mark.slow
def test_delta_editing_control_constant_predictor_is_reported(delta_editing):
  # the control is what makes the sign part vacuous here: a constant "+" predictor also agrees on 6/6
  c = delta_editing["claim"]
  assert c["control_passes"] and c["vacuous"] and not c["passed"]
