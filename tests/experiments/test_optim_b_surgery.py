"""Reproduction: Bloop (gradient surgery with an EMA) solves the bilevel least-squares problem ([452])."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from paperlab.runner import Context

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "surgery.py"


def _load():
  spec = importlib.util.spec_from_file_location("experiments_optim_surgery", EXPERIMENT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_bloop_reaches_the_bilevel_solution(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
