"""Reproductions on the shared DIGITS-MLP ladder (trained once per process): loss-to-loss prediction [136],
over-training and loss -> error [244], the two-step task ladder [156]."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
def test_overtrained_law_extrapolates_in_m_and_error_follows_loss(run_claim, tmp_path):
  # Measured: M=160 rel err 0.80% (per seed 1.75/0.39/0.28%), loss->error R^2 0.947; control 7.1%, R^2 0.
  result = run_claim("scaling/overtraining", tmp_path, paper_id=244)
  claim = result["claim"]
  assert not claim["control_passes"], "a law without M (and an error model without the loss) must fail the claim"
  assert len(claim["r2_per_seed"]) == 3
  require_reproduced(claim)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce on DIGITS-MLP widths 8..128 (shift: 3x3 blur + noise 0.25): the shifted test loss does not "
    "fall with width beyond h=32 (seed means 1.63/1.35/1.23/1.37/1.57 at full data); loss-to-loss predictions of "
    "the h=128 shifted loss miss by 73%/fit impossible/43% (3 seeds), worse than the nearest rung's 21%"))
def test_loss_to_loss_predicts_the_largest_models_shifted_loss(run_claim, tmp_path):
  result = run_claim("scaling/loss_to_loss", tmp_path, paper_id=136)
  claim = result["claim"]
  assert not claim["control_passes"], "the nearest rung's shifted loss must not meet the claim"
  assert len(claim["rel_err_per_seed"]) == 3
  require_reproduced(claim)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce on the DIGITS-MLP ladder (h 8..64 x 3 data sizes -> h=128 at full data): two-step error "
    "1.15 points (within 3) but the direct power law on accuracy is closer (0.86 points), and the direct arm alone "
    "meets the claim (vacuous)"))
def test_two_step_ladder_predicts_the_largest_models_accuracy(run_claim, tmp_path):
  result = run_claim("scaling/task_ladder", tmp_path, paper_id=156)
  claim = result["claim"]
  assert claim["abs_err"] < 0.1  # the two-step prediction itself is sane
  assert len(claim["abs_err_per_seed"]) == 3
  require_reproduced(claim)
