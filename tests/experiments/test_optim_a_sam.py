"""Reproduction: SAM finds flatter minima than SGD-momentum under label noise (catalogue [261])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  return load_experiment(ROOT / "experiments" / "optim" / f"{name}.py")


@pytest.mark.slow
def test_sam_is_flatter_and_no_less_accurate_under_label_noise(tmp_path):
  exp = _load("sam")
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
