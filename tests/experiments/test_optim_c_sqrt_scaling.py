"""Reproduction of the square-root scaling rule for Adam (catalogue [473])."""

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
def test_sqrt_scaling_rule_reproduces(tmp_path):
  exp = _load("sqrt_scaling")
  assert exp.PAPER_ID == 473
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == exp.CLAIM
  assert claim["passed"], claim
