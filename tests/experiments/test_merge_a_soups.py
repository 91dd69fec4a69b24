"""Reproduction test for experiments/merge/soups.py (Wortsman et al., arXiv:2203.05482)."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

_PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "merge" / "soups.py"
soups = load_experiment(_PATH)


@pytest.mark.slow
def test_soups_claim(tmp_path):
  result = soups.run(soups.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
