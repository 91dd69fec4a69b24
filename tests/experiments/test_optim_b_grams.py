"""Reproduction: Grams vs Adam on a digits MLP (catalogue [254])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "grams.py"


def _load():
  return load_experiment(EXPERIMENT)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "does not reproduce at CI scale: mean final train loss Grams 0.102 vs Adam 0.035 (ratio 2.92; batch 256: "
    "0.022 vs 0.0084), sign disagreement 0.48 so the flip is active"))
def test_grams_final_loss_no_worse_than_adam(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["grams_sign_disagreement"] >= 0.1
  assert result["claim"]["passed"]
