"""Reproduction of the convex-bound agreement of WSD and cosine schedules (catalogue [432])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  return load_experiment(ROOT / "experiments" / "optim" / f"{name}.py")


@pytest.mark.slow
def test_wsd_convex_bound_reproduces(tmp_path):
  exp = _load("wsd_convex_bound")
  assert exp.PAPER_ID == 432
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == exp.CLAIM
  assert claim["passed"], claim
