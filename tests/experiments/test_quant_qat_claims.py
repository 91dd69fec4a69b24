"""Reproduction: self-compressing networks on DIGITS-MLP (catalogue [210]); the char-LM part (issue 15's "QAT at W4
beats PTQ at W4") runs in the recorded reproduction only (70 CPU-s with it; CI budget), not here."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment
from paperlab.runner.protocol import require_reproduced

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "quant" / "qat.py"


@pytest.mark.slow
def test_self_compressing_mlp_keeps_accuracy_at_under_3_bits_and_removes_channels(tmp_path):
  module = load_experiment(EXPERIMENT)
  assert module.PAPER_ID == 210 and module.CLAIM
  config = module.get_config()
  config.char.enabled = False
  result = module.run(config, Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == module.CLAIM and (tmp_path / "metrics.jsonl").exists()
  assert not claim["control_passes"], "the float model passed as the method must fail the claim"
  assert "char_ppl" not in claim
  require_reproduced(claim)
