"""Unit tests for paperlab.optim.batch_size: scaling rules, ghost batch norm, adaptive batch-size tests."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab.optim import (adagrad_norm, adam_sqrt_scaling, coordinatewise_norm_test, ghost_batch_norm,
                            inner_product_test, next_batch_size, norm_test, rmsprop_sqrt_scaling,
                            scale_by_adagrad_norm, sgd_linear_scaling, sqrt_lr_scaling, sqrt_scaling)

BASE = dict(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)


# ------------------------------------------------------------------------------------ scaling rules
def test_adam_sqrt_scaling_values():
  h = adam_sqrt_scaling(4.0, **BASE)
  np.testing.assert_allclose([h["learning_rate"], 1 - h["b1"], 1 - h["b2"], h["eps"]], [2e-3, 0.4, 0.004, 5e-9],
                             rtol=1e-9)


def test_adam_sqrt_scaling_at_kappa_one_is_identity():
  assert adam_sqrt_scaling(1.0, **BASE) == pytest.approx(BASE)


def test_adam_sqrt_scaling_composes():
  k1, k2 = 2.0, 0.25
  twice = adam_sqrt_scaling(k2, **adam_sqrt_scaling(k1, **BASE))
  once = adam_sqrt_scaling(k1 * k2, **BASE)
  assert twice == pytest.approx(once, rel=1e-12)


def test_sqrt_scaling_from_batch_sizes_and_steps():
  h = sqrt_scaling(16, 64, learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, num_steps=1000)
  assert h["num_steps"] == 250
  assert h["learning_rate"] == pytest.approx(2e-3) and h["b1"] == pytest.approx(0.6)
  assert h["eps"] == pytest.approx(5e-9)
  optax.adam(**{k: v for k, v in h.items() if k != "num_steps"})  # feeds optax directly


def test_rmsprop_and_sgd_rules():
  h = rmsprop_sqrt_scaling(4.0, learning_rate=0.01, decay=0.99, eps=1e-6)
  assert h == pytest.approx(dict(learning_rate=0.02, decay=0.96, eps=5e-7))
  assert sgd_linear_scaling(8.0, learning_rate=0.1) == pytest.approx(dict(learning_rate=0.8))
  assert sqrt_lr_scaling(0.1, 16.0) == pytest.approx(0.4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kappa=0.0), "kappa"),
    (dict(kappa=-2.0), "kappa"),
    (dict(kappa=2.0, b1=1.0), "b1"),
    (dict(kappa=20.0), "SDE approximation no longer holds"),   # 20 * (1 - 0.9) = 2 >= 1
    (dict(kappa=2.0, learning_rate=-1.0), "learning_rate"),
])
def test_adam_sqrt_scaling_rejects_bad_arguments(kwargs, match):
  args = {**BASE, **kwargs}
  kappa = args.pop("kappa")
  with pytest.raises(ValueError, match=match):
    adam_sqrt_scaling(kappa, **args)


# ------------------------------------------------------------------------------------- ghost batch norm
def test_ghost_batch_norm_with_full_virtual_batch_is_batch_norm():
  x = jax.random.normal(jax.random.key(0), (32, 6)) * 3.0 + 1.0
  bn = nnx.BatchNorm(6, use_running_average=False, epsilon=1e-5, rngs=nnx.Rngs(0))
  y, _, _ = jax.jit(ghost_batch_norm, static_argnums=1)(x, 32)
  np.testing.assert_allclose(np.asarray(y), np.asarray(bn(x)), atol=1e-6)


def test_ghost_batch_norm_normalises_each_chunk_separately():
  x = jax.random.normal(jax.random.key(1), (24, 3, 5)) + jnp.arange(24)[:, None, None]
  y, mean, var = ghost_batch_norm(x, 8)
  chunks = [ghost_batch_norm(x[i:i + 8], 8) for i in range(0, 24, 8)]
  np.testing.assert_allclose(np.asarray(y), np.concatenate([np.asarray(c[0]) for c in chunks]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(mean), np.mean([np.asarray(c[1]) for c in chunks], axis=0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(var), np.mean([np.asarray(c[2]) for c in chunks], axis=0), rtol=1e-5)


def test_ghost_batch_norm_rejects_bad_arguments():
  with pytest.raises(ValueError, match="multiple of virtual_batch_size"):
    ghost_batch_norm(jnp.ones((10, 3)), 4)
  with pytest.raises(ValueError, match="virtual_batch_size"):
    ghost_batch_norm(jnp.ones((10, 3)), 0)
  with pytest.raises(TypeError, match="virtual_batch_size"):
    ghost_batch_norm(jnp.ones((10, 3)), 2.0)


# ----------------------------------------------------------------------------------- batch-size tests
def test_norm_test_proposal_matches_gaussian_closed_form():
  """g_i ~ N(mu, sigma^2 I): the proposal tends to d sigma^2 / (eta^2 ||mu||^2)."""
  d, b, sigma, eta = 50, 4000, 2.0, 0.5
  mu = jnp.full((d,), 0.3)
  grads = {"w": mu[:30] + sigma * jax.random.normal(jax.random.key(0), (b, 30)),
           "v": mu[30:] + sigma * jax.random.normal(jax.random.key(1), (b, 20))}
  res = jax.jit(norm_test, static_argnums=1)(grads, eta)
  expected = d * sigma ** 2 / (eta ** 2 * float(jnp.sum(mu ** 2)))
  assert abs(float(res.proposed_batch_size) - expected) <= 0.1 * expected
  assert bool(res.passed)   # b = 4000 exceeds the ~178 examples the test asks for
  assert not bool(norm_test(jax.tree.map(lambda g: g[:100], grads), eta).passed)


def test_norm_test_passes_without_noise_and_statistic_is_ratio():
  g = jnp.tile(jnp.arange(1.0, 5.0), (8, 1))
  res = norm_test(g, 0.1)
  assert bool(res.passed) and float(res.proposed_batch_size) == 1.0 and float(res.statistic) == 0.0
  g2 = g + jax.random.normal(jax.random.key(0), g.shape)
  res2 = norm_test(g2, 0.1)
  assert bool(res2.passed) == (float(res2.statistic) <= 1.0)
  assert bool(res2.passed) == (float(res2.proposed_batch_size) <= 8)


def test_inner_product_test_asks_for_smaller_batches_than_norm_test():
  b, d = 256, 40
  g = 0.2 + jax.random.normal(jax.random.key(3), (b, d))
  ip = inner_product_test(g, 0.5)
  nt = norm_test(g, 0.5)
  assert float(ip.proposed_batch_size) < float(nt.proposed_batch_size)


def test_coordinatewise_test_is_at_least_as_strict_as_any_single_coordinate():
  g = jnp.array([[1.0, 0.1], [1.2, -0.1], [0.8, 0.3], [1.0, -0.2]])
  res = coordinatewise_norm_test(g, 0.5)
  single = norm_test(g[:, 1:], 0.5)
  assert float(res.proposed_batch_size) == float(single.proposed_batch_size)


def test_next_batch_size_never_shrinks_and_is_capped():
  passed = norm_test(jnp.ones((4, 3)), 0.1)
  assert int(next_batch_size(32, passed, max_batch_size=1024)) == 32
  grow = norm_test(jax.random.normal(jax.random.key(0), (8, 3)), 0.1)
  assert not bool(grow.passed)
  assert int(next_batch_size(8, grow, max_batch_size=10_000)) == max(8, int(grow.proposed_batch_size))
  assert int(next_batch_size(8, grow, max_batch_size=16)) == 16


@pytest.mark.parametrize("test_fn", [norm_test, coordinatewise_norm_test, inner_product_test])
def test_masked_test_equals_test_on_the_valid_rows(test_fn):
  g = {"w": jax.random.normal(jax.random.key(5), (12, 3, 2)) + 0.3, "b": jax.random.normal(jax.random.key(6), (12,))}
  where = jnp.arange(12) < 7
  masked = jax.jit(test_fn, static_argnums=1)(g, 0.5, where=where)
  direct = test_fn(jax.tree.map(lambda x: x[:7], g), 0.5)
  np.testing.assert_allclose(float(masked.statistic), float(direct.statistic), rtol=1e-5)
  assert float(masked.proposed_batch_size) == float(direct.proposed_batch_size)


def test_tests_reject_bad_arguments():
  with pytest.raises(ValueError, match="eta"):
    norm_test(jnp.ones((4, 2)), 0.0)
  with pytest.raises(ValueError, match="at least 2"):
    norm_test(jnp.ones((1, 2)), 0.1)
  with pytest.raises(ValueError, match="leading"):
    norm_test({"a": jnp.ones((4, 2)), "b": jnp.ones((3, 2))}, 0.1)
  with pytest.raises(ValueError, match="where must have shape"):
    norm_test(jnp.ones((4, 2)), 0.1, where=jnp.ones(3, bool))
  with pytest.raises(ValueError, match="theta"):
    inner_product_test(jnp.ones((4, 2)), -1.0)


# ---------------------------------------------------------------------------------------- AdaGrad-Norm
class AdaGradNormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_three_line_closed_form(self):
    lr, b0 = 0.5, 0.1
    opt = adagrad_norm(lr, b0=b0)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    state = opt.init(params)
    update = self.variant(opt.update)
    bsq, ref = b0 ** 2, {k: np.asarray(v) for k, v in params.items()}
    for t in range(5):
      grads = {"w": jnp.array([0.3 * t + 1, -1.0]), "b": jnp.array(0.2 * t)}
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
      bsq += sum(float(jnp.sum(g ** 2)) for g in grads.values())
      ref = {k: ref[k] - lr * np.asarray(grads[k]) / math.sqrt(bsq) for k in ref}
    for k in ref:
      np.testing.assert_allclose(np.asarray(params[k]), ref[k], rtol=1e-6)


def test_adagrad_norm_rejects_bad_arguments():
  with pytest.raises(ValueError, match="b0"):
    scale_by_adagrad_norm(0.0)
  with pytest.raises(ValueError, match="learning_rate"):
    adagrad_norm(-1.0)
