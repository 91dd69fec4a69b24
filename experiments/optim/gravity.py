"""Gravity optimizer with its default hyperparameters on a digits MLP (Bahrami et al., 2021, arXiv:2101.09192),
catalogue [157].

An unregularised MLP trained for 30 epochs with Gravity at the paper's defaults (``l = 0.1, α = 0.01, β = 0.9``,
untuned) and with RMSProp (``lr = 1e-3``); three seeds vmapped, same initialisation and batches per seed.

    paperlab run experiments/optim/gravity.py --config.epochs=60
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, optim, train
from paperlab.models import MLP

PAPER_ID = 157
CLAIM = ("Digits MLP, 30 epochs, 3 seeds: Gravity at its untuned defaults (l=0.1, alpha=0.01, beta=0.9) reaches "
         "mean test accuracy >= 0.90 and >= RMSProp(lr=1e-3) - 0.02.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (64,)
  c.epochs = 30
  c.batch_size = 32
  c.gravity = ml_collections.ConfigDict({"learning_rate": 0.1, "alpha": 0.01, "beta": 0.9})
  c.rmsprop_learning_rate = 1e-3
  c.scale = 1  # multiplies the epochs
  return c


def _test_accuracy(ds, config, make_optimizer):
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  num_steps = config.epochs * config.scale * ds.x_train.shape[0] // config.batch_size

  def trial(key):
    optimizer = make_optimizer(jax.random.fold_in(key, 1))
    graphdef, init = train.make_init(lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs), optimizer)
    step = train.make_train_step(graphdef, train.classification_loss, optimizer)
    state, metrics = train.run_steps(step, init(key), train_data, key, batch_size=config.batch_size,
                                     num_steps=num_steps)
    return train.evaluate(graphdef, state, ds.x_test, ds.y_test)["accuracy"], metrics["loss"]

  acc, curves = jax.jit(jax.vmap(trial))(jax.random.split(jax.random.key(0), config.seeds))
  return np.asarray(acc), np.asarray(curves).mean(axis=0)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  g = config.gravity
  makers = {"gravity": lambda key: optim.gravity(g.learning_rate, g.alpha, g.beta, key=key),
            "rmsprop": lambda key: optax.rmsprop(config.rmsprop_learning_rate)}
  results = {}
  for name, make in makers.items():
    acc, curve = _test_accuracy(ds, config, make)
    for s in range(0, len(curve), max(1, len(curve) // 10)):
      ctx.log(s, {f"{name}/train_loss": float(curve[s])})
    results[name] = {"test_accuracy": acc.tolist()}
  grav = float(np.mean(results["gravity"]["test_accuracy"]))
  rms = float(np.mean(results["rmsprop"]["test_accuracy"]))
  results["claim"] = {"passed": bool(grav >= 0.90 and grav >= rms - 0.02), "statement": CLAIM,
                      "gravity_test_accuracy": grav, "rmsprop_test_accuracy": rms}
  return results
