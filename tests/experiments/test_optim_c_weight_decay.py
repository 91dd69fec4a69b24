"""Reproduction of the weight-decay effective-LR dynamics (catalogue [144])."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _load(name):
  return load_experiment(ROOT / "experiments" / "optim" / f"{name}.py")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "does not reproduce at CI scale: weight decay keeps the effective LR stationary (variation 0.17 vs 0.60 "
    "without) and costs loss before the LR decay (0.257 vs 0.082), but multi-epoch digits (20% label noise) is "
    "not the ~1-epoch LLM regime: after the decay the no-decay run still ends lower (0.011 vs 0.061, claim: "
    "within 0.01); on clean test loss weight decay is better throughout (0.81 vs 1.23)."))
def test_weight_decay_reproduces(tmp_path):
  exp = _load("weight_decay")
  assert exp.PAPER_ID == 144
  result = exp.run(exp.get_config(), Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == exp.CLAIM
  assert claim["checks"]["eff_lr_stationary_with_wd"] and claim["checks"]["eff_lr_drifts_without_wd"]
  assert claim["passed"], claim
