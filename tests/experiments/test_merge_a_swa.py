"""Reproduction test for experiments/merge/swa.py (Izmailov et al., arXiv:1803.05407), catalogue [46]."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the CI scale (12 epochs, 3 seeds, lr picked on validation): SWA 96.81% vs its last "
    "iterate 96.89% (-0.07 points, needs +1), bn_update +0.00 points (needs +2); nor in the full run (the record, 40 "
    "epochs): SWA 97.33% = last iterate 97.33%, bn_update -0.07 points. vs step decay and flatness hold at both "
    "scales (CI: 96.81% vs 96.59%, loss rise 8.1e-5 vs 2.2e-4; full: 97.33% vs 97.19%, 3.4e-5 vs 4.9e-5)"))
def test_swa_beats_last_iterate_matches_step_decay_and_needs_bn_update(run_claim, tmp_path):
  result = run_claim("merge/swa", tmp_path, paper_id=46)
  claim = result["claim"]
  assert not claim["control_passes"], "the step-decay run passed as the method must fail"
  assert len(result["swa"]["accuracy"]) == 3
  assert claim["swa"] >= claim["step_decay"] - 0.005  # holds
  assert claim["loss_rise_swa"] < claim["loss_rise_step_decay"]  # holds
  require_reproduced(claim)
