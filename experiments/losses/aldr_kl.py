"""Label-distributionally robust losses (Zhu et al., 2023): ALDR-KL beats cross-entropy under label noise.

Digits with 40% of the *training* labels flipped uniformly to another class; an MLP 64-256-10 trained full-batch
with Adam long enough for cross-entropy to memorise the noise; accuracy on clean test labels. As in the official
code, ALDR-KL sees the logits divided by their mean absolute value (so the network cannot escape the loss's
robust regime by scaling its logits), with lambda_0 = 10, alpha = 2 and margin 0.1 (the official script's values).
That normalisation matters: the optional arm "aldr_kl_raw" (raw logits, lambda_0 = 1) memorises the noise like CE
(seed 0: 65.2% vs CE 67.9%, against 94.3% with normalised logits).
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import paperlab.losses as pl
from paperlab import data, train

PAPER_ID = 94
CLAIM = ("With 40% symmetric label noise on digits, ALDR-KL reaches a clean-test accuracy at least 3 points above "
         "cross-entropy.")


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.noise_rate = 0.4
  config.num_seeds = 2
  config.num_steps = 300  # full-batch Adam steps (= epochs)
  config.width = 256
  config.learning_rate = 3e-3
  config.lam0 = 10.0
  config.alpha = 2.0
  config.margin = 0.1
  config.arms = ("ce", "aldr_kl")  # also available: "aldr_kl_raw" (unnormalised logits, lambda_0 = 1)
  config.margin_points = 3.0
  config.seed = 0
  return config


def _losses(config):
  def aldr(z, y):
    z = z / (jnp.mean(jnp.abs(z), axis=-1, keepdims=True) + 1e-12)
    return pl.aldr_kl_loss_with_integer_labels(z, y, lam0=config.lam0, alpha=config.alpha, margin=config.margin)

  def aldr_raw(z, y):
    return pl.aldr_kl_loss_with_integer_labels(z, y, lam0=1.0, alpha=config.alpha, margin=config.margin)

  return {"ce": optax.softmax_cross_entropy_with_integer_labels, "aldr_kl": aldr, "aldr_kl_raw": aldr_raw}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  start = time.time()
  ds = data.with_label_noise(data.digits(seed=config.seed), rate=config.noise_rate, kind="symmetric",
                             seed=config.seed)
  losses_by_name = _losses(config)
  results = {}
  arms = train.compare_losses({n: losses_by_name[n] for n in config.arms}, ds, widths=(config.width,),
                              learning_rate=config.learning_rate, num_steps=config.num_steps,
                              num_seeds=config.num_seeds, seed=config.seed)
  for name, (acc, losses) in arms.items():
    results[name] = {"test_accuracy_mean": float(acc.mean()), "test_accuracy_per_seed": acc.tolist()}
    ctx.log_curve(f"{name}/train_loss", np.asarray(losses).mean(0), every=max(config.num_steps // 5, 1))
    ctx.print(f"{name}: clean test accuracy {acc.mean():.4f} (seeds {np.round(acc, 4).tolist()})")
  ce, aldr = results["ce"]["test_accuracy_mean"], results["aldr_kl"]["test_accuracy_mean"]
  passed = aldr >= ce + config.margin_points / 100.0
  return {
      "claim": {"passed": bool(passed), "statement": CLAIM, "ce_accuracy": ce, "aldr_kl_accuracy": aldr,
                "gain_points": 100.0 * (aldr - ce)},
      "losses": results,
      "seconds": time.time() - start,
  }


if __name__ == "__main__":
  import tempfile

  from paperlab.runner import Context

  print(run(get_config(), Context(tempfile.mkdtemp()))["claim"])
