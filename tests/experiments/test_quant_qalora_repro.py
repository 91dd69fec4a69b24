"""Reproduction: QA-LoRA vs QLoRA on a W4 g16 DIGITS-MLP fine-tuned to rot90 digits, catalogue [124].

CI scale (the CPU budget): hidden width 128 instead of 256, 20 float epochs instead of 40, 10 fine-tuning epochs instead
of 30 and one learning rate (3e-3, the lower end of the recorded run's grid) instead of the 3-point grid. The recorded
run (experiments/records/124.json) uses the experiment's default config."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment
from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "quant" / "qalora.py"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "QA-LoRA's group-pooled input (64 pixels -> 4 group means in the first layer) cannot learn the rot90 "
    "remapping: recorded run merged rot90 accuracy QA-LoRA 0.9232 vs QLoRA 0.9603 (claim >= QLoRA - 0.5pt); the "
    "exact-merge part holds"))
def test_qalora_merges_exactly_and_matches_qlora(tmp_path):
  module = load_experiment(EXPERIMENT)
  assert module.PAPER_ID == 124 and module.CLAIM
  config = module.get_config()
  config.widths, config.fp_epochs, config.epochs = (128, 128), 20, 10
  config.learning_rates = (3e-3,)
  result = module.run(config, Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == module.CLAIM and (tmp_path / "metrics.jsonl").exists()
  assert not claim["control_passes"], "QLoRA passed as the method must fail the claim"
  # the closed-form part holds: QA-LoRA's merge keeps the codes and the function (float rounding only)
  assert claim["qalora_merged_equals_unmerged_per_seed"] and claim["qalora_codes_unchanged"]
  assert claim["qalora_max_logit_diff"] < 1e-4
  require_reproduced(claim)
