"""FRUGAL vs GaLore on matrix regression (Zmushko et al., 2025, arXiv:2411.07837), catalogue [225].

``Y = X W*`` with a random full-rank ``W* ∈ R^{32x32}``. Both optimizers keep Adam state only in the same rank-4
subspace, taken from the SVD of the first gradient and never refreshed (``update_proj_gap`` longer than the run),
which exposes GaLore's limitation: it can only move the weights inside that subspace. FRUGAL also updates the
orthogonal residual with state-free signSGD, so it can fit the full-rank target with the same optimizer state.

    paperlab run experiments/optim/frugal.py --config.num_steps=5000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import optim

PAPER_ID = 225
CLAIM = ("Matrix regression with a full-rank 32x32 target, rank-4 subspace fixed from the first gradient, 2000 "
         "steps with cosine lr: final MSE of FRUGAL (Adam in the subspace + signSGD on the residual) is <= 0.2x "
         "GaLore's, with FRUGAL's optimizer state <= 0.3x Adam's element count.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.dim = 32
  c.num_samples = 256
  c.rank = 4
  c.num_steps = 2000
  c.learning_rate = 1e-2
  c.scale = 1  # multiplies num_steps
  return c


def _state_size(state) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(state) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  num_steps = config.num_steps * config.scale
  schedule = optax.cosine_decay_schedule(config.learning_rate, num_steps)
  never = num_steps + 1
  optimizers = {
      "frugal": optim.frugal(schedule, rank=config.rank, update_proj_gap=never, projection="svd"),
      # scale 1: the same subspace step as FRUGAL's state-full part (galore's default 0.25 pairs with lr 0.01).
      "galore": optim.galore(schedule, rank=config.rank, update_proj_gap=never, scale=1.0),
      "adam": optax.adam(schedule),
  }

  def problem(key):
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (config.num_samples, config.dim))
    w_star = jax.random.normal(kw, (config.dim, config.dim)) / np.sqrt(config.dim)
    return x, x @ w_star

  def mse(w, x, y):
    return jnp.mean(jnp.square(x @ w - y))

  results = {}
  keys = jax.random.split(jax.random.key(0), config.seeds)
  for name, opt in optimizers.items():
    @jax.jit
    @jax.vmap
    def trial(key):
      x, y = problem(key)
      w = jnp.zeros((config.dim, config.dim))

      def body(carry, _):
        w, s = carry
        loss, g = jax.value_and_grad(mse)(w, x, y)
        u, s = opt.update(g, s, w)
        return (optax.apply_updates(w, u), s), loss

      (w, _), curve = jax.lax.scan(body, (w, opt.init(w)), None, length=num_steps)
      return mse(w, x, y), curve

    final, curves = trial(keys)
    curve = np.asarray(curves).mean(axis=0)
    for s in range(0, num_steps, max(1, num_steps // 10)):
      ctx.log(s, {f"{name}/mse": float(curve[s])})
    results[name] = {"final_mse": np.asarray(final).tolist(),
                     "state_elements": _state_size(opt.init(jnp.zeros((config.dim, config.dim))))}
  frugal_mse = float(np.mean(results["frugal"]["final_mse"]))
  galore_mse = float(np.mean(results["galore"]["final_mse"]))
  state_ratio = results["frugal"]["state_elements"] / results["adam"]["state_elements"]
  passed = frugal_mse <= 0.2 * galore_mse and state_ratio <= 0.3
  results["claim"] = {"passed": bool(passed), "statement": CLAIM, "frugal_final_mse": frugal_mse,
                      "galore_final_mse": galore_mse, "mse_ratio": frugal_mse / galore_mse,
                      "state_ratio_vs_adam": state_ratio}
  return results
