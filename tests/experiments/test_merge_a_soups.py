"""Reproduction test for experiments/merge/soups.py (Wortsman et al., arXiv:2203.05482)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from paperlab.runner import Context

_PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "merge" / "soups.py"
_spec = importlib.util.spec_from_file_location("experiments_merge_soups", _PATH)
soups = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soups)


@pytest.mark.slow
def test_soups_claim(tmp_path):
  result = soups.run(soups.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
