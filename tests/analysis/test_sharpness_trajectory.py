"""Sharpness and its trajectory (Noci et al., "Why do Learning Rates Transfer?", arXiv:2402.17457) against the dense
Hessian of ``jax.hessian`` + ``numpy.linalg.eigvalsh`` and the closed form of a quadratic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from paperlab import analysis


def _mlp_problem():
  """A 6-16-16-3 tanh MLP (451 parameters) with an MSE loss on 40 points."""
  k = jax.random.split(jax.random.key(0), 5)
  params = {"w1": jax.random.normal(k[0], (6, 16)) / np.sqrt(6), "b1": jnp.zeros(16),
            "w2": jax.random.normal(k[1], (16, 16)) / np.sqrt(16), "b2": jnp.zeros(16),
            "w3": jax.random.normal(k[2], (16, 3)) / np.sqrt(16)}
  x, y = jax.random.normal(k[3], (40, 6)), jax.random.normal(k[4], (40, 3))

  def loss_fn(p, batch):
    h = jnp.tanh(batch[0] @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return 0.5 * jnp.mean(jnp.sum((h @ p["w3"] - batch[1]) ** 2, -1))

  return loss_fn, params, (x, y)


LOSS_FN, PARAMS, BATCH = _mlp_problem()
_UNRAVEL = ravel_pytree(PARAMS)[1]
# the oracle: the dense Hessian by jax.hessian (forward-over-reverse Jacobian of the gradient), compiled once
_DENSE = jax.jit(jax.hessian(lambda flat: LOSS_FN(_UNRAVEL(flat), BATCH)))


def _dense_hessian(params):
  return np.asarray(_DENSE(ravel_pytree(params)[0]), np.float64)


def test_quadratic_sharpness_is_the_largest_curvature():
  diag = jnp.arange(1.0, 11.0)
  loss_fn = lambda p, _: 0.5 * jnp.sum(diag * p["x"] ** 2)
  params = {"x": jnp.ones(10)}
  mults = {"x": jnp.linspace(2.0, 0.2, 10)}

  @jax.jit
  def both(p, m):
    plain = analysis.sharpness(loss_fn, p, None, jax.random.key(0), num_iters=10)
    # eta lambda_max, and per-coordinate learning rates: P H = diag(p_i * i)
    return plain, analysis.sharpness(loss_fn, p, None, jax.random.key(0), learning_rate=0.1, num_iters=10,
                                     lr_multipliers=m)

  value, scaled = both(params, mults)
  assert float(value) == pytest.approx(10.0, rel=1e-5)
  assert float(scaled) == pytest.approx(0.1 * float(jnp.max(jnp.linspace(2.0, 0.2, 10) * diag)), rel=1e-5)


def test_sharpness_matches_jax_hessian_on_a_small_mlp():
  loss_fn, params, batch = LOSS_FN, PARAMS, BATCH
  hess = _dense_hessian(params)
  top = np.linalg.eigvalsh(hess)[-1]
  # per-layer learning-rate multipliers (muP-style): the spectrum of P^{1/2} H P^{1/2}
  mults = {"w1": 4.0, "b1": 4.0, "w2": 1.0, "b2": 4.0, "w3": 0.25}

  @jax.jit
  def both(p):
    return (analysis.sharpness(loss_fn, p, batch, jax.random.key(1), num_iters=40),
            analysis.sharpness(loss_fn, p, batch, jax.random.key(1), learning_rate=0.5, lr_multipliers=mults,
                               num_iters=40))

  got, got_p = both(params)
  np.testing.assert_allclose(float(got), top, rtol=1e-3)
  p_diag = ravel_pytree(jax.tree.map(lambda x, m: jnp.full(x.shape, m), params, mults))[0]
  s = np.sqrt(np.asarray(p_diag, np.float64))
  top_p = np.linalg.eigvalsh(s[:, None] * hess * s[None, :])[-1]
  np.testing.assert_allclose(float(got_p), 0.5 * top_p, rtol=1e-3)
  assert abs(top_p - top) > 1e-2 * top  # the multipliers change the answer: the check can fail


def test_trajectory_is_the_sharpness_of_every_saved_step():
  loss_fn, params, batch = LOSS_FN, PARAMS, BATCH
  # a short GD run, every step saved
  def step(p, _):
    g = jax.grad(loss_fn)(p, batch)
    new = jax.tree.map(lambda a, b: a - 0.5 * b, p, g)
    return new, new
  _, seq = jax.lax.scan(step, params, None, length=3)
  traj = jax.jit(lambda s: analysis.sharpness_trajectory(loss_fn, s, batch, jax.random.key(2), num_iters=40))(seq)
  assert traj.shape == (3,)
  expected = [np.linalg.eigvalsh(_dense_hessian(jax.tree.map(lambda a, t=t: a[t], seq)))[-1] for t in range(3)]
  np.testing.assert_allclose(traj, expected, rtol=1e-3)
  assert abs(float(traj[2]) - float(traj[0])) > 1e-3 * float(traj[0])  # the steps differ: a real trajectory


def test_errors_name_the_argument():
  loss_fn, params, batch = LOSS_FN, PARAMS, BATCH
  with pytest.raises(ValueError, match="params_seq"):
    analysis.sharpness_trajectory(loss_fn, {"a": jnp.ones((3, 2)), "b": jnp.ones((4, 2))}, batch, jax.random.key(0))
  with pytest.raises(ValueError, match="lr_multipliers"):
    analysis.sharpness(loss_fn, params, batch, jax.random.key(0), lr_multipliers={"w1": 1.0})
  with pytest.raises(ValueError, match="lr_multipliers"):
    analysis.sharpness(loss_fn, params, batch, jax.random.key(0),
                       lr_multipliers={k: -1.0 for k in params})
