"""Reproductions of the per-example loss papers (paperlab.losses part A), at CI scale."""

from __future__ import annotations

import pathlib

import pytest

from paperlab.runner import Context
from paperlab.runner.config import load_experiment

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "losses"


def _load(name: str):
  return load_experiment(EXPERIMENTS / f"{name}.py")


def _run(name: str, tmp_path) -> dict:
  module = _load(name)
  result = module.run(module.get_config(), Context(tmp_path, quiet=True))
  assert result["claim"]["statement"] == module.CLAIM
  assert isinstance(module.PAPER_ID, int)
  return result


@pytest.mark.slow
def test_nce_rce_beats_cross_entropy_under_40_percent_symmetric_noise(tmp_path):
  assert _run("robust_noise", tmp_path)["claim"]["passed"]


@pytest.mark.slow
def test_comp_sum_gce_and_mae_beat_cross_entropy_under_40_percent_symmetric_noise(tmp_path):
  assert _run("comp_sum_noise", tmp_path)["claim"]["passed"]


@pytest.mark.slow
def test_encouraging_loss_enlarges_test_logit_margins(tmp_path):
  assert _run("encouraging", tmp_path)["claim"]["passed"]


@pytest.mark.slow
def test_sigmoid_focal_raises_rare_class_recall_over_bce(tmp_path):
  assert _run("focal_imbalance", tmp_path)["claim"]["passed"]


@pytest.mark.slow
def test_asymmetric_loss_raises_rare_class_recall_over_bce(tmp_path):
  assert _run("asymmetric", tmp_path)["claim"]["passed"]


@pytest.mark.slow
def test_siglip_matches_softmax_clip_at_small_batch(tmp_path):
  assert _run("siglip", tmp_path)["claim"]["passed"]


@pytest.mark.slow
def test_hl_gauss_is_robust_to_cauchy_target_noise(tmp_path):
  assert _run("hl_gauss", tmp_path)["claim"]["passed"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "does not reproduce at CI scale: on digits (MLP 64-128-10, Adam 1e-3, batch 64, 1000 steps, 3 seeds) "
    "squentropy's test ECE is 0.088 vs 0.018 for CE (ratio 4.9, claim <= 0.8): it is under-confident (mean "
    "confidence 0.89 at accuracy 0.979; CE 0.97 at 0.975). 5 seeds (0.086 vs 0.017), 4x longer training and "
    "SGD(0.05, momentum 0.9) (0.032 vs 0.015) go the same way."))
def test_squentropy_is_better_calibrated_than_cross_entropy(tmp_path):
  assert _run("squentropy", tmp_path)["claim"]["passed"]
