"""WeLore: non-uniform low-rank compression of a GaLore-trained MLP (Jaiswal et al., 2024, arXiv:2407.11239),
catalogue [60].

A 4-layer digits MLP is trained with GaLore (rank 8, Adam in the subspace); its kernels are then compressed to
half of their parameters with WeLore's single global threshold on normalised singular values (non-uniform
per-layer ranks) and, as the baseline, with one uniform rank for every kernel under the same budget. Each run's
per-layer stable ranks are recorded.

    paperlab run experiments/optim/galore_welore.py --config.num_steps=3000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import data, optim, train
from paperlab.models import MLP

PAPER_ID = 60
CLAIM = ("A 4-layer digits MLP trained with GaLore (rank 8), compressed to 50% of its kernel parameters: WeLore's "
         "non-uniform ranks increase the test loss no more than one uniform rank under the same budget, and the "
         "per-layer rank fractions k_l/min(m, n) have std >= 0.1 (3 seeds).")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128, 128)
  c.rank = 8
  c.num_steps = 1000
  c.batch_size = 64
  c.learning_rate = 3e-3
  c.target_ratio = 0.5
  c.scale = 1  # multiplies num_steps
  return c


def _kernel_cost(shape, k):
  return min(k * (shape[0] + shape[1]), shape[0] * shape[1])


def _uniform_ranks(params, budget):
  """The largest single rank whose factorised kernel count fits ``budget``."""
  kernels = [x for x in jax.tree.leaves(params) if x.ndim == 2]
  best = 1
  for k in range(1, max(min(x.shape) for x in kernels) + 1):
    if sum(_kernel_cost(x.shape, k) for x in kernels) <= budget:
      best = k
  return jax.tree.map(lambda x: best if x.ndim == 2 else None, params)


def _leaves_with_none(tree):
  return jax.tree.leaves(tree, is_leaf=lambda x: x is None)


def _compress(params, ranks):
  factors, mask = optim.low_rank_factorize(params, ranks)
  is_pair = lambda x: isinstance(x, tuple)
  return jax.tree.map(lambda f, on: f[0] @ f[1] if on else f, factors, mask, is_leaf=is_pair)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  optimizer = optim.galore(config.learning_rate, rank=config.rank, update_proj_gap=200, scale=1.0)
  graphdef, init = train.make_init(lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs), optimizer)
  step = train.make_train_step(graphdef, train.classification_loss, optimizer)
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  num_steps = config.num_steps * config.scale

  @jax.jit
  @jax.vmap
  def trial(key):
    state, metrics = train.run_steps(step, init(key), train_data, key, batch_size=config.batch_size,
                                     num_steps=num_steps)
    return state, metrics["loss"]

  states, curves = trial(jax.random.split(jax.random.key(0), config.seeds))
  curve = np.asarray(curves).mean(axis=0)
  for s in range(0, num_steps, max(1, num_steps // 10)):
    ctx.log(s, {"galore/train_loss": float(curve[s])})
  test_loss = jax.jit(lambda st: train.evaluate(graphdef, st, ds.x_test, ds.y_test)["loss"])

  rows = []
  for i in range(config.seeds):
    state = jax.tree.map(lambda x: x[i], states)
    params = state.params
    kernels = {"/".join(map(str, p)): x for p, x in
               ((tuple(getattr(k, "key", k) for k in path), leaf)
                for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]) if x.ndim == 2}
    dense = sum(x.size for x in kernels.values())
    welore = optim.welore_ranks(params, config.target_ratio)
    pairs = [(x, k) for x, k in zip(jax.tree.leaves(params), _leaves_with_none(welore)) if x.ndim == 2]
    welore_cost = sum(_kernel_cost(x.shape, k) for x, k in pairs)
    uniform = _uniform_ranks(params, welore_cost)
    base = float(test_loss(state))
    delta_welore = float(test_loss(state._replace(params=_compress(params, welore)))) - base
    delta_uniform = float(test_loss(state._replace(params=_compress(params, uniform)))) - base
    fractions = [k / min(x.shape) for x, k in pairs]
    rows.append({"test_loss": base, "delta_welore": delta_welore, "delta_uniform": delta_uniform,
                 "welore_ranks": {name: int(k) for name, (_, k) in zip(kernels, pairs)},
                 "uniform_rank": int(jax.tree.leaves(uniform)[0]), "kept_fraction": welore_cost / dense,
                 "rank_fraction_std": float(np.std(fractions)),
                 "stable_ranks": {k: float(optim.stable_rank(x)) for k, x in kernels.items()}})
    ctx.log(num_steps, {"seed": i, "delta_welore": delta_welore, "delta_uniform": delta_uniform})
  d_w = float(np.mean([r["delta_welore"] for r in rows]))
  d_u = float(np.mean([r["delta_uniform"] for r in rows]))
  spread = float(np.mean([r["rank_fraction_std"] for r in rows]))
  results = {"seeds": rows}
  results["claim"] = {"passed": bool(d_w <= d_u and spread >= 0.1), "statement": CLAIM,
                      "delta_test_loss_welore": d_w, "delta_test_loss_uniform": d_u, "rank_fraction_std": spread}
  return results
