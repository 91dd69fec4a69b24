"""Calibration metrics and temperature scaling."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.optimize
import scipy.special

import paperlab.losses as pl


def test_ece_on_a_hand_computed_two_bin_example():
  # Bin (0.5, 0.6]: confidences 0.55, 0.6, one correct -> |0.5 - 0.575| = 0.075, weight 2/4.
  # Bin (0.9, 1.0]: confidences 0.95, 1.0, both correct -> |1 - 0.975| = 0.025, weight 2/4.
  probs = np.array([[0.55, 0.45], [0.4, 0.6], [0.95, 0.05], [0.0, 1.0]], np.float32)
  labels = np.array([0, 0, 0, 1], np.int32)
  assert float(pl.expected_calibration_error(probs, labels, num_bins=10)) == pytest.approx(0.05, abs=1e-6)
  assert float(pl.max_calibration_error(probs, labels, num_bins=10)) == pytest.approx(0.075, abs=1e-6)
  # Two equal-mass bins give the same two groups here.
  assert float(pl.expected_calibration_error(probs, labels, num_bins=2, binning="mass")) == pytest.approx(
      0.05, abs=1e-6)


def test_ece_of_a_calibrated_predictor_vanishes():
  rng = np.random.default_rng(0)
  conf = rng.uniform(0.5, 1.0, size=200_000).astype(np.float32)
  correct = rng.random(200_000) < conf
  probs = np.stack([conf, 1 - conf], -1)
  labels = np.where(correct, 0, 1).astype(np.int32)
  assert float(pl.expected_calibration_error(probs, labels)) < 0.005
  assert float(pl.expected_calibration_error(probs, labels, binning="mass")) < 0.005


def _np_ece(conf, correct, num_bins):
  idx = np.clip(np.ceil(conf * num_bins).astype(int) - 1, 0, num_bins - 1)
  total = 0.0
  for b in range(num_bins):
    sel = idx == b
    if sel.any():
      total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
  return total


def test_ece_and_classwise_ece_match_numpy_transcriptions():
  rng = np.random.default_rng(1)
  probs = np.asarray(jax.nn.softmax(3 * rng.normal(size=(500, 4)))).astype(np.float32)
  labels = rng.integers(0, 4, size=500).astype(np.int32)
  conf, correct = probs.max(-1), (probs.argmax(-1) == labels).astype(float)
  np.testing.assert_allclose(pl.expected_calibration_error(probs, labels, num_bins=15),
                             _np_ece(conf, correct, 15), rtol=1e-4)
  per_class = [_np_ece(probs[:, k], (labels == k).astype(float), 15) for k in range(4)]
  np.testing.assert_allclose(pl.classwise_ece(probs, labels), np.mean(per_class), rtol=1e-4)
  assert float(pl.max_calibration_error(probs, labels)) >= float(pl.expected_calibration_error(probs, labels))


def test_where_equals_dropping_examples():
  rng = np.random.default_rng(2)
  probs = np.asarray(jax.nn.softmax(rng.normal(size=(60, 3)))).astype(np.float32)
  labels = rng.integers(0, 3, size=60).astype(np.int32)
  keep = rng.random(60) < 0.6
  for metric in (pl.expected_calibration_error, pl.classwise_ece, pl.brier_score):
    np.testing.assert_allclose(metric(probs, labels, where=keep), metric(probs[keep], labels[keep]), rtol=1e-5)
  np.testing.assert_allclose(pl.expected_calibration_error(probs, labels, binning="mass", where=keep),
                             pl.expected_calibration_error(probs[keep], labels[keep], binning="mass"), rtol=1e-5)


def test_fit_temperature_matches_a_scipy_minimiser_and_recovers_the_true_temperature():
  rng = np.random.default_rng(3)
  z = 2.0 * rng.normal(size=(4000, 5))
  labels = np.array([rng.choice(5, p=p) for p in scipy.special.softmax(z, -1)], np.int32)
  logits = (3.0 * z).astype(np.float32)  # over-confident by a factor 3
  t = float(pl.fit_temperature(logits, labels))

  def nll(t):
    return -np.mean(scipy.special.log_softmax(logits / t, -1)[np.arange(4000), labels])

  ref = scipy.optimize.minimize_scalar(nll, bounds=(0.1, 10.0), method="bounded", options={"xatol": 1e-6}).x
  assert t == pytest.approx(ref, rel=1e-3)
  assert t == pytest.approx(3.0, rel=0.1)


def test_bad_inputs_raise_clear_errors():
  probs, labels = np.full((4, 2), 0.5, np.float32), np.zeros(4, np.int32)
  with pytest.raises(ValueError, match="num_bins"):
    pl.expected_calibration_error(probs, labels, num_bins=0)
  with pytest.raises(ValueError, match="binning"):
    pl.expected_calibration_error(probs, labels, binning="log")
  with pytest.raises(ValueError, match="probs must be"):
    pl.brier_score(probs[0], labels[0])
  with pytest.raises(ValueError, match="labels must lie"):
    pl.expected_calibration_error(probs, labels + 2)
  with pytest.raises(ValueError, match="where must have shape"):
    pl.expected_calibration_error(probs, labels, where=np.ones(3, bool))
