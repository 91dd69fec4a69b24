"""Reproduction test for experiments/merge/swa.py (Izmailov et al., arXiv:1803.05407)."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

_PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "merge" / "swa.py"
swa = load_experiment(_PATH)


@pytest.mark.slow
def test_swa_claim(tmp_path):
  result = swa.run(swa.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
