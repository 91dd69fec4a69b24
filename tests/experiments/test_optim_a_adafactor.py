"""Reproduction: Adafactor's factored state and its training loss vs Adam / unfactored (catalogue [267])."""

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
def test_adafactor_memory_and_loss(tmp_path):
  exp = _load("adafactor")
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
