"""Reproductions of the per-example loss papers (paperlab.losses part A), at CI scale."""

from __future__ import annotations

import pytest

from paperlab.runner.protocol import ClaimNotReproduced, require_reproduced


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce with CE's learning rate tuned on (noisy) validation like NCE+RCE's (grid 1e-4..3e-3, "
    "3 seeds): clean test accuracy 0.917 vs CE 0.887 (lr 1e-4, early-stopping-like), +3.0 points < 5; CE at lr "
    "1e-3, where it memorises, gets 0.750"))
def test_nce_rce_beats_cross_entropy_under_40_percent_symmetric_noise(run_claim, tmp_path):
  result = run_claim("losses/robust_noise", tmp_path, paper_id=198)
  claim = result["claim"]
  assert result["protocol"]["seeds"] == [0, 1, 2]
  assert not claim["control_passes"], "CE passed as the method must fail the claim"
  assert claim["gain_points"] > 0
  require_reproduced(claim)


@pytest.mark.slow
def test_comp_sum_gce_and_mae_beat_cross_entropy_under_40_percent_symmetric_noise(run_claim, tmp_path):
  # Measured: GCE 0.927, MAE 0.922, CE 0.887 (+4.0 and +3.6 points), each lr chosen on noisy validation.
  result = run_claim("losses/comp_sum_noise", tmp_path, paper_id=167)
  claim = result["claim"]
  assert result["protocol"]["seeds"] == [0, 1, 2]
  assert not claim["control_passes"], "CE passed as the GCE arm must fail the claim"
  require_reproduced(claim)


@pytest.mark.slow
def test_focal_loss_concentrates_negative_loss_on_hard_negatives_without_losing_ap(run_claim, tmp_path):
  # Measured: hard-negative share FL 0.900 vs BCE 0.732 (gain 0.169 >= 0.15); test AP 0.160 vs 0.154.
  result = run_claim("losses/focal_imbalance", tmp_path, paper_id=39)
  claim = result["claim"]
  assert result["protocol"]["seeds"] == [0, 1, 2]
  assert not claim["control_passes"], "BCE passed as the method must fail the claim"
  require_reproduced(claim)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=ClaimNotReproduced, reason=(
    "does not reproduce at the catalogue's setting (make_multilabel_classification n=4000, 30 labels, linear head, "
    "lr chosen on val mAP, 3 seeds): at the CI scale (200 Adam steps, grid 3e-2/3e-1) probability gap ASL 0.208 vs "
    "BCE 0.240 (-0.031, claim +0.05), macro mAP 0.3888 vs 0.3883; the full run (paperlab reproduce 47, the record, "
    "500 steps): ASL 0.205 vs BCE 0.237 (-0.032), mAP 0.3890 vs 0.3888"))
def test_asymmetric_loss_widens_the_probability_gap_without_losing_map(run_claim, tmp_path):
  result = run_claim("losses/asymmetric", tmp_path, paper_id=47)
  claim = result["claim"]
  assert result["protocol"]["seeds"] == [0, 1, 2]
  assert not claim["control_passes"], "BCE passed as the method must fail the claim"
  assert claim["map_difference"] >= -0.005  # the mAP half holds
  require_reproduced(claim)


@pytest.mark.slow
def test_siglip_matches_softmax_clip_at_small_batch(run_claim, tmp_path):
  # measured (seeds 0-2, 500 steps): top-1 SigLIP 0.422 vs CLIP 0.428 (-0.006), bias -9.8; untrained 0.001
  result = run_claim("losses/siglip", tmp_path, paper_id=221)
  claim = result["claim"]
  assert not claim["control_passes"], "the towers at initialisation passed as SigLIP must fail the claim"
  assert result["protocol"]["seeds"] == [0, 1, 2]
  require_reproduced(claim)


@pytest.mark.slow
def test_hl_gauss_is_robust_to_cauchy_target_noise(run_claim, tmp_path):
  # measured (seeds 0-2): clean-test MSE HL-Gauss 0.044 vs raw MSE 0.776 (0.057x) and clamped MSE 0.089 (0.50x)
  result = run_claim("losses/hl_gauss", tmp_path, paper_id=544)
  claim = result["claim"]
  assert not claim["control_passes"], "MSE on raw targets passed as the method must fail the claim"
  assert result["protocol"]["seeds"] == [0, 1, 2]
  require_reproduced(claim)
