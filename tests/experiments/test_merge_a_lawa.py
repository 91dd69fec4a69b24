"""Reproduction test for experiments/merge/lawa.py (Kaddour, arXiv:2209.14981)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from paperlab.runner import Context

_PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "merge" / "lawa.py"
_spec = importlib.util.spec_from_file_location("experiments_merge_lawa", _PATH)
lawa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lawa)


@pytest.mark.slow
def test_lawa_claim(tmp_path):
  result = lawa.run(lawa.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
