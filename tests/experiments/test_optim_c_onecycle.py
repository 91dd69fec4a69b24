"""Reproduction of 1cycle + the LR range test (catalogue [204])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  return load_experiment(ROOT / "experiments" / "optim" / f"{name}.py")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "does not reproduce at CI scale: 1cycle for 10 epochs reaches 0.9711 test accuracy vs 0.9763 for the best "
    "constant LR (0.1) for 40 epochs, a gap of 0.0052 > 0.005 (3 seeds; 0.0058 over 10 seeds); the range test's "
    "lr_max = 0.22 is within 3x of 3 x 0.1 as claimed."))
def test_one_cycle_reproduces(tmp_path):
  exp = _load("onecycle")
  assert exp.PAPER_ID == 204
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert 1 / 3 <= claim["lr_max_over_3x_best_constant"] <= 3   # the range-test half of the claim holds
  assert claim["passed"], claim
