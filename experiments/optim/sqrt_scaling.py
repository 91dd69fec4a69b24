"""Square-root scaling rule for Adam (Malladi et al., 2022, arXiv:2205.10287), catalogue [473].

Adam on a digits MLP at a base batch size, then at ``kappa`` times the batch for the same number of epochs with
three ways of adapting the hyperparameters: the square-root rule (``paperlab.optim.adam_sqrt_scaling``), the
linear rule (lr * kappa, betas unchanged) and no change. The rule that keeps the SDE unchanged should keep the
final training loss closest to the base run's.

The catalogue's setting (base batch 16, lr 1e-3, beta2 0.999, eps 1e-8, kappa in {4, 16}, the claim at kappa = 16,
mean relative error over 3 seeds) except beta1, listed in DEVIATIONS: the rule maps 1 - beta1 = 0.1 to 1.6 at
kappa = 16, which is no momentum coefficient (``adam_sqrt_scaling`` raises), so beta1 is 0.98 (0.68 after scaling).
The catalogue leaves the number of epochs open: 10. Control: the claim with the unchanged hyperparameters in the
square-root rule's place must fail.

Measured (seeds 0-2): base final training loss 0.047. kappa = 16: relative error sqrt 1.72 +- 0.09, linear
0.79 +- 0.03, none 17.1 +- 1.5 (the sqrt rule undertrains: loss 0.128 vs 0.047; the linear rule overshoots to
0.010); kappa = 4: sqrt 0.44, linear 0.71, none 2.56. Not reproduced: at kappa = 16 the linear rule is closer. The
previous record passed only at base batch 1 and lr 3e-4 with 2 epochs (chosen after batch 2-8 and lr 1e-3 failed),
a setting the catalogue does not give; explore it with the command below.

    paperlab run experiments/optim/sqrt_scaling.py --config.base_batch_size=1 --config.optim.learning_rate=3e-4

CI scale (CI_CONFIG): 3 epochs, kappa = 16 only; at it: relative error sqrt 2.15, linear 0.37, none 6.92 (seeds
0-2; not reproduced, as the record), about 38 CPU-s on a loaded 2-core machine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, papers, train
from paperlab.models import MLP
from paperlab.optim import adam_sqrt_scaling

PAPER_ID = 473
CLAIM = papers.get(PAPER_ID).claim
DEVIATIONS = (
    "beta1 = 0.98 instead of the catalogue's 0.9: the square-root rule scales 1 - beta1 by kappa, and at kappa = 16 "
    "0.1 becomes 1.6, so beta1 = 0.9 has no scaled value (1 - 16 x 0.02 = 0.68 is defined); beta2, lr, eps, the "
    "base batch of 16 and kappa in {4, 16} are the catalogue's.",
)
CI_CONFIG = {"epochs": 3, "kappas": "16"}  # the claim's kappa only: 4 compiled programs instead of 7


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (64,)
  c.base_batch_size = 16
  c.kappas = "4,16"
  c.claim_kappa = 16
  c.epochs = 10
  # beta1 = 0.9 cannot be scaled by 16 (1 - beta1 would exceed 1): a listed deviation.
  c.optim = ml_collections.ConfigDict({"learning_rate": 1e-3, "b1": 0.98, "b2": 0.999, "eps": 1e-8})
  c.scale = 1  # multiplies the epochs
  return c


def _final_losses(ds, widths, batch_size, num_steps, hparams, seeds, seed=0):
  optimizer = optax.adam(**hparams)
  graphdef, init = train.make_init(lambda rngs: MLP(64, widths, 10, rngs=rngs), optimizer)
  step = train.make_train_step(graphdef, train.classification_loss, optimizer)
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))

  @jax.jit
  @jax.vmap
  def trial(key):
    state = init(key)
    state, _ = train.run_steps(step, state, train_data, key, batch_size=batch_size, num_steps=num_steps)
    return train.evaluate(graphdef, state, ds.x_train, ds.y_train)["loss"]

  return np.asarray(trial(jax.random.split(jax.random.key(seed), seeds)))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  n = ds.x_train.shape[0]
  base = dict(config.optim)
  b0 = config.base_batch_size
  epochs = config.epochs * config.scale
  steps0 = epochs * n // b0
  base_loss = _final_losses(ds, tuple(config.widths), b0, steps0, base, config.seeds)
  ctx.log(0, {"kappa": 1, "final_train_loss": base_loss.mean()})
  out = {"base": {"batch_size": b0, "num_steps": steps0, "final_train_loss": base_loss.tolist()}}
  kappas = [int(k) for k in str(config.kappas).split(",")]
  for kappa in kappas:
    rules = {"sqrt": adam_sqrt_scaling(kappa, **base),
             "linear": {**base, "learning_rate": base["learning_rate"] * kappa},
             "none": base}
    steps = max(1, steps0 // kappa)
    row = {}
    for name, h in rules.items():
      loss = _final_losses(ds, tuple(config.widths), b0 * kappa, steps, h, config.seeds)
      per_seed = np.abs(loss - base_loss) / base_loss
      err = float(np.mean(per_seed))
      row[name] = {"final_train_loss": loss.tolist(), "relative_error": err, "hparams": h,
                   "relative_error_per_seed": per_seed.tolist(), "relative_error_std": float(np.std(per_seed))}
      ctx.log(kappa, {"kappa": kappa, "rule": name, "final_train_loss": loss.mean(), "relative_error": err})
    out[f"kappa_{kappa}"] = row
    ctx.print(f"kappa={kappa:3d} " + "  ".join(f"{k}: err {v['relative_error']:.3f}" for k, v in row.items()))
  k = out[f"kappa_{config.claim_kappa}"]
  err = {name: k[name]["relative_error"] for name in k}
  claim = lambda method: err[method] <= 0.5 * err["linear"] and err[method] <= 0.5 * err["none"]
  holds, control_passes = claim("sqrt"), claim("none")   # control: the unchanged hyperparameters as the rule
  out["claim"] = {"passed": bool(holds and not control_passes), "holds": bool(holds),
                  "control_passes": bool(control_passes), "statement": CLAIM, "kappa": config.claim_kappa,
                  "err_sqrt": err["sqrt"], "err_linear": err["linear"], "err_none": err["none"],
                  "base_final_loss": float(base_loss.mean())}
  return out
