"""Reproduction: Gravity at its untuned defaults vs RMSProp on a digits MLP (catalogue [157])."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from paperlab.runner import Context

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "gravity.py"


def _load():
  spec = importlib.util.spec_from_file_location("experiments_optim_gravity", EXPERIMENT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_gravity_defaults_match_rmsprop_accuracy(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
