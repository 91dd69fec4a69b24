"""Quickstart: an MLP on scikit-learn's digits with AdamW, AdamP and SAM(AdamW); 3 seeds trained as one vmapped
program per optimizer.

    paperlab run experiments/quickstart.py
    paperlab run experiments/quickstart.py --config.train.num_steps=2000 --config.optimizers=adamw

Prints test accuracy (mean ± std over seeds) per optimizer and writes ``learning_curves.png`` into the work
directory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, optim, train
from paperlab.models import MLP


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.optimizers = "adamw,adamp,sam"  # comma-separated names from _optimizers() below
  c.rho = 0.05  # SAM's neighbourhood radius
  c.model = ml_collections.ConfigDict({"widths": (128, 128), "activation": "relu", "norm": "layer"})
  c.optim = ml_collections.ConfigDict({"learning_rate": 1e-3, "weight_decay": 1e-4})
  c.train = ml_collections.ConfigDict({"batch_size": 64, "num_steps": 1500, "eval_every": 100})
  return c


def _optimizers(c: ml_collections.ConfigDict) -> dict:
  lr, wd = c.optim.learning_rate, c.optim.weight_decay
  return {
      "adamw": lambda: optax.adamw(lr, weight_decay=wd),
      "adamp": lambda: optim.adamp(lr, weight_decay=wd),
      "sam": lambda: optim.sam(optax.adamw(lr, weight_decay=wd), rho=c.rho),
  }


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ds = data.digits()
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  available = _optimizers(config)
  names = [n.strip() for n in config.optimizers.split(",") if n.strip()]
  unknown = [n for n in names if n not in available]
  if unknown:
    raise ValueError(f"config.optimizers: unknown optimizer(s) {unknown}; accepted: {sorted(available)}.")
  tc = config.train
  chunks = tc.num_steps // tc.eval_every
  results, curves = {}, {}
  for name in names:
    optimizer = available[name]()
    graphdef, init = train.make_init(
        lambda rngs: MLP(64, config.model.widths, 10, activation=config.model.activation, norm=config.model.norm,
                         rngs=rngs), optimizer)
    step = train.make_train_step(graphdef, train.classification_loss, optimizer)

    @jax.jit
    @jax.vmap
    def chunk(state, key):
      state, metrics = train.run_steps(step, state, train_data, key, batch_size=tc.batch_size,
                                       num_steps=tc.eval_every)
      return state, metrics["loss"].mean(), train.evaluate(graphdef, state, ds.x_test, ds.y_test)["accuracy"]

    keys = jax.random.split(jax.random.key(0), config.seeds)
    states = jax.vmap(init)(keys)
    losses, accs = [], []
    for i in range(chunks):
      states, loss, acc = chunk(states, keys)
      losses.append(np.asarray(loss))
      accs.append(np.asarray(acc))
      ctx.log((i + 1) * tc.eval_every, {f"{name}/train_loss": loss.mean(), f"{name}/test_accuracy": acc.mean()})
    final = accs[-1]
    results[name] = {"test_accuracy_mean": float(final.mean()), "test_accuracy_std": float(final.std()),
                     "per_seed": final.tolist()}
    curves[name] = (np.arange(1, chunks + 1) * tc.eval_every, np.stack(losses), np.stack(accs))

  ctx.print(f"{'optimizer':<10} test accuracy over {config.seeds} seeds")
  for name, r in results.items():
    ctx.print(f"{name:<10} {r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}")

  fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
  for name, (steps, loss, acc) in curves.items():
    ax_l.plot(steps, loss.mean(1), label=name)
    ax_l.fill_between(steps, loss.min(1), loss.max(1), alpha=0.2)
    ax_a.plot(steps, acc.mean(1), label=name)
    ax_a.fill_between(steps, acc.min(1), acc.max(1), alpha=0.2)
  ax_l.set(xlabel="step", ylabel="train loss", yscale="log", title="digits MLP: train loss")
  ax_a.set(xlabel="step", ylabel="test accuracy", title=f"test accuracy ({config.seeds} seeds, min-max band)")
  ax_a.legend()
  fig.tight_layout()
  plot = ctx.workdir / "learning_curves.png"
  fig.savefig(plot, dpi=100)
  plt.close(fig)
  ctx.print(f"plot: {plot}")
  return {"results": results, "plot": str(plot)}
