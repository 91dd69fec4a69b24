"""Unit tests for paperlab.losses.balancing: CoBa, improvable gap balancing, loss-based sample weights,
long-tail class weighting and the auxiliary-loss-free MoE balancer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab.losses import balancing as B


def _run(balancer, seq):
  state = balancer.init()
  update = jax.jit(balancer.update)
  out = []
  for v in seq:
    w, state = update(jnp.asarray(v, jnp.float32), state)
    out.append(np.asarray(w))
  return np.stack(out), state


# ------------------------------------------------------------------------------------------------------ CoBa


def test_coba_uses_equal_weights_during_warmup():
  seq = [[1.0 / (1 + t), 2.0, 1.0 + t] for t in range(6)]
  w, _ = _run(B.coba(3, warmup_steps=6, history_length=8), seq)
  np.testing.assert_allclose(w, np.full((6, 3), 1 / 3), rtol=1e-6)


def test_coba_identical_convergence_gives_uniform_weights():
  # Same normalised curve for every task -> equal slopes -> RCS = ACS = uniform.
  seq = [np.array([1.0, 3.0, 0.5]) * np.exp(-0.05 * t) for t in range(40)]
  w, _ = _run(B.coba(3, warmup_steps=5, history_length=10), seq)
  np.testing.assert_allclose(w[5:], 1 / 3, atol=1e-5)


def test_coba_weights_are_a_floored_distribution():
  rng = np.random.default_rng(0)
  seq = np.abs(1.0 + np.cumsum(rng.normal(0, 0.1, (80, 4)), axis=0)) + 0.1
  w, _ = _run(B.coba(4, warmup_steps=3, history_length=12), seq)
  np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
  assert (w >= 1 / (5 * 4) - 1e-6).all()
  assert np.ptp(w[10:], axis=1).max() > 1e-3  # it does reweight


def test_coba_downweights_a_task_that_starts_to_diverge():
  # Two tasks converge alike; then task 1 turns around and its loss rises: ACS (selected by the divergence factor)
  # moves weight away from it.
  t = np.arange(120, dtype=np.float32)
  a = np.exp(-0.02 * t)
  b = np.where(t < 60, np.exp(-0.02 * t), np.exp(-0.02 * 60) + 0.01 * (t - 60))
  w, _ = _run(B.coba(2, warmup_steps=10, history_length=20), np.stack([a, b], 1))
  assert w[100:, 1].mean() < 0.5 - 0.05, w[100:, 1].mean()


def test_coba_state_is_a_vmappable_pytree():
  bal = B.coba(2, warmup_steps=2, history_length=4)
  states = jax.vmap(lambda _: bal.init())(jnp.arange(3))
  losses = jnp.array([[1.0, 2.0], [2.0, 1.0], [1.0, 1.0]])
  w, states = jax.vmap(bal.update)(losses, states)
  assert w.shape == (3, 2) and states.loss_history.shape == (3, 4, 2)


def test_coba_bad_arguments():
  with pytest.raises(ValueError, match="history_length"):
    B.coba(2, history_length=1)
  with pytest.raises(ValueError, match="tau"):
    B.coba(2, tau=0.0)
  bal = B.coba(3)
  with pytest.raises(ValueError, match="vector of 3"):
    bal.update(jnp.ones(2), bal.init())


# ------------------------------------------------------------------------------------- improvable gap balancing


def test_gap_balancing_equal_progress_gives_unit_weights():
  seq = [np.array([1.0, 10.0, 0.1]) * s for s in (1.0, 0.5, 0.25)]
  w, _ = _run(B.improvable_gap_balancing(3), seq)
  np.testing.assert_allclose(w, 1.0, rtol=1e-6)


def test_gap_balancing_larger_gap_gets_larger_weight_and_weights_sum_to_k():
  seq = [[1.0, 1.0, 1.0], [0.2, 0.9, 0.5]]
  w, state = _run(B.improvable_gap_balancing(3, temperature=0.5), seq)
  np.testing.assert_allclose(w[-1].sum(), 3.0, rtol=1e-6)
  assert w[-1][1] > w[-1][2] > w[-1][0]
  expected = 3 * np.exp(np.array([0.2, 0.9, 0.5]) / 0.5) / np.exp(np.array([0.2, 0.9, 0.5]) / 0.5).sum()
  np.testing.assert_allclose(w[-1], expected, rtol=1e-5)


def test_gap_balancing_reference_is_mean_of_first_steps():
  seq = [[1.0, 4.0], [3.0, 2.0], [2.0, 3.0]]
  w, _ = _run(B.improvable_gap_balancing(2, reference_steps=2), seq)
  np.testing.assert_allclose(w[:2], 1.0)
  gaps = np.array([2.0 / 2.0, 3.0 / 3.0])
  np.testing.assert_allclose(w[2], 2 * np.exp(gaps) / np.exp(gaps).sum(), rtol=1e-6)


# ---------------------------------------------------------------------------------------- loss-based weights


@pytest.mark.parametrize("strategy", ["linupper", "uniform", "quadratic", "extremes"])
def test_loss_based_weights_match_the_paper_formula(strategy):
  l = np.array([0.3, 1.0, 2.5, 4.0, 0.7], np.float32)
  delta, r = 1.5, 0.7
  n = delta * (2 * l - l.max() - l.min()) / (l.max() - l.min())
  g = {"linupper": np.minimum(n + delta, delta), "uniform": n, "quadratic": 1 - n ** 2 / delta ** 2,
       "extremes": np.abs(n)}[strategy]
  expected = np.exp(g / r) / np.exp(g / r).sum()
  w = B.loss_based_weights(l, strategy=strategy, delta=delta, temperature=r)
  np.testing.assert_allclose(w, expected, rtol=1e-5)


def test_loss_based_weights_uniform_losses_give_uniform_weights_and_no_gradient():
  w = B.loss_based_weights(jnp.full((6,), 2.0))
  np.testing.assert_allclose(w, 1 / 6, rtol=1e-6)
  g = jax.grad(lambda l: jnp.sum(B.loss_based_weights(l) * 1.0 + 0.0 * l))(jnp.arange(4.0))
  np.testing.assert_allclose(g, 0.0)


def test_loss_based_weights_linupper_deprioritises_low_loss_samples():
  w = B.loss_based_weights(jnp.array([0.1, 0.2, 2.0, 3.0]))
  assert w[0] < w[1] < w[2] and np.isclose(w[2], w[3])


def test_loss_based_weights_uniform_strategy_with_large_temperature_is_the_mean():
  l = jnp.array([0.5, 1.5, 3.0, 0.1])
  w = B.loss_based_weights(l, strategy="uniform", temperature=1e6)
  np.testing.assert_allclose(B.apply_weights(l, w), jnp.mean(l), rtol=1e-5)


def test_apply_weights_normalisations():
  l = jnp.array([1.0, 2.0, 3.0, 4.0])
  w = jnp.array([0.5, 1.0, 2.0, 9.0])
  m = jnp.array([True, True, True, False])
  np.testing.assert_allclose(B.apply_weights(l, w, where=m), 0.5 + 2 + 6)
  np.testing.assert_allclose(B.apply_weights(l, w, where=m, normalize="weights"), 8.5 / 3.5)
  np.testing.assert_allclose(B.apply_weights(l, w, where=m, normalize="mask"), 8.5 / 3)


# ------------------------------------------------------------------------------------------ long-tail weights


def test_class_balanced_weights_closed_forms():
  counts = jnp.array([1000.0, 100.0, 10.0])
  np.testing.assert_allclose(B.class_balanced_weights(counts, beta=0.0), 1.0, rtol=1e-6)
  inv = 1 / np.array([1000.0, 100.0, 10.0])
  np.testing.assert_allclose(B.class_balanced_weights(counts, beta=None), 3 * inv / inv.sum(), rtol=1e-6)
  eff = (1 - 0.99) / (1 - 0.99 ** np.array([1000.0, 100.0, 10.0]))
  np.testing.assert_allclose(B.class_balanced_weights(counts, beta=0.99), 3 * eff / eff.sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="beta"):
    B.class_balanced_weights(counts, beta=1.0)
  with pytest.raises(ValueError, match="positive"):
    B.class_balanced_weights(jnp.array([3.0, 0.0]))


def test_weighted_cross_entropy_with_unit_weights_is_cross_entropy():
  logits = jax.random.normal(jax.random.key(0), (7, 5))
  labels = jnp.array([0, 1, 2, 3, 4, 0, 1])
  np.testing.assert_allclose(
      B.weighted_softmax_cross_entropy_with_integer_labels(logits, labels, jnp.ones(5)),
      optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)


def test_weighted_cross_entropy_mask_equals_dropping_examples():
  logits = jax.random.normal(jax.random.key(1), (6, 4))
  labels = jnp.array([0, 3, 2, 1, 1, 0])
  w = jnp.array([1.0, 2.0, 0.5, 4.0])
  m = jnp.array([1, 0, 1, 1, 0, 1], bool)
  full = B.weighted_softmax_cross_entropy_with_integer_labels(logits, labels, w, where=m)
  kept = B.weighted_softmax_cross_entropy_with_integer_labels(logits[m], labels[m], w)
  np.testing.assert_allclose(full.sum() / m.sum(), kept.mean(), rtol=1e-6)
  np.testing.assert_allclose(full[~m], 0.0)


def test_logit_adjustment_with_uniform_prior_is_cross_entropy():
  logits = jax.random.normal(jax.random.key(2), (5, 3))
  labels = jnp.array([0, 1, 2, 1, 0])
  uniform = jnp.log(jnp.full((3,), 1 / 3))
  np.testing.assert_allclose(
      B.logit_adjusted_softmax_cross_entropy_with_integer_labels(logits, labels, uniform),
      optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)
  np.testing.assert_allclose(jnp.argmax(B.posthoc_logit_adjustment(logits, uniform), -1), jnp.argmax(logits, -1))


def test_integer_label_losses_reject_bad_labels():
  logits = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\]"):
    B.weighted_softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 4, 1]), jnp.ones(4))
  with pytest.raises(ValueError, match="labels shape"):
    B.logit_adjusted_softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1]), jnp.zeros(4))
  with pytest.raises(TypeError, match="integers"):
    B.weighted_softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(3), jnp.ones(4))
  with pytest.raises(ValueError, match="class_weights"):
    B.weighted_softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1, 1]), jnp.ones(3))


# ------------------------------------------------------------------------------------ loss-free MoE balancing


def test_loss_free_bias_update_follows_the_sign_rule_exactly():
  bal = B.loss_free_balancer(4, update_rate=1e-3)
  load = jnp.array([10.0, 2.0, 4.0, 4.0])  # mean 5: overloaded expert 0 goes down, the others up
  bias, state = bal.update(load, bal.init())
  np.testing.assert_array_equal(np.asarray(bias), np.float32([-1e-3, 1e-3, 1e-3, 1e-3]))
  bias, _ = bal.update(jnp.full((4,), 5.0), state)  # balanced load: no change
  np.testing.assert_array_equal(bias, state.bias)


def test_routing_is_invariant_to_a_constant_bias_shift_and_gates_ignore_the_bias():
  logits = jax.random.normal(jax.random.key(3), (32, 8))
  bias = jax.random.normal(jax.random.key(4), (8,)) * 0.3
  idx1, g1 = B.biased_topk_route(logits, bias, 2)
  idx2, g2 = B.biased_topk_route(logits, bias + 7.0, 2)
  np.testing.assert_array_equal(idx1, idx2)
  np.testing.assert_allclose(g1, g2)
  s = jax.nn.sigmoid(logits)
  sel = jnp.take_along_axis(s, idx1, -1)
  np.testing.assert_allclose(g1, sel / sel.sum(-1, keepdims=True), rtol=1e-6)
  idx0, g0 = B.biased_topk_route(logits, jnp.zeros(8), 2)
  same = jnp.all(jnp.sort(idx0, -1) == jnp.sort(idx1, -1), -1)
  np.testing.assert_allclose(jnp.sort(g0, -1)[same], jnp.sort(g1, -1)[same], rtol=1e-6)


def test_bias_gets_no_gradient():
  logits = jax.random.normal(jax.random.key(5), (16, 4))
  g = jax.grad(lambda b: B.biased_topk_route(logits, b, 2)[1].sum())(jnp.zeros(4))
  np.testing.assert_allclose(g, 0.0)


def test_max_violation_and_aux_loss_closed_forms():
  np.testing.assert_allclose(B.max_violation(jnp.array([3.0, 3.0, 3.0])), 0.0)
  np.testing.assert_allclose(B.max_violation(jnp.array([6.0, 2.0, 1.0, 3.0])), 1.0)
  idx = jnp.array([[0, 1], [2, 3], [0, 1], [2, 3]])
  probs = jnp.full((4, 4), 0.25)
  np.testing.assert_allclose(B.switch_aux_loss(probs, idx), 1.0, rtol=1e-6)  # balanced: sum_i 1 * 1/4
  np.testing.assert_allclose(B.expert_load(idx, 4), [2.0, 2.0, 2.0, 2.0])
  with pytest.raises(ValueError, match="k must be"):
    B.biased_topk_route(probs, jnp.zeros(4), 5)


def test_loss_based_weights_over_a_mapped_axis_equal_the_global_batch():
  l = jnp.array([0.3, 1.0, 2.5, 4.0, 0.7, 0.1, 3.3, 2.2])
  sharded = jax.vmap(lambda s: B.loss_based_weights(s, axis_name="devices"), axis_name="devices")(l.reshape(2, 4))
  np.testing.assert_allclose(sharded.reshape(-1), B.loss_based_weights(l), rtol=1e-6)


def test_fully_masked_batches_give_zero_not_nan():
  logits, labels = jnp.zeros((3, 4)), jnp.array([0, 1, 2])
  none = jnp.zeros(3, bool)
  np.testing.assert_array_equal(
      B.weighted_softmax_cross_entropy_with_integer_labels(logits, labels, jnp.ones(4), where=none), 0.0)
  np.testing.assert_array_equal(B.apply_weights(jnp.ones(3), jnp.ones(3), where=none, normalize="weights"), 0.0)
  np.testing.assert_array_equal(B.apply_weights(jnp.ones(3), jnp.ones(3), where=none, normalize="mask"), 0.0)
