"""Reproduction: ConFIG vs summed-loss Adam on a toy PINN (catalogue [206])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "config_pinn.py"


def _load():
  return load_experiment(EXPERIMENT)


@pytest.mark.slow
def test_config_lowers_pinn_error_against_summed_loss(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
