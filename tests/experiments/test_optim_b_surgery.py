"""Reproduction: Bloop (gradient surgery with an EMA) solves the bilevel least-squares problem ([452])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "surgery.py"


def _load():
  return load_experiment(EXPERIMENT)


@pytest.mark.slow
def test_bloop_reaches_the_bilevel_solution(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
