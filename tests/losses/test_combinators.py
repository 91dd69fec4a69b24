"""Unit tests for paperlab.losses.combinators (weighted sums, homoscedastic uncertainty weighting)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab.losses import combinators as C


def test_weighted_sum_of_named_losses_matches_manual_sum():
  losses = {"a": jnp.float32(2.0), "b": jnp.float32(3.0)}
  out = C.weighted_sum(losses, {"a": 0.5, "b": 2.0})
  np.testing.assert_allclose(out, 0.5 * 2.0 + 2.0 * 3.0)
  np.testing.assert_allclose(C.weighted_sum(losses), 5.0)


def test_weighted_sum_over_task_axis():
  losses = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  np.testing.assert_allclose(C.weighted_sum(losses, jnp.array([1.0, 0.0, 2.0])), [7.0, 16.0])


def test_weighted_sum_rejects_mismatched_names_and_shapes():
  with pytest.raises(ValueError, match="missing \\['b'\\]"):
    C.weighted_sum({"a": 1.0, "b": 2.0}, {"a": 1.0})
  with pytest.raises(ValueError, match="one entry per task"):
    C.weighted_sum(jnp.ones((4, 3)), jnp.ones((2,)))
  with pytest.raises(TypeError):
    C.weighted_sum({"a": 1.0}, jnp.ones(1))


class UncertaintyWeightingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_optimum_log_variance_equals_log_task_loss(self):
    # Kendall et al.: for fixed L, d/ds [0.5 e^{-s} L + 0.5 s] = 0 at s* = log L (regression), s* = log 2L
    # (classification); the total at the regression optimum is 0.5 + 0.5 log L.
    losses = {"reg": jnp.float32(0.37), "cls": jnp.float32(2.5)}
    types = {"reg": "regression", "cls": "classification"}
    opt = {"reg": jnp.log(0.37), "cls": jnp.log(2 * 2.5)}
    fn = self.variant(lambda lv: C.uncertainty_weighted(losses, lv, types)[0])
    grads = jax.grad(fn)(opt)
    np.testing.assert_allclose(grads["reg"], 0.0, atol=1e-6)
    np.testing.assert_allclose(grads["cls"], 0.0, atol=1e-6)
    total_reg, _ = C.uncertainty_weighted({"reg": losses["reg"]}, {"reg": opt["reg"]})
    np.testing.assert_allclose(total_reg, 0.5 + 0.5 * np.log(0.37), atol=1e-6)

  def test_gradient_descent_on_log_vars_finds_task_loss(self):
    losses = {"a": jnp.float32(0.01), "b": jnp.float32(9.0)}
    lv = C.init_log_vars(["a", "b"])
    step = jax.jit(lambda lv: jax.tree.map(lambda p, g: p - 0.5 * g, lv,
                                           jax.grad(lambda v: C.uncertainty_weighted(losses, v)[0])(lv)))
    for _ in range(400):
      lv = step(lv)
    _, aux = C.uncertainty_weighted(losses, lv)
    np.testing.assert_allclose(aux["variances"]["a"], 0.01, rtol=1e-3)
    np.testing.assert_allclose(aux["variances"]["b"], 9.0, rtol=1e-3)

  def test_aux_reports_effective_weights(self):
    total, aux = C.uncertainty_weighted({"a": 1.0, "b": 2.0}, {"a": jnp.log(4.0), "b": 0.0},
                                        {"b": "classification"})
    np.testing.assert_allclose(aux["weights"]["a"], 0.5 / 4.0, rtol=1e-6)
    np.testing.assert_allclose(aux["weights"]["b"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(total, 0.125 * 1.0 + 0.5 * np.log(4.0) + 2.0, rtol=1e-6)

  def test_bad_input_raises(self):
    with self.assertRaisesRegex(ValueError, "log_vars"):
      C.uncertainty_weighted({"a": 1.0}, {"b": 0.0})
    with self.assertRaisesRegex(ValueError, "task_types\\['a'\\]"):
      C.uncertainty_weighted({"a": 1.0}, {"a": 0.0}, {"a": "ranking"})
    with self.assertRaisesRegex(ValueError, "scalars"):
      C.uncertainty_weighted({"a": jnp.ones(3)}, {"a": 0.0})
    with self.assertRaisesRegex(ValueError, "unique"):
      C.init_log_vars(["a", "a"])


def test_uncertainty_weighting_trains_inside_paperlab_train_step():
  # The log-variances are nnx.Params of the model, so make_train_step's optimizer trains them with the network;
  # after training exp(s) tracks each regression task's loss level (Kendall et al.'s optimum s* = log L).
  import optax
  from flax import nnx

  from paperlab import data, train
  from paperlab.models import MLP

  class TwoHeads(nnx.Module):
    def __init__(self, rngs):
      self.net = MLP(16, [16], 2, rngs=rngs)
      self.log_vars = nnx.Param(jnp.zeros(2))

  def loss_fn(model, batch, rng):
    x, ya, yb = batch
    out = model.net(x)
    task = {"a": jnp.mean((out[:, 0] - ya) ** 2), "b": jnp.mean((out[:, 1] - yb) ** 2)}
    total, _ = C.uncertainty_weighted(task, {"a": model.log_vars[0], "b": model.log_vars[1]})
    return total, {"mse_a": task["a"], "mse_b": task["b"]}

  mt = data.multitask_toy(n_train=512, noise_scales=(0.1, 1.0))
  batch = (jnp.asarray(mt.x_train), jnp.asarray(mt.y_train["reg_a"]), jnp.asarray(mt.y_train["reg_b"]))
  opt = optax.adam(1e-2)
  graphdef, init = train.make_init(TwoHeads, opt)
  step = train.make_train_step(graphdef, loss_fn, opt)
  run = jax.jit(lambda s: train.run_steps(step, s, batch, jax.random.key(1), batch_size=128, num_steps=800))
  state, metrics = run(init(jax.random.key(0)))
  var = np.exp(np.asarray(state.params["log_vars"]))
  mse = np.array([metrics["mse_a"][-100:].mean(), metrics["mse_b"][-100:].mean()])
  np.testing.assert_allclose(var, mse, rtol=0.3)
  assert var[1] / var[0] > 10  # the noisier task is down-weighted
