"""Reproduction: FRUGAL vs GaLore on full-rank matrix regression (catalogue [225])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "frugal.py"


def _load():
  return load_experiment(EXPERIMENT)


@pytest.mark.slow
def test_frugal_beats_galore_with_a_fraction_of_adams_state(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["passed"], claim
  assert claim["frugal_final_mse"] <= 0.2 * claim["galore_final_mse"]
  assert claim["state_ratio_vs_adam"] <= 0.3
