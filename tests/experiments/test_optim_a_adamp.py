"""Reproduction: AdamP limits norm growth of scale-invariant kernels (catalogue [17])."""

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
def test_adamp_limits_norm_growth(tmp_path):
  exp = _load("adamp")
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
