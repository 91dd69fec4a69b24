"""Reproduction of the Power scheduler vs WSD budget transfer (catalogue [423])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  return load_experiment(ROOT / "experiments" / "optim" / f"{name}.py")


@pytest.mark.slow
def test_power_scheduler_reproduces(tmp_path):
  exp = _load("power_scheduler")
  assert exp.PAPER_ID == 423
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == exp.CLAIM
  assert claim["passed"], claim
