"""MoMo's learning-rate robustness (Schaipp et al., 2024, arXiv:2305.07583), catalogue [176].

Softmax regression on digits (the loss is non-negative, so f_* = 0), trained with SGD-momentum and with MoMo at
the same five learning rates; all (lr, seed) trials of one optimizer run as one vmapped program. MoMo caps the
step at the Polyak step ``(f̄ - f_*)/||d||²``, so its final loss should barely depend on the learning rate,
while SGD-M spikes or diverges once the learning rate is too large.

The catalogue's setting (30 epochs, the five learning rates, SGD-M with beta 0.9), seeds 0-2, through
:mod:`paperlab.runner.protocol`: the learning rate is the claim's variable, not a tuning knob, so each arm is one
point that trains all five learning rates; every (lr, seed) final train loss is kept and the claim is judged on the
seed mean at each learning rate. Control: SGD-M in MoMo's place must fail the claim (its worst loss is not
<= 0.5x itself).

Measured (seeds 0-2; seed-mean final train loss at lr 0.1/0.3/1/3/10): MoMo 0.0998/0.0505/0.0211/0.0081/0.0028,
SGD-M 0.0197/0.0063/0.0007/1.8e-5/9e-7 (seed spread below 3% of each mean). Digits softmax regression is separable
and SGD-M never spikes or diverges, while MoMo's Polyak cap with f_* = 0 is conservative: worst MoMo 0.0998 vs worst
SGD-M 0.0197 (claim <= 0.5x), MoMo within 1.5x of its best at 1 of 5 lrs (claim >= 4): not reproduced.

    paperlab run experiments/optim/momo.py --config.epochs=60
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, optim, papers, train
from paperlab.models import MLP
from paperlab.runner import protocol

PAPER_ID = 176
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.learning_rates = (0.1, 0.3, 1.0, 3.0, 10.0)
  c.epochs = 30
  c.batch_size = 64
  c.beta = 0.9
  c.scale = 1  # multiplies the epochs
  return c


def _final_losses(ds, config, make_optimizer, seeds):
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
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  per_lr = jax.vmap(lambda lr: jax.vmap(lambda k: trial(lr, k))(keys))
  final, curves = jax.jit(per_lr)(lrs)
  return np.asarray(final), np.asarray(curves).mean(axis=1)  # (lr, seed), (lr, step)


def _claim(m, b, lrs):
  """MoMo's (``m``) and SGD-M's (``b``) seed-mean final losses per lr -> the catalogue's claim."""
  momo, sgdm = (np.asarray([d[f"final_train_loss_lr{lr}"] for lr in lrs]) for d in (m, b))
  return bool(np.max(momo) <= 0.5 * np.max(sgdm) and np.sum(momo <= 1.5 * np.min(momo)) >= 4)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  lrs = tuple(config.learning_rates)
  makers = {"sgdm": lambda lr: optax.sgd(lr, momentum=config.beta),
            "momo": lambda lr: optim.momo(lr, beta=config.beta)}

  def fit(arm, hparams, seeds):
    final, curves = _final_losses(ds, config, makers[arm.name], seeds)
    for i, lr in enumerate(lrs):
      ctx.log(i, {"optimizer": arm.name, "learning_rate": lr, "final_train_loss": float(final[i].mean())})
    return {f"final_train_loss_lr{lr}": final[i] for i, lr in enumerate(lrs)}

  comparison = protocol.compare([protocol.Arm("sgdm"), protocol.Arm("momo")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # the lrs are the claim's variable
                                test=lambda out: out)
  verdict = comparison.judge(lambda m, b: _claim(m, b, lrs), method="momo", baseline="sgdm")
  per_lr = {name: [comparison[name].mean(f"final_train_loss_lr{lr}") for lr in lrs] for name in ("sgdm", "momo")}
  momo = np.asarray(per_lr["momo"])
  worst_momo, worst_sgdm = float(np.max(momo)), float(np.max(per_lr["sgdm"]))
  ctx.print(f"seed-mean final train loss per lr {list(lrs)}: momo {np.round(momo, 5).tolist()}, "
            f"sgdm {np.round(per_lr['sgdm'], 7).tolist()}")
  results = {name: {"learning_rates": list(lrs), "final_train_loss": per_lr[name],
                    "final_train_loss_per_seed": [comparison[name].test[f"final_train_loss_lr{lr}"].tolist()
                                                  for lr in lrs]} for name in ("sgdm", "momo")}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "momo_worst_loss": worst_momo,
                      "sgdm_worst_loss": worst_sgdm if np.isfinite(worst_sgdm) else "inf",
                      "momo_lrs_within_1.5x_of_best": int(np.sum(momo <= 1.5 * np.min(momo)))}
  return results
