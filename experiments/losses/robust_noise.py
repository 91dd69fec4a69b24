"""Normalized loss functions under label noise (Ma et al., 2020): NCE+RCE beats CE with 40% symmetric noise.

Digits with 40% of the *training* labels flipped uniformly to another class, an MLP 64-256-10 trained full-batch
with Adam long enough for cross-entropy to memorise the noise; accuracy is measured on clean test labels.
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np
import optax

import paperlab.losses as pl
from paperlab import data, train

PAPER_ID = 198
CLAIM = ("With 40% symmetric label noise on digits, NCE+RCE (alpha=beta=1) reaches a clean-test accuracy at least "
         "5 points above cross-entropy.")

LOSSES = {
    "ce": lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y),
    "nce_rce": lambda z, y: pl.nce_rce_with_integer_labels(z, y, alpha=1.0, beta=1.0),
    "nfl_rce": lambda z, y: (pl.normalized_focal_loss_with_integer_labels(z, y, gamma=0.5)
                             + pl.reverse_cross_entropy_with_integer_labels(z, y)),
    "gce": lambda z, y: pl.generalized_cross_entropy_with_integer_labels(z, y, q=0.7),
}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.noise_rate = 0.4
  config.num_seeds = 2
  config.num_steps = 300  # full-batch Adam steps (= epochs)
  config.width = 256
  config.learning_rate = 3e-3
  config.losses = ("ce", "nce_rce")  # also available: "nfl_rce", "gce"
  config.margin_points = 5.0
  config.seed = 0
  return config


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  start = time.time()
  ds = data.with_label_noise(data.digits(seed=config.seed), rate=config.noise_rate, kind="symmetric",
                             seed=config.seed)
  results = {}
  arms = train.compare_losses({n: LOSSES[n] for n in config.losses}, ds, widths=(config.width,),
                              learning_rate=config.learning_rate, num_steps=config.num_steps,
                              num_seeds=config.num_seeds, seed=config.seed)
  for name, (acc, losses) in arms.items():
    results[name] = {"test_accuracy_mean": float(acc.mean()), "test_accuracy_per_seed": acc.tolist()}
    ctx.log_curve(f"{name}/train_loss", np.asarray(losses).mean(0), every=max(config.num_steps // 5, 1))
    ctx.print(f"{name}: clean test accuracy {acc.mean():.4f} (seeds {np.round(acc, 4).tolist()})")
  ce, apl = results["ce"]["test_accuracy_mean"], results["nce_rce"]["test_accuracy_mean"]
  passed = apl >= ce + config.margin_points / 100.0
  return {
      "claim": {"passed": bool(passed), "statement": CLAIM, "ce_accuracy": ce, "nce_rce_accuracy": apl,
                "gain_points": 100.0 * (apl - ce)},
      "losses": results,
      "seconds": time.time() - start,
  }


if __name__ == "__main__":
  import tempfile

  from paperlab.runner import Context

  print(run(get_config(), Context(tempfile.mkdtemp()))["claim"])
