"""Reproduction: the unified view of PEFT (catalogue [591]) -- the prefix-tuning identity, parallel vs sequential
adapters at equal parameter count -- and issue 17's criterion, LoRA vs full fine-tuning, on a label-permuted digits
task."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import require_reproduced


@pytest.mark.slow
def test_parallel_adapter_matches_sequential_and_lora_matches_full_fine_tuning(run_claim, tmp_path):
  result = run_claim("peft/unified_view", tmp_path, paper_id=591)
  claim, issue_17 = result["claim"], result["issue_17"]
  assert not claim["control_passes"], "the untouched model passed as the parallel adapter"
  assert not issue_17["control_passes"], "the untouched model passed as LoRA"
  assert claim["identity_max_abs_error"] <= 1e-6  # float64 draws; float32 is reported beside it
  assert claim["trainable_params"]["parallel"] == claim["trainable_params"]["sequential"] > 0
  assert issue_17["trainable_fraction"]["lora"] < 0.1 and issue_17["trainable_fraction"]["full"] == 1.0
  assert claim["test_accuracy"]["full"] >= 0.9  # the shift is learnable ...
  assert claim["test_accuracy"]["none"] <= 0.2  # ... and needs adaptation: the pretrained model fails it
  require_reproduced(issue_17)
  require_reproduced(claim)
