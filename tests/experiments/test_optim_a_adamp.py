"""Reproduction: AdamP limits norm growth of scale-invariant kernels (catalogue [17])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  return load_experiment(ROOT / "experiments" / "optim" / f"{name}.py")


@pytest.mark.slow
def test_adamp_limits_norm_growth(tmp_path):
  exp = _load("adamp")
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
