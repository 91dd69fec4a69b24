"""MoMo's learning-rate robustness (Schaipp et al., 2024, arXiv:2305.07583), catalogue [176].

Softmax regression on digits (the loss is non-negative, so f_* = 0), trained with SGD-momentum and with MoMo at
the same five learning rates; all (lr, seed) trials of one optimizer run as one vmapped program. MoMo caps the
step at the Polyak step ``(f̄ - f_*)/||d||²``, so its final loss should barely depend on the learning rate,
while SGD-M spikes or diverges once the learning rate is too large.

    paperlab run experiments/optim/momo.py --config.epochs=60
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, optim, train
from paperlab.models import MLP

PAPER_ID = 176
CLAIM = ("Digits softmax regression, 30 epochs, lr in {0.1, 0.3, 1, 3, 10}: the worst (max over lr) final train "
         "loss of MoMo is <= 0.5x that of SGD-M (beta=0.9), and MoMo is within 1.5x of its best loss for >= 4 of "
         "the 5 learning rates.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 2
  c.learning_rates = (0.1, 0.3, 1.0, 3.0, 10.0)
  c.epochs = 30
  c.batch_size = 64
  c.beta = 0.9
  c.scale = 1  # multiplies the epochs
  return c


def _final_losses(ds, config, make_optimizer):
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  num_steps = config.epochs * config.scale * ds.x_train.shape[0] // config.batch_size

  def trial(lr, key):
    optimizer = make_optimizer(lr)
    graphdef, init = train.make_init(lambda rngs: MLP(64, (), 10, rngs=rngs), optimizer)
    step = train.make_train_step(graphdef, train.classification_loss, optimizer)
    state, metrics = train.run_steps(step, init(key), train_data, key, batch_size=config.batch_size,
                                     num_steps=num_steps)
    loss = train.evaluate(graphdef, state, ds.x_train, ds.y_train)["loss"]
    return jnp.where(jnp.isfinite(loss), loss, jnp.inf), metrics["loss"]

  lrs = jnp.asarray(config.learning_rates, jnp.float32)
  keys = jax.random.split(jax.random.key(0), config.seeds)
  per_lr = jax.vmap(lambda lr: jax.vmap(lambda k: trial(lr, k))(keys))
  final, curves = jax.jit(per_lr)(lrs)
  return np.asarray(final).mean(axis=1), np.asarray(curves).mean(axis=1)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  makers = {"sgdm": lambda lr: optax.sgd(lr, momentum=config.beta),
            "momo": lambda lr: optim.momo(lr, beta=config.beta)}
  results = {}
  for name, make in makers.items():
    final, curves = _final_losses(ds, config, make)
    for i, lr in enumerate(config.learning_rates):
      ctx.log(i, {"optimizer": name, "learning_rate": lr, "final_train_loss": float(final[i])})
    results[name] = {"learning_rates": list(config.learning_rates), "final_train_loss": final.tolist()}
  momo, sgdm = np.asarray(results["momo"]["final_train_loss"]), np.asarray(results["sgdm"]["final_train_loss"])
  worst_momo, worst_sgdm = float(np.max(momo)), float(np.max(sgdm))
  near_best = int(np.sum(momo <= 1.5 * np.min(momo)))
  passed = worst_momo <= 0.5 * worst_sgdm and near_best >= 4
  results["claim"] = {"passed": bool(passed), "statement": CLAIM, "momo_worst_loss": worst_momo,
                      "sgdm_worst_loss": worst_sgdm if np.isfinite(worst_sgdm) else "inf",
                      "momo_lrs_within_1.5x_of_best": near_best}
  return results
