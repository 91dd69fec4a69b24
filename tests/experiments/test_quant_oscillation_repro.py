"""Reproduction: oscillation-free quantization (StatsQ + CGA vs LSQ at W2 on DIGITS-MLP), catalogue [7].

CI scale (the CPU budget): hidden width 128 instead of 256, 20 float epochs instead of 40, 10 QAT epochs instead of 20
and one learning rate (3e-4, the middle of the recorded run's grid) instead of the 3-point grid. The recorded run
(experiments/records/7.json) uses the experiment's default config."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment
from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "quant" / "oscillation.py"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "recorded run (width 256, 3 seeds): oscillating fraction StatsQ+CGA 0.00072 vs LSQ 0.00074 (ratio 0.97, claim "
    "<= 0.5); accuracy 0.9653 vs 0.9616 (the accuracy part holds)"))
def test_statsq_cga_halves_oscillations_at_w2(tmp_path):
  module = load_experiment(EXPERIMENT)
  assert module.PAPER_ID == 7 and module.CLAIM
  config = module.get_config()
  config.widths, config.fp_epochs, config.qat_epochs = (128, 128), 20, 10
  config.learning_rates = (3e-4,)
  result = module.run(config, Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == module.CLAIM and (tmp_path / "metrics.jsonl").exists()
  assert not claim["control_passes"], "LSQ passed as the method must fail the claim"
  assert 0.0 < claim["frozen_fraction_statsq_cga"] < 1.0  # CGA froze some weights, not all
  assert claim["oscillating_fraction"]["lsq"] > 0.0  # the metric sees LSQ's oscillations
  require_reproduced(claim)
