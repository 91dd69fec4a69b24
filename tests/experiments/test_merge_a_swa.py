"""Reproduction test for experiments/merge/swa.py (Izmailov et al., arXiv:1803.05407)."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from paperlab.runner import Context

_PATH = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "merge" / "swa.py"
_spec = importlib.util.spec_from_file_location("experiments_merge_swa", _PATH)
swa = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(swa)


@pytest.mark.slow
def test_swa_claim(tmp_path):
  result = swa.run(swa.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
