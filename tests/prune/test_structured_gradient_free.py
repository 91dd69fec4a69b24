"""Unit and property tests of gradient-free structured pruning (Nova et al., arXiv:2303.04185):
R2 / D2 scores, the FLOP-budget mask search, the convex (KCM) and least-squares folds, and the MLP driver."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.prune as pr


def _acts(seed=0, samples=40, n=10):
  return jax.nn.relu(jax.random.normal(jax.random.key(seed), (samples, n)))


def test_r2_gives_a_duplicated_neuron_half_the_score_of_a_unique_one():
  a = _acts()
  dup = jnp.concatenate([a, a[:, :2]], axis=1)  # neurons 0, 1 duplicated as 10, 11
  s = np.asarray(pr.representative_scores(dup))
  assert s.shape == (12,) and s.dtype == np.float32
  assert np.all(s[[0, 1, 10, 11]] < 0.6) and np.all(s[2:10] > 0.9)
  assert set(np.asarray(pr.select_top(jnp.asarray(s), 8)).tolist()) == set(range(2, 10))


def test_r2_scores_heads_from_three_dimensional_activations_under_jit():
  heads = jax.random.normal(jax.random.key(1), (16, 4, 3))
  heads = heads.at[:, 3].set(heads[:, 0])  # head 3 copies head 0
  s = np.asarray(jax.jit(pr.representative_scores)(heads))
  assert s.shape == (4,) and s[0] < s[1] and s[3] < s[2]


def test_d2_and_weight_norm_scores():
  a = _acts()
  np.testing.assert_allclose(pr.activation_norm_scores(a), np.linalg.norm(np.asarray(a), axis=0), rtol=1e-6)
  w = jax.random.normal(jax.random.key(2), (5, 7))
  np.testing.assert_allclose(pr.weight_norm_scores(w), np.linalg.norm(np.asarray(w), axis=0), rtol=1e-6)


def test_flop_budget_search_keeps_the_best_prefix_within_budget():
  scores = [jnp.asarray([0.0, 1.0, 2.0, 3.0]), jnp.asarray([0.0, 1.5, 2.5])]
  masks = pr.flop_budget_masks(scores, [1.0, 2.0], 0.5)  # total 10 FLOPs, budget 5: 3 (1) + 2.5 (2) + 2 (1) + 1.5?
  np.testing.assert_array_equal(masks[0], [False, False, True, True])
  np.testing.assert_array_equal(masks[1], [False, False, True])
  kept = sum(int(m.sum()) * c for m, c in zip(masks, (1.0, 2.0)))
  assert kept <= 5.0


def test_project_simplex_rows():
  v = jnp.asarray([[0.5, 2.0, -1.0], [0.1, 0.2, 0.7], [3.0, 3.0, -9.0]])
  p = np.asarray(pr.project_simplex(v))
  np.testing.assert_allclose(p, [[0.0, 1.0, 0.0], [0.1, 0.2, 0.7], [0.5, 0.5, 0.0]], atol=1e-6)


_convex = jax.jit(pr.convex_coefficients, static_argnames=("kernel",))


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 100.0), kernel=st.sampled_from(["linear", "rbf"]))
def test_convex_coefficients_are_non_negative_and_sum_to_one(seed, scale, kernel):
  a = jax.random.normal(jax.random.key(seed), (12, 7)) * scale
  c = np.asarray(_convex(a[:, :3], a[:, 3:], kernel=kernel))
  assert c.shape == (3, 4)
  assert np.all(c >= 0) and np.allclose(c.sum(1), 1.0, atol=1e-5)


def test_convex_coefficients_recover_an_exact_convex_combination():
  b = _acts(4, n=4)
  t = b @ jnp.asarray([[0.2], [0.0], [0.5], [0.3]])
  c = pr.convex_coefficients(t, b, num_iters=2000)
  np.testing.assert_allclose(c, [[0.2, 0.0, 0.5, 0.3]], atol=1e-3)


@pytest.mark.parametrize("method", pr.FOLD_METHODS)
def test_keeping_every_neuron_is_the_identity(method):
  a, w = _acts(5, samples=30, n=8), jax.random.normal(jax.random.key(6), (8, 3))
  out = pr.fold_pruned_neurons(w, a, jnp.arange(8), method=method)
  np.testing.assert_allclose(out, w, atol=2e-5)


def test_convex_fold_of_a_duplicate_neuron_is_exact():
  a = _acts(7, n=5)
  a = jnp.concatenate([a, a[:, 1:2]], axis=1)  # neuron 5 duplicates neuron 1
  w = jax.random.normal(jax.random.key(8), (6, 4))
  out = jax.jit(lambda w, a: pr.fold_pruned_neurons(w, a, jnp.arange(5), method="convex", num_iters=500))(w, a)
  np.testing.assert_allclose(a[:, :5] @ out, a @ w, atol=1e-3)
  np.testing.assert_allclose(out[1], w[1] + w[5], atol=1e-3)


def test_mask_tuning_is_optimal_over_diagonal_scalings():
  a, w = _acts(9, n=8), jax.random.normal(jax.random.key(10), (8, 3))
  keep = jnp.asarray([0, 2, 3, 5, 7])
  out = pr.fold_pruned_neurons(w, a, keep, method="mask")
  err = lambda m: float(jnp.sum((a[:, keep] @ (m[:, None] * w[keep]) - a @ w) ** 2))
  m_star = out[:, 0] / w[keep, 0]
  base = err(m_star)
  for i in range(5):
    for d in (-1e-2, 1e-2):
      assert err(m_star.at[i].add(d)) >= base - 1e-4
  assert base < err(jnp.ones(5))  # tuning beats plain dropping


def test_structured_prune_mlp_shapes_and_fold_beats_drop():
  k = jax.random.split(jax.random.key(11), 4)
  x = jax.random.normal(k[0], (64, 6))
  w1 = jax.random.normal(k[1], (6, 8))
  w1 = jnp.concatenate([w1, w1[:, :4] * 1.0], axis=1)  # neurons 8..11 duplicate 0..3
  layers = [{"kernel": w1, "bias": jnp.zeros(12)},
            {"kernel": jax.random.normal(k[2], (12, 3)), "bias": jnp.zeros(3)}]
  f = lambda ls: jax.nn.relu(x @ ls[0]["kernel"] + ls[0]["bias"]) @ ls[1]["kernel"] + ls[1]["bias"]
  errs = {}
  for method in ("convex", "drop"):
    out, kept = pr.structured_prune_mlp(layers, x, 8 / 12, score="r2d2", method=method)
    assert out[0]["kernel"].shape == (6, 8) and out[0]["bias"].shape == (8,) and out[1]["kernel"].shape == (8, 3)
    assert kept[0].shape == (8,)
    errs[method] = float(jnp.mean((f(out) - f(layers)) ** 2))
  assert errs["convex"] < errs["drop"]  # KCM's fold beats dropping the neurons


def test_errors_name_the_argument():
  a, w = _acts(), jnp.ones((10, 2))
  with pytest.raises(ValueError, match="method"):
    pr.fold_pruned_neurons(w, a, jnp.arange(3), method="nope")
  with pytest.raises(ValueError, match="acts"):
    pr.fold_pruned_neurons(jnp.ones((9, 2)), a, jnp.arange(3))
  with pytest.raises(ValueError, match="keep"):
    pr.select_top(jnp.ones(4), 5)
  with pytest.raises(ValueError, match="sigma"):
    pr.rbf_kernel(a, sigma=-1.0)
  with pytest.raises(ValueError, match="keep_frac"):
    pr.structured_prune_mlp([{"kernel": w, "bias": jnp.ones(2)}] * 2, a, 0.0)
  with pytest.raises(ValueError, match="kernel"):
    pr.convex_coefficients(a[:, :2], a[:, 2:], kernel="poly")
  with pytest.raises(ValueError, match="flop_fraction"):
    pr.flop_budget_masks([jnp.ones(3)], [1.0], 1.5)
  with pytest.raises(ValueError, match="acts"):
    pr.representative_scores(jnp.ones(3))
