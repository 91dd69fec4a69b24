"""Regression losses and HL-Gauss regression-as-classification."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paperlab.losses as pl

RNG = np.random.default_rng(4)


def test_pinball_with_median_quantile_is_half_the_absolute_error():
  p, y = RNG.normal(size=20).astype(np.float32), RNG.normal(size=20).astype(np.float32)
  np.testing.assert_allclose(pl.pinball_loss(p, y, quantile=0.5), 0.5 * np.abs(y - p), rtol=1e-6)


def test_pinball_minimiser_is_the_quantile():
  y = RNG.standard_cauchy(size=2001).astype(np.float32)
  grid = jnp.linspace(-3, 3, 601)
  risk = jax.vmap(lambda c: jnp.mean(pl.pinball_loss(c, y, quantile=0.8)))(grid)
  assert abs(float(grid[jnp.argmin(risk)]) - np.quantile(y, 0.8)) < 0.02


def test_percentage_errors_closed_forms():
  p, y = np.array([1.0, 2.0, 0.0], np.float32), np.array([2.0, 2.0, 1.0], np.float32)
  np.testing.assert_allclose(pl.absolute_percentage_error(p, y), [0.5, 0.0, 1.0])
  np.testing.assert_allclose(pl.symmetric_absolute_percentage_error(p, y), [2 / 3, 0.0, 2.0], rtol=1e-6)


def test_reexported_optax_losses_are_optax():
  assert pl.huber_loss is optax.losses.huber_loss and pl.log_cosh is optax.losses.log_cosh


def test_hl_gauss_target_sums_to_one_and_is_centred_on_the_target():
  num_bins, lo, hi = 64, -4.0, 4.0
  sigma = 0.75 * (hi - lo) / num_bins
  y = np.linspace(-3.0, 3.0, 13).astype(np.float32)  # at least 3 sigma inside the support
  target = np.asarray(pl.hl_gauss_target(y, num_bins, lo, hi, sigma))
  np.testing.assert_allclose(target.sum(-1), 1.0, rtol=1e-5)
  centres = lo + (hi - lo) / num_bins * (np.arange(num_bins) + 0.5)
  np.testing.assert_allclose(target @ centres, y, atol=1e-3)


def test_hl_gauss_target_clips_targets_outside_the_support_when_asked():
  target = pl.hl_gauss_target(np.array([100.0, -100.0], np.float32), 16, -1.0, 1.0, 0.1, clip_targets=True)
  assert np.all(np.isfinite(target))
  np.testing.assert_allclose(target, pl.hl_gauss_target(np.array([1.0, -1.0], np.float32), 16, -1.0, 1.0, 0.1))


def test_two_hot_mean_is_exactly_the_target():
  y = np.array([-3.3, -0.01, 0.0, 2.71, 3.9], np.float32)
  target = np.asarray(pl.two_hot_target(y, 16, -4.0, 4.0))
  np.testing.assert_allclose(target.sum(-1), 1.0, rtol=1e-6)
  assert np.all((target > 0).sum(-1) <= 2)
  logits = np.log(np.maximum(target, 1e-30))
  np.testing.assert_allclose(pl.histogram_mean(logits, -4.0, 4.0), np.clip(y, -3.75, 3.75), atol=1e-5)


def test_hl_gauss_loss_is_cross_entropy_against_the_gaussian_histogram():
  logits = RNG.normal(size=(5, 32)).astype(np.float32)
  y = RNG.uniform(-1, 1, size=5).astype(np.float32)
  target = pl.hl_gauss_target(y, 32, -2.0, 2.0, 0.75 * 4.0 / 32)
  np.testing.assert_allclose(pl.hl_gauss_loss(logits, y, v_min=-2.0, v_max=2.0),
                             optax.losses.softmax_cross_entropy(logits, target), rtol=1e-6)
  grad = jax.grad(lambda z: pl.hl_gauss_loss(z, y, v_min=-2.0, v_max=2.0).sum())(logits)
  np.testing.assert_allclose(grad, jax.nn.softmax(logits) - target, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="quantile"):
    pl.pinball_loss(np.zeros(3, np.float32), np.zeros(3, np.float32), quantile=1.5)
  with pytest.raises(ValueError, match="v_max must be greater"):
    pl.hl_gauss_target(np.zeros(3, np.float32), 8, 1.0, -1.0, 0.1)
  with pytest.raises(ValueError, match="num_bins"):
    pl.two_hot_target(np.zeros(3, np.float32), 1, -1.0, 1.0)
  with pytest.raises(ValueError, match="targets must have shape"):
    pl.hl_gauss_loss(np.zeros((3, 8), np.float32), np.zeros((4,), np.float32), v_min=-1.0, v_max=1.0)
  with pytest.raises(ValueError, match="broadcastable"):
    pl.absolute_error(np.zeros(3, np.float32), np.zeros(4, np.float32))
