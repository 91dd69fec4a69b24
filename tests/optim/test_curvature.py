"""Exact Gauss-Newton: the output-space solve against the explicit parameter-space system (float64), the
least-squares one-step property, damping adaptation, jit and argument checks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from paperlab import optim


def _mlp(key, dtype=jnp.float32, sizes=(3, 16, 16, 2)):
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": (jax.random.normal(k, (a, b)) / np.sqrt(a)).astype(dtype), "b": jnp.zeros(b, dtype)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _apply(params, x):
  for i, layer in enumerate(params):
    x = x @ layer["w"] + layer["b"]
    if i < len(params) - 1:
      x = jnp.tanh(x)
  return x


def _explicit_direction(output_fn, output_loss, params, damping):
  flat, unravel = ravel_pytree(params)
  outputs = output_fn(params)
  jac = jax.jacrev(lambda f: output_fn(unravel(f)).reshape(-1))(flat)  # N x p
  q = jax.hessian(lambda o: output_loss(o.reshape(outputs.shape)))(outputs.reshape(-1))
  g = jax.grad(lambda f: output_loss(output_fn(unravel(f))))(flat)
  h = jac.T @ q @ jac + damping * jnp.eye(flat.size, dtype=flat.dtype)
  return unravel(jnp.linalg.solve(h, g))


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_output_space_solve_equals_parameter_space_solve_in_float64(loss):
  with jax.enable_x64(True):
    key = jax.random.key(0)
    params = _mlp(key, jnp.float64)  # p = 3*16+16 + 16*16+16 + 16*2+2 = 370
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    if loss == "mse":
      y = jax.random.normal(jax.random.key(2), (8, 2), jnp.float64)
      output_loss = lambda o: 0.5 * jnp.mean(jnp.sum((o - y) ** 2, -1))
    else:
      y = jnp.array([0, 1, 1, 0, 1, 0, 0, 1])
      output_loss = lambda o: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(o, y))
    output_fn = lambda p: _apply(p, x)
    got = jax.jit(lambda p: optim.egn_direction(output_fn, output_loss, p, damping=1e-3))(params)
    want = jax.jit(lambda p: _explicit_direction(output_fn, output_loss, p, 1e-3))(params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-9)


def test_one_step_solves_linear_least_squares():
  # Overdetermined (20 x 6): QJJ^T is rank-deficient, so the output-space system needs float64 at tiny damping.
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(20, 5)))
    y = jnp.asarray(rng.normal(size=(20, 1)))
    params = {"w": jnp.zeros((5, 1)), "b": jnp.zeros(1)}
    output_fn = lambda p: x @ p["w"] + p["b"]
    output_loss = lambda o: 0.5 * jnp.mean((o - y) ** 2)
    opt = optim.egn(1.0, damping=1e-9, adaptive_damping=False, line_search=False)
    u, _ = jax.jit(lambda p: opt.update(None, opt.init(p), p, output_fn=output_fn, output_loss=output_loss))(params)
    new = optax.apply_updates(params, u)
    design = np.hstack([np.asarray(x), np.ones((20, 1))])
    sol = np.linalg.lstsq(design, np.asarray(y), rcond=None)[0]
    np.testing.assert_allclose(np.vstack([new["w"], new["b"][:, None]]), sol, atol=1e-6)


def test_adaptive_damping_decreases_on_a_quadratic_model_and_jits():
  # For a linear model the Gauss-Newton model is exact (ratio = 1), so lambda shrinks every step.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 1)), jnp.float32)
  params = {"w": jnp.zeros((4, 1))}
  output_fn = lambda p: x @ p["w"]
  output_loss = lambda o: 0.5 * jnp.mean((o - y) ** 2)
  tx = optim.scale_by_egn(damping=1.0, adaptive_damping=True)
  update = jax.jit(lambda p, s: tx.update(None, s, p, output_fn=output_fn, output_loss=output_loss))
  state = tx.init(params)
  _, state = update(params, state)
  np.testing.assert_allclose(state.damping, 2.0 / 3.0, rtol=1e-6)


def test_egn_with_line_search_decreases_loss_on_a_tiny_mlp():
  params = _mlp(jax.random.key(0), sizes=(1, 8, 1))
  x = jnp.linspace(-2, 2, 32)[:, None]
  y = jnp.sin(2 * x)
  output_fn = lambda p: _apply(p, x)
  output_loss = lambda o: jnp.mean((o - y) ** 2)
  opt = optim.egn(1.0, damping=1e-2)

  @jax.jit
  def step(p, s):
    u, s = opt.update(None, s, p, output_fn=lambda q: _apply(q, x), output_loss=output_loss)
    return optax.apply_updates(p, u), s

  state = opt.init(params)
  start = float(output_loss(output_fn(params)))
  for _ in range(20):
    params, state = step(params, state)
  assert float(output_loss(output_fn(params))) < 0.1 * start


def test_missing_output_fn_raises():
  tx = optim.scale_by_egn()
  with pytest.raises(ValueError, match="output_fn"):
    tx.update(None, tx.init({}), {"w": jnp.ones(2)})


@pytest.mark.parametrize("make,arg", [
    (lambda: optim.scale_by_egn(damping=0.0), "damping"),
    (lambda: optim.scale_by_egn(increase=0.5), "increase"),
    (lambda: optim.scale_by_egn(decrease=1.0), "decrease"),
    (lambda: optim.egn(learning_rate=-1.0), "learning_rate"),
    (lambda: optim.egn(max_backtracking_steps=0), "max_backtracking_steps"),
    (lambda: optim.egn_direction(lambda p: p, jnp.sum, jnp.ones(2), damping=-1.0), "damping"),
])
def test_invalid_hyperparameters_raise_naming_them(make, arg):
  with pytest.raises(ValueError, match=arg):
    make()
