"""Normalized loss functions under label noise (Ma et al., 2020, arXiv:2006.13554), catalogue [198].

The catalogue's setting, NOISY-DIGITS (:mod:`paperlab.runner.noisy_digits`): digits with 40% of the *training*
labels flipped uniformly to another class, an MLP 64-256-10 trained by 300 full-batch Adam steps (epochs), long
enough for cross-entropy to memorise the noise; accuracy on the clean test labels. Through the shared protocol:
CE and NCE+RCE (alpha=beta=1) each pick their Adam learning rate from the same grid (1e-4, 3e-4, 1e-3, 3e-3) on
noisy-validation accuracy (20% of the noisy training split), 3 seeds, the test split read once per arm.
Control: CE passed as the method must fail the claim. Optional arms: "nfl_rce" (NFL gamma=0.5 + RCE), "gce".

Measured (seeds 0-2): NCE+RCE 0.917 +- 0.003 (lr 3e-3) vs CE 0.887 +- 0.010 (lr 1e-4), +3.0 points < 5: the claim
does not reproduce once CE's learning rate is tuned on validation like the method's. CE's validation accuracy falls
with the learning rate (0.545/0.542/0.475/0.449 over the grid): a small rate is early stopping, and CE does not get
to memorise the noise in 300 steps. With the grid (1e-3, 3e-3, 1e-2) (CE at 1e-3, where it memorises) CE reaches
0.750 and the gain is +16.7 points; the earlier record (2 seeds, one fixed lr 3e-3 for both) passed that way.

CI scale (CI_CONFIG): the learning-rate grid cut to (1e-4, 3e-3), the points the arms chose at the full scale (CE
1e-4, NCE+RCE 3e-3), so every choice and number is the record's; at it: NCE+RCE 0.917 vs CE 0.887 (+3.0 points < 5,
seeds 0-2, not reproduced, as the record), about 56 CPU-s (estimated: half the full grid's 111).
"""

from __future__ import annotations

import ml_collections
import optax

import paperlab.losses as pl
from paperlab import papers
from paperlab.runner import noisy_digits

PAPER_ID = 198
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"learning_rates": (1e-4, 3e-3)}  # the grid points the arms chose at the full scale

LOSSES = {
    "ce": optax.softmax_cross_entropy_with_integer_labels,
    "nce_rce": lambda z, y: pl.nce_rce_with_integer_labels(z, y, alpha=1.0, beta=1.0),
    "nfl_rce": lambda z, y: (pl.normalized_focal_loss_with_integer_labels(z, y, gamma=0.5)
                             + pl.reverse_cross_entropy_with_integer_labels(z, y)),
    "gce": lambda z, y: pl.generalized_cross_entropy_with_integer_labels(z, y, q=0.7),
}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.noise_rate = 0.4
  config.seeds = 3
  config.num_steps = 300  # full-batch Adam steps (= epochs)
  config.width = 256
  config.learning_rates = (1e-4, 3e-4, 1e-3, 3e-3)
  config.losses = ("ce", "nce_rce")  # also available: "nfl_rce", "gce"
  config.margin_points = 5.0
  config.seed = 0  # the split and the noise
  return config


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  comparison = noisy_digits.compare_losses({n: LOSSES[n] for n in config.losses}, noise_rate=config.noise_rate,
                                           learning_rates=config.learning_rates, seeds=range(config.seeds),
                                           width=config.width, num_steps=config.num_steps, seed=config.seed, ctx=ctx)
  for name, arm in comparison.arms.items():
    ctx.print(f"{name} (lr {arm.chosen['lr']}): clean test accuracy {arm.mean('test_accuracy'):.4f} "
              f"+- {arm.std('test_accuracy'):.4f}")
  verdict = comparison.judge(lambda m, b: m["test_accuracy"] >= b["test_accuracy"] + config.margin_points / 100,
                             method="nce_rce", baseline="ce")
  ce, apl = comparison["ce"].mean("test_accuracy"), comparison["nce_rce"].mean("test_accuracy")
  return {
      **{name: arm.test["test_accuracy"].tolist() for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
      "claim": {**verdict, "statement": CLAIM, "ce_accuracy": ce, "nce_rce_accuracy": apl,
                "gain_points": 100.0 * (apl - ce)},
  }
