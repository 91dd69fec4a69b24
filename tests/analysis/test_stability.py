"""paperlab.analysis.lr_sensitivity [249]: the paper's Eq. 1 on hand-computed loss tables; the PaLM z-loss it uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import analysis, losses


def test_lr_sensitivity_caps_at_init_loss_and_counts_divergence_as_init():
  # capped [2.0, 1.5, 3.0 (nan), 3.0 (4.0 > L0)], L* = 1.5: mean(0.5, 0, 1.5, 1.5) = 0.875
  value = analysis.lr_sensitivity(jnp.asarray([2.0, 1.5, jnp.nan, 4.0]), 3.0)
  np.testing.assert_allclose(float(value), 0.875, rtol=1e-6)


def test_lr_sensitivity_is_zero_when_every_lr_reaches_the_best_and_maximal_when_one_does():
  np.testing.assert_allclose(float(analysis.lr_sensitivity(jnp.full(5, 1.2), 4.0)), 0.0)
  np.testing.assert_allclose(float(analysis.lr_sensitivity(jnp.asarray([1.0, jnp.inf, jnp.nan]), 4.0)), 2.0)


def test_lr_sensitivity_batches_under_jit_and_vmap_with_per_row_init_loss():
  table = jnp.asarray([[2.0, 1.5, jnp.nan, 4.0], [1.0, 1.0, 2.0, 2.0]], jnp.float32)
  init = jnp.asarray([3.0, 5.0])
  batched = jax.jit(analysis.lr_sensitivity)(table, init)
  vmapped = jax.vmap(analysis.lr_sensitivity)(table, init)
  np.testing.assert_allclose(np.asarray(batched), [0.875, 0.5], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(vmapped), np.asarray(batched), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(analysis.lr_sensitivity(table.T, init, axis=0)), [0.875, 0.5], rtol=1e-6)


def test_lr_sensitivity_rejects_an_empty_grid():
  with pytest.raises(ValueError, match="losses_by_lr"):
    analysis.lr_sensitivity(jnp.zeros((0,)), 1.0)


def test_z_loss_gradient_is_two_coef_logz_softmax():
  logits = jax.random.normal(jax.random.key(0), (3, 7)) * 3.0
  coef = 1e-4
  grad = jax.grad(lambda z: losses.logsumexp_penalty(z, weight=coef).sum())(logits)
  expected = 2 * coef * jax.nn.logsumexp(logits, -1, keepdims=True) * jax.nn.softmax(logits, -1)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(expected), rtol=1e-5, atol=1e-10)
