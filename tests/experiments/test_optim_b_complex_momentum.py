"""Reproduction: complex momentum converges on the bilinear game where GDA and real momentum diverge ([290])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

EXPERIMENT = pathlib.Path(__file__).parents[2] / "experiments" / "optim" / "complex_momentum.py"


def _load():
  return load_experiment(EXPERIMENT)


@pytest.mark.slow
def test_complex_momentum_converges_on_bilinear_game(tmp_path):
  module = _load()
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["passed"], result["claim"]
  assert result["complex"]["spectral_radius"] < 1 < result["real_0.9"]["spectral_radius"]
