"""Reproduction: EfficientQAT (Block-AP, then E2E-QP, vs RTN at W2 g16 on DIGITS-MLP), catalogue [113].

CI scale (the CPU budget): hidden width 128 instead of 256, 20 float epochs instead of 40, 100 Block-AP steps per layer
instead of 200, 5 E2E-QP epochs instead of 10 and one Block-AP learning-rate pair (1e-3, 1e-2) instead of the 3-point
grid. The recorded run (experiments/records/113.json) uses the experiment's default config."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment
from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced

EXPERIMENT = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "quant" / "efficientqat.py"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "the +10pt over RTN cannot hold on digits: W2 g16 RTN keeps 96.0% test accuracy (float 96.7%); recorded run: "
    "RTN 0.9603, Block-AP 0.9678, Block-AP+E2E-QP 0.9653 (+0.5pt over RTN; Block-AP <= E2E + 0.2pt misses by 0.05pt)"))
def test_block_ap_then_e2e_qp_beats_rtn_at_w2(tmp_path):
  module = load_experiment(EXPERIMENT)
  assert module.PAPER_ID == 113 and module.CLAIM
  config = module.get_config()
  config.widths, config.fp_epochs, config.block_ap_steps, config.e2e_epochs = (128, 128), 20, 100, 5
  config.block_ap_lrs = ((1e-3, 1e-2),)
  result = module.run(config, Context(tmp_path, quiet=True))
  claim = result["claim"]
  assert claim["statement"] == module.CLAIM and (tmp_path / "metrics.jsonl").exists()
  assert not claim["control_passes"], "RTN passed as the method must fail the claim"
  assert claim["e2e_codes_unchanged"], "E2E-QP must leave the integer codes bit-identical"
  acc = claim["accuracy"]
  assert acc["block_ap_e2e"] >= acc["rtn"]  # the part of the ordering that holds
  require_reproduced(claim)
