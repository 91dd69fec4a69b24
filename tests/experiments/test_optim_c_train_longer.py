"""Reproduction of the "train longer" large-batch fixes (catalogue [260])."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from paperlab.runner import Context

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "optim" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_train_longer_reproduces(tmp_path):
  exp = _load("train_longer")
  assert exp.PAPER_ID == 260
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == exp.CLAIM
  assert claim["passed"], claim
