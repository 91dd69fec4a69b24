"""Label-distributionally robust losses (Zhu et al., 2023), catalogue [94]: ALDR-KL vs cross-entropy under label noise.

The catalogue's setting on NOISY-DIGITS (:mod:`paperlab.runner.noisy_digits`): digits with 40% of the *training*
labels flipped uniformly to another class, an MLP 64-256-10, 300 full-batch Adam epochs; accuracy on the clean test
labels. As in the official code, ALDR-KL sees the logits divided by their mean absolute value (so the network cannot
escape the loss's robust regime by scaling its logits), with lambda_0 = 10, alpha = 2 and margin 0.1 (the official
script's values). Compared through the shared protocol: CE and ALDR-KL each pick their Adam learning rate from the
same grid (1e-4, 3e-4, 1e-3, 3e-3) on noisy-validation accuracy, 3 seeds, the test split read once per arm.
Control: CE passed as the method must fail the claim. Optional arm "aldr_kl_raw" (raw logits, lambda_0 = 1).

Measured (seeds 0-2): clean test accuracy ALDR-KL 0.938 +- 0.007 (lr 1e-3) vs CE 0.887 +- 0.010 (lr 1e-4), +5.1
points >= 3: the catalogue's claim reproduces with CE's learning rate tuned like the method's (the earlier record:
2 seeds, one fixed lr 3e-3 for both).

CI scale (CI_CONFIG): the learning-rate grid cut to (1e-4, 1e-3), the points the arms chose at the full scale (CE
1e-4, ALDR-KL 1e-3), so every choice and number is the record's; at it: ALDR-KL 0.938 vs CE 0.887 (+5.1 points, seeds
0-2, reproduced), about 56 CPU-s (estimated: half the full grid's 111).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

import paperlab.losses as pl
from paperlab import papers
from paperlab.runner import noisy_digits

PAPER_ID = 94
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"learning_rates": (1e-4, 1e-3)}  # the grid points the arms chose at the full scale


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.noise_rate = 0.4
  config.seeds = 3
  config.num_steps = 300  # full-batch Adam steps (= epochs)
  config.width = 256
  config.learning_rates = (1e-4, 3e-4, 1e-3, 3e-3)
  config.lam0 = 10.0
  config.alpha = 2.0
  config.margin = 0.1
  config.arms = ("ce", "aldr_kl")  # also available: "aldr_kl_raw" (unnormalised logits, lambda_0 = 1)
  config.margin_points = 3.0
  config.seed = 0  # the split and the noise
  return config


def _losses(config):
  def aldr(z, y):
    z = z / (jnp.mean(jnp.abs(z), axis=-1, keepdims=True) + 1e-12)
    return pl.aldr_kl_loss_with_integer_labels(z, y, lam0=config.lam0, alpha=config.alpha, margin=config.margin)

  def aldr_raw(z, y):
    return pl.aldr_kl_loss_with_integer_labels(z, y, lam0=1.0, alpha=config.alpha, margin=config.margin)

  return {"ce": optax.softmax_cross_entropy_with_integer_labels, "aldr_kl": aldr, "aldr_kl_raw": aldr_raw}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  losses = _losses(config)
  comparison = noisy_digits.compare_losses({n: losses[n] for n in config.arms}, noise_rate=config.noise_rate,
                                           learning_rates=config.learning_rates, seeds=range(config.seeds),
                                           width=config.width, num_steps=config.num_steps, seed=config.seed, ctx=ctx)
  for name, arm in comparison.arms.items():
    ctx.print(f"{name} (lr {arm.chosen['lr']}): clean test accuracy {arm.mean('test_accuracy'):.4f} "
              f"+- {arm.std('test_accuracy'):.4f}")
  verdict = comparison.judge(lambda m, b: m["test_accuracy"] >= b["test_accuracy"] + config.margin_points / 100,
                             method="aldr_kl", baseline="ce")
  ce, aldr = comparison["ce"].mean("test_accuracy"), comparison["aldr_kl"].mean("test_accuracy")
  return {
      **{name: arm.test["test_accuracy"].tolist() for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
      "claim": {**verdict, "statement": CLAIM, "ce_accuracy": ce, "aldr_kl_accuracy": aldr,
                "gain_points": 100.0 * (aldr - ce)},
  }
