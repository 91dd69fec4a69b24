"""Reproduction: SAM finds flatter minima than SGD-momentum under label noise (catalogue [261])."""

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
def test_sam_is_flatter_and_no_less_accurate_under_label_noise(tmp_path):
  exp = _load("sam")
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
