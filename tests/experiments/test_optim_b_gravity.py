"""Reproduction: Gravity at its untuned defaults vs RMSProp on a digits MLP (catalogue [157])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "gravity.py"


def _load():
  return load_experiment(EXPERIMENT)


@pytest.mark.slow
def test_gravity_defaults_match_rmsprop_accuracy(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
