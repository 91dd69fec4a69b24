"""Federated aggregation, FedProx, FedLAW."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import merge


def _clients(n=3):
  return [{"w": jnp.full((2, 3), float(i)), "b": jnp.full((3,), 10.0 * i)} for i in range(n)]


def test_aggregate_weights_by_data_size():
  agg = jax.jit(lambda cs: merge.aggregate(cs, [1.0, 1.0, 2.0]))(_clients())
  np.testing.assert_allclose(agg["w"], np.full((2, 3), 1.25))
  np.testing.assert_allclose(agg["b"], np.full(3, 12.5))


def test_aggregate_list_and_stacked_agree_and_default_is_the_mean():
  cs = _clients()
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *cs)
  np.testing.assert_allclose(merge.aggregate(stacked)["w"], merge.aggregate(cs)["w"])
  np.testing.assert_allclose(merge.aggregate(cs)["w"], np.ones((2, 3)))


def test_aggregate_shrink_and_identical_clients():
  c = _clients(2)[1]
  np.testing.assert_allclose(merge.aggregate([c, c, c], [3, 1, 2])["b"], c["b"])
  np.testing.assert_allclose(merge.aggregate([c, c], shrink=0.5)["w"], 0.5 * c["w"])


def test_prox_gradient_is_mu_times_the_distance_to_the_global_model():
  w = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5]])}
  g = {"a": jnp.array([0.0, 1.0]), "b": jnp.array([[2.0]])}
  grad = jax.grad(lambda p: merge.prox_term(p, g, 0.3))(w)
  np.testing.assert_allclose(grad["a"], 0.3 * (w["a"] - g["a"]), rtol=1e-6)
  h = merge.prox_loss(lambda p, x: jnp.sum(p["a"] * x), 0.3)
  np.testing.assert_allclose(h(w, g, jnp.ones(2)), -1.0 + 0.15 * (1 + 9 + 2.25), rtol=1e-6)


def test_add_proximal_gradient_matches_the_prox_term_and_mu_zero_is_plain():
  w0 = {"a": jnp.array([1.0, -2.0])}
  opt = optax.chain(merge.add_proximal_gradient(0.5), optax.sgd(0.1))
  state = opt.init(w0)
  w = {"a": jnp.array([3.0, 0.0])}
  grads = {"a": jnp.array([1.0, 1.0])}
  updates, _ = opt.update(grads, state, w)
  np.testing.assert_allclose(updates["a"], -0.1 * (grads["a"] + 0.5 * (w["a"] - w0["a"])), rtol=1e-6)
  plain = optax.chain(merge.add_proximal_gradient(0.0), optax.sgd(0.1))
  np.testing.assert_allclose(plain.update(grads, plain.init(w0), w)[0]["a"], -0.1 * grads["a"])


def test_learnable_aggregate_with_log_sizes_and_unit_gamma_is_fedavg():
  cs = _clients()
  sizes = jnp.array([5.0, 1.0, 2.0])
  np.testing.assert_allclose(merge.learnable_aggregate(cs, 1.0, jnp.log(sizes))["w"],
                             merge.aggregate(cs, sizes)["w"], rtol=1e-6)
  g = jax.grad(lambda gamma: jnp.sum(merge.learnable_aggregate(cs, gamma, jnp.zeros(3))["b"]))(1.0)
  assert np.isfinite(g) and g > 0
  np.testing.assert_allclose(merge.learnable_aggregate(cs, 0.0, jnp.zeros(3))["b"], 0.0)


def test_errors():
  cs = _clients()
  with pytest.raises(ValueError, match="empty"):
    merge.aggregate([])
  with pytest.raises(ValueError, match="one entry per client"):
    merge.aggregate(cs, [1.0, 2.0])
  with pytest.raises(ValueError, match="non-negative"):
    merge.aggregate(cs, [1.0, -1.0, 1.0])
  with pytest.raises(ValueError, match="structure"):
    merge.aggregate([cs[0], {"w": cs[1]["w"]}])
  with pytest.raises(ValueError, match="mu"):
    merge.add_proximal_gradient(-1.0)
  with pytest.raises(ValueError, match="logits"):
    merge.learnable_aggregate(cs, 1.0, jnp.zeros(2))


def test_fit_learnable_aggregate_fits_the_proxy_objective():
  cs = [{"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([0.0, 1.0])}, {"w": jnp.array([4.0, 4.0])}]
  loss = lambda p, target: jnp.sum((p["w"] - target) ** 2)
  target = jnp.array([0.25, 0.25])  # every convex combination has w0 + w1 >= 1: only gamma < 1 reaches it
  agg, gamma, logits = jax.jit(lambda c, t: merge.fit_learnable_aggregate(loss, c, t, steps=400, learning_rate=0.05))(
      cs, target)
  np.testing.assert_allclose(agg["w"], target, atol=0.05)
  assert float(gamma) < 1.0 and logits.shape == (3,)
  np.testing.assert_allclose(agg["w"], merge.learnable_aggregate(cs, gamma, logits)["w"], rtol=1e-6)
  with pytest.raises(ValueError, match="steps"):
    merge.fit_learnable_aggregate(loss, cs, jnp.zeros(2), steps=0)
