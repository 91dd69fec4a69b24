"""Reproduction: robust weight perturbation vs AWP vs plain adversarial training (catalogue [128])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced

from paperlab.runner.config import load_experiment

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "rwp.py"


def test_rwp_experiment_is_catalogue_entry_128():
  assert load_experiment(EXPERIMENT).PAPER_ID == 128


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the CI scale (CI_CONFIG: 15 epochs, widths 64-64, PGD-5, seeds 0-2): robust gap AT 0.0468, "
    "AWP 0.0539, RWP 0.0538; clean test acc RWP 0.9585 >= AWP 0.9600 - 0.01 holds. Nor at the full run (paperlab "
    "reproduce 128, the record: digits MLP, PGD-10 AT, 80 epochs, seeds 0-2): robust gap AT "
    "0.1387, AWP 0.1271, RWP 0.1219, so RWP shrinks it by 0.0168 < 0.02 (per seed 0.010, 0.015, 0.025); clean test "
    "acc RWP 0.9852 >= AWP 0.9830 - 0.01 holds. Only 4.4% of the adversarial training examples fail the loss "
    "stationary condition (loss >= c_min=1.7), so RWP's filter leaves almost every example in."))
def test_rwp_shrinks_the_robust_generalization_gap_without_losing_clean_accuracy(run_claim, tmp_path):
  result = run_claim("optim/rwp", tmp_path, paper_id=128)
  claim = result["claim"]
  assert not claim["control_passes"], "AT passed as the method must fail the claim"
  assert result["protocol"]["seeds"] == [0, 1, 2] and len(result["arms"]["rwp"]["robust_gap"]) == 3
  assert claim["clean_test_acc_rwp"] >= claim["clean_test_acc_awp"] - 0.01  # this half holds
  require_reproduced(claim)  # the gap shrink (>= 0.02) is what fails
