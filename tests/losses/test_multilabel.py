"""Closed forms and errors of paperlab.losses.multilabel (asymmetric loss, sparsemax, self-adjusting dice)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paperlab.losses as pl

RNG = np.random.default_rng(2)
LOGITS = (2.0 * RNG.normal(size=(8, 6))).astype(np.float32)
MULTI = (RNG.random((8, 6)) < 0.3).astype(np.float32)
LABELS = RNG.integers(0, 6, size=8).astype(np.int32)


def test_asymmetric_with_zero_gammas_and_no_clip_is_bce():
  np.testing.assert_allclose(pl.asymmetric_loss(LOGITS, MULTI, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
                             optax.sigmoid_binary_cross_entropy(LOGITS, MULTI), rtol=1e-6, atol=1e-7)


def test_asymmetric_with_equal_gammas_and_no_clip_is_sigmoid_focal():
  np.testing.assert_allclose(pl.asymmetric_loss(LOGITS, MULTI, gamma_pos=2.0, gamma_neg=2.0, clip=0.0),
                             optax.sigmoid_focal_loss(LOGITS, MULTI, alpha=None, gamma=2.0), rtol=1e-5, atol=1e-7)


def test_asymmetric_clip_discards_easy_negatives():
  logits = np.array([[-4.0, -2.0, 0.0]], np.float32)  # p = 0.018, 0.119, 0.5
  loss = np.asarray(pl.asymmetric_loss(logits, np.zeros_like(logits), gamma_neg=4.0, clip=0.05))
  assert loss[0, 0] == 0.0 and loss[0, 1] > 0 and loss[0, 2] > loss[0, 1]
  p = jax.nn.sigmoid(logits[0, 1:])
  p_m = p - 0.05
  np.testing.assert_allclose(loss[0, 1:], -(p_m ** 4) * np.log(1 - p_m), rtol=1e-5)


def test_asymmetric_stop_gradient_weight_keeps_the_value_and_changes_the_gradient():
  a = lambda z, sg: pl.asymmetric_loss(z, MULTI, gamma_pos=1.0, stop_gradient_weight=sg).sum()
  np.testing.assert_allclose(a(LOGITS, True), a(LOGITS, False), rtol=1e-6)
  assert not np.allclose(jax.grad(a)(LOGITS, True), jax.grad(a)(LOGITS, False))


def test_asymmetric_gradients_are_finite_at_extreme_logits():
  logits = np.array([[1e4, -1e4, 0.0]], np.float32)
  for labels in (np.array([[1.0, 0.0, 1.0]], np.float32), np.array([[0.0, 1.0, 0.0]], np.float32)):
    for clip in (0.0, 0.05):
      grad = jax.grad(lambda z: pl.asymmetric_loss(z, labels, gamma_pos=0.5, gamma_neg=4.0, clip=clip).sum())(logits)
      assert np.all(np.isfinite(grad))


def _np_sparsemax(z):
  zs = np.sort(z)[::-1]
  k = np.arange(1, len(z) + 1)
  support = 1 + k * zs > np.cumsum(zs)
  kz = k[support].max()
  tau = (zs[:kz].sum() - 1) / kz
  return np.maximum(z - tau, 0), tau


def test_sparsemax_is_the_euclidean_projection_onto_the_simplex():
  p = np.asarray(pl.sparsemax(LOGITS))
  for row, z in zip(p, LOGITS):
    np.testing.assert_allclose(row, _np_sparsemax(z.astype(np.float64))[0], atol=1e-6)
  np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(pl.sparsemax(LOGITS.T, axis=0), p.T, atol=1e-7)


def test_sparsemax_loss_matches_the_paper_formula_for_multilabel_targets():
  q = MULTI.copy()
  q[:, 0] = 1.0
  q = q / q.sum(-1, keepdims=True)
  ours = np.asarray(pl.sparsemax_loss(LOGITS, q))
  for i, z in enumerate(LOGITS.astype(np.float64)):
    p, tau = _np_sparsemax(z)
    s = p > 0
    expected = -q[i] @ z + 0.5 * np.sum(z[s] ** 2 - tau ** 2) + 0.5 * q[i] @ q[i]
    np.testing.assert_allclose(ours[i], expected, rtol=1e-4, atol=1e-5)


def test_sparsemax_loss_gradient_and_zero_and_one_hot_parity_with_optax():
  q = jax.nn.one_hot(LABELS, 6)
  np.testing.assert_allclose(pl.sparsemax_loss(LOGITS, q), optax.losses.multiclass_sparsemax_loss(LOGITS, LABELS),
                             rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda z: pl.sparsemax_loss(z, q).sum())(LOGITS)
  np.testing.assert_allclose(grad, pl.sparsemax(LOGITS) - q, atol=1e-6)
  z = np.array([[3.0, 0.0, -1.0]], np.float32)  # sparsemax(z) = e_0
  assert float(pl.sparsemax_loss(z, np.array([[1.0, 0.0, 0.0]], np.float32))[0]) == pytest.approx(0.0, abs=1e-7)


def test_self_adjusting_dice_closed_forms():
  p = np.asarray(jax.nn.sigmoid(LOGITS))
  smooth = 1e-4
  np.testing.assert_allclose(pl.self_adjusting_dice_loss(LOGITS, MULTI, alpha=0.0, smooth=smooth),
                             1 - (2 * p * MULTI + smooth) / (p + MULTI + smooth), rtol=1e-5, atol=1e-6)
  zeros = np.zeros_like(MULTI)
  np.testing.assert_allclose(pl.self_adjusting_dice_loss(LOGITS, zeros, smooth=smooth), p / (p + smooth), rtol=1e-5)
  w = (1 - p) ** 0.5 * p
  np.testing.assert_allclose(pl.self_adjusting_dice_loss(LOGITS, MULTI, alpha=0.5, smooth=smooth),
                             1 - (2 * w * MULTI + smooth) / (w + MULTI + smooth), rtol=1e-5, atol=1e-6)
  soft = np.asarray(jax.nn.softmax(LOGITS))
  np.testing.assert_allclose(pl.self_adjusting_dice_loss(LOGITS, MULTI, activation="softmax", smooth=smooth),
                             1 - (2 * soft * MULTI + smooth) / (soft + MULTI + smooth), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="gamma_neg"):
    pl.asymmetric_loss(LOGITS, MULTI, gamma_neg=-1.0)
  with pytest.raises(ValueError, match="clip"):
    pl.asymmetric_loss(LOGITS, MULTI, clip=1.5)
  with pytest.raises(ValueError, match="labels must have the shape of logits"):
    pl.asymmetric_loss(LOGITS, MULTI[:, :2])
  with pytest.raises(ValueError, match="activation"):
    pl.self_adjusting_dice_loss(LOGITS, MULTI, activation="relu")
  with pytest.raises(ValueError, match="smooth"):
    pl.self_adjusting_dice_loss(LOGITS, MULTI, smooth=0.0)
  with pytest.raises(ValueError, match="where must be broadcastable"):
    pl.asymmetric_loss(LOGITS, MULTI, where=jnp.ones((3,), bool))
