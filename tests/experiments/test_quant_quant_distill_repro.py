"""Reproduction: quantized distillation vs QAT without a teacher on DIGITS (teacher MLP-512x2, student MLP-64x2),
catalogue [122].

CI scale (the CPU budget): the teacher is MLP-128x2 trained 20 epochs (the float model the other QAT reproductions
share) instead of MLP-512x2 trained 10 epochs, the students train 20 epochs instead of 40, with one learning rate
(3e-3, the middle of the recorded run's grid) instead of the 3-point grid. The recorded run
(experiments/records/122.json) uses the experiment's default config."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment
from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "quant" / "quant_distill.py"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "recorded run: 2-bit distilled student 0.9542 vs 2-bit QAT without teacher 0.9628 (claim +1pt); the 4-bit "
    "distilled student is within 1pt of the float distilled one (0.9665 vs 0.9591)"))
def test_quantized_distillation_beats_qat_at_2_bits(tmp_path):
  module = load_experiment(EXPERIMENT)
  assert module.PAPER_ID == 122 and module.CLAIM
  config = module.get_config()
  # the teacher is the float DIGITS-MLP 64-128-128-10 the other QAT reproductions share (memoized, trained once)
  config.teacher_widths, config.teacher_epochs, config.epochs = (128, 128), 20, 20
  config.learning_rates = (3e-3,)
  result = module.run(config, Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == module.CLAIM and (tmp_path / "metrics.jsonl").exists()
  assert not claim["control_passes"], "QAT without a teacher passed as the method must fail the claim"
  assert claim["four_bit_within_1pt"]  # the 4-bit part holds
  require_reproduced(claim)
