"""ConFIG on a toy PINN (Liu et al., 2025, arXiv:2408.11104), catalogue [206].

1-D Poisson ``-u'' = π² sin(πx)`` on [0, 1] with ``u(0) = u(1) = 0`` (solution ``sin(πx)``), a 3x32 tanh MLP, a
PDE-residual loss and a boundary loss. Adam on the summed loss vs Adam on the ConFIG combination of the two
per-loss gradients (``paperlab.optim.config_multi``), same initialisation, steps and learning rate; seeds are
vmapped.

    paperlab run experiments/optim/config_pinn.py --config.num_steps=10000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import optim

PAPER_ID = 206
CLAIM = ("Toy PINN for 1-D Poisson (3x32 tanh MLP, 3000 Adam steps, 3 seeds): the relative L2 error of ConFIG "
         "is <= 0.8x that of Adam on the summed loss.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.width = 32
  c.depth = 3
  c.num_collocation = 64
  c.num_steps = 3000
  c.learning_rate = 1e-3
  c.scale = 1  # multiplies num_steps
  return c


def _init(key, width, depth):
  sizes = [1] + [width] * depth + [1]
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) * np.sqrt(1.0 / a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _u(params, x):
  h = jnp.reshape(x, (1,))
  for i, layer in enumerate(params):
    h = h @ layer["w"] + layer["b"]
    if i < len(params) - 1:
      h = jnp.tanh(h)
  return h[0]


def _losses(params, xs):
  u_xx = jax.vmap(jax.grad(jax.grad(lambda x: _u(params, x))))(xs)
  residual = -u_xx - np.pi**2 * jnp.sin(np.pi * xs)
  boundary = jnp.stack([_u(params, 0.0), _u(params, 1.0)])
  return jnp.stack([jnp.mean(residual**2), jnp.mean(boundary**2)])


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  num_steps = config.num_steps * config.scale
  xs = jnp.linspace(0.0, 1.0, config.num_collocation)
  x_test = jnp.linspace(0.0, 1.0, 257)
  u_true = jnp.sin(np.pi * x_test)

  def rel_error(params):
    pred = jax.vmap(lambda x: _u(params, x))(x_test)
    return jnp.linalg.norm(pred - u_true) / jnp.linalg.norm(u_true)

  def trial(key, method):
    params = _init(key, config.width, config.depth)
    if method == "config":
      opt = optim.config_multi(config.learning_rate)
    else:
      opt = optax.adam(config.learning_rate)

    def body(carry, _):
      p, s = carry
      stacked = optim.objective_grads(_losses, p, xs)
      g = stacked if method == "config" else jax.tree.map(lambda x: jnp.sum(x, axis=0), stacked)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), jnp.sum(_losses(p, xs))

    (params, _), curve = jax.lax.scan(body, (params, opt.init(params)), None, length=num_steps)
    return rel_error(params), curve

  keys = jax.random.split(jax.random.key(0), config.seeds)
  results = {}
  for method in ("summed", "config"):
    err, curve = jax.jit(jax.vmap(lambda k: trial(k, method)))(keys)
    curve = np.asarray(curve).mean(axis=0)
    for s in range(0, num_steps, max(1, num_steps // 10)):
      ctx.log(s, {f"{method}/loss": float(curve[s])})
    results[method] = {"relative_l2_error": np.asarray(err).tolist()}
  config_err = float(np.mean(results["config"]["relative_l2_error"]))
  summed_err = float(np.mean(results["summed"]["relative_l2_error"]))
  results["claim"] = {"passed": bool(config_err <= 0.8 * summed_err), "statement": CLAIM,
                      "config_relative_l2": config_err, "summed_relative_l2": summed_err,
                      "ratio": config_err / summed_err}
  return results
