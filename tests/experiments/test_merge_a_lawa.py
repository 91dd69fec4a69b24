"""Reproduction test for experiments/merge/lawa.py (Kaddour, arXiv:2209.14981)."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

_PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "merge" / "lawa.py"
lawa = load_experiment(_PATH)


@pytest.mark.slow
def test_lawa_claim(tmp_path):
  result = lawa.run(lawa.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
