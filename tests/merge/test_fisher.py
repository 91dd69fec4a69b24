"""Diagonal Fisher, Fisher-weighted averaging, uncertainty-based gradient matching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def _softmax_regression():
  params = {"w": jax.random.normal(jax.random.key(0), (5, 3)), "b": jnp.array([0.1, -0.2, 0.3])}
  apply = lambda p, x: x @ p["w"] + p["b"]
  x = jax.random.normal(jax.random.key(1), (37, 5))
  return params, apply, x


def test_exact_fisher_matches_the_softmax_regression_closed_form():
  params, apply, x = _softmax_regression()
  fisher = jax.jit(lambda p: merge.diag_fisher(apply, p, x, chunk=8))(params)
  probs = np.asarray(jax.nn.softmax(apply(params, x)))
  # d log p_c / d w_jk = x_j (1[c=k] - p_k)  =>  E_c[(.)^2] = x_j^2 p_k (1 - p_k)
  want_w = np.mean(np.asarray(x)[:, :, None] ** 2 * (probs * (1 - probs))[:, None, :], 0)
  np.testing.assert_allclose(fisher["w"], want_w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(fisher["b"], np.mean(probs * (1 - probs), 0), rtol=1e-5)


def test_empirical_fisher_is_the_mean_squared_per_example_gradient():
  params, apply, x = _softmax_regression()
  y = jnp.arange(37) % 3
  fisher = merge.diag_fisher(apply, params, x, mode="empirical", labels=y, chunk=16)
  grads = [jax.grad(lambda p: jax.nn.log_softmax(apply(p, x[i:i + 1]))[0, y[i]])(params) for i in range(37)]
  want = jax.tree.map(lambda *g: np.mean(np.square(np.stack(g)), 0), *grads)
  np.testing.assert_allclose(fisher["w"], want["w"], rtol=1e-5, atol=1e-8)


def test_sampled_fisher_approaches_the_exact_fisher():
  params, apply, x = _softmax_regression()
  exact = merge.diag_fisher(apply, params, x)
  sampled = jax.jit(lambda p: merge.diag_fisher(apply, p, jnp.tile(x, (100, 1)), mode="true",
                                                rng=jax.random.key(3), chunk=740))(params)
  np.testing.assert_allclose(sampled["w"], exact["w"], atol=0.15 * float(jnp.max(exact["w"])))


def test_fisher_merge_with_equal_fishers_is_the_weighted_average():
  models = [{"a": jnp.full((3,), float(i)), "b": jnp.full((2, 2), 2.0 * i)} for i in range(3)]
  fisher = {"a": jnp.full((3,), 0.7), "b": jnp.full((2, 2), 0.7)}
  merged = jax.jit(lambda ms: merge.fisher_merge(ms, [fisher] * 3, weights=[1.0, 2.0, 1.0]))(models)
  np.testing.assert_allclose(merged["a"], np.full(3, 1.0), rtol=1e-6)
  np.testing.assert_allclose(merged["b"], np.full((2, 2), 2.0), rtol=1e-6)


def test_a_dominant_fisher_makes_its_model_win():
  models = [{"a": jnp.zeros(4)}, {"a": jnp.ones(4)}]
  fishers = [{"a": jnp.ones(4)}, {"a": jnp.full(4, 1e8)}]
  np.testing.assert_allclose(merge.fisher_merge(models, fishers)["a"], np.ones(4), atol=1e-6)


def test_fisher_merge_normalize_and_dtype():
  models = [{"a": jnp.array([1.0, 3.0], jnp.bfloat16)}, {"a": jnp.array([3.0, 1.0], jnp.bfloat16)}]
  fishers = [{"a": jnp.array([1.0, 1.0])}, {"a": jnp.array([10.0, 10.0])}]
  merged = merge.fisher_merge(models, fishers, normalize=True)
  assert merged["a"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(merged["a"], np.float32), [2.0, 2.0], rtol=1e-2)  # scale removed


def test_gradient_matching_special_cases():
  base = {"w": jnp.zeros((3, 2))}
  fts = [{"w": jnp.full((3, 2), 1.0)}, {"w": jnp.full((3, 2), 3.0)}]
  h = [{"w": jnp.full((3, 2), 2.0)}] * 2
  # no prior, equal Hessians: the plain average of the fine-tunes, whatever alpha
  for alpha in (0.3, 1.0):
    np.testing.assert_allclose(merge.gradient_matching(base, fts, h, alpha=alpha)["w"], 2.0, rtol=1e-6)
  # a dominant prior: task arithmetic with scale alpha
  big = {"w": jnp.full((3, 2), 1e9)}
  np.testing.assert_allclose(merge.gradient_matching(base, fts, h, base_hessian=big, alpha=0.3)["w"], 1.2, rtol=1e-5)
  # a single task with alpha = 1: the fine-tune
  np.testing.assert_allclose(merge.gradient_matching(base, fts[:1], h[:1], base_hessian=big)["w"], 1.0, rtol=1e-6)


def test_errors():
  m = {"a": jnp.zeros(2)}
  with pytest.raises(ValueError, match="empty"):
    merge.fisher_merge([], [])
  with pytest.raises(ValueError, match="one entry per model"):
    merge.fisher_merge([m, m], [m])
  with pytest.raises(ValueError, match=r"weights\[1\]"):
    merge.fisher_merge([m, m], [m, m], weights=[1.0, -1.0])
  with pytest.raises(ValueError, match="all be zero"):
    merge.fisher_merge([m, m], [m, m], weights=[0.0, 0.0])
  with pytest.raises(ValueError, match="structure"):
    merge.fisher_merge([m, {"b": jnp.zeros(2)}], [m, m])
  with pytest.raises(ValueError, match="mode"):
    merge.diag_fisher(lambda p, x: x, m, jnp.zeros((2, 2)), mode="fisher")
  with pytest.raises(ValueError, match="labels"):
    merge.diag_fisher(lambda p, x: x, m, jnp.zeros((2, 2)), mode="empirical")
  with pytest.raises(ValueError, match="alpha"):
    merge.gradient_matching(m, [m], [m], alpha=0.0)
