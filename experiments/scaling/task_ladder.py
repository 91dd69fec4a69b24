"""Two-step task scaling law from a model ladder (Bhagia et al., 2024, arXiv:2412.04403), catalogue [156].

The catalogue's setting on the shared DIGITS-MLP ladder (experiments/scaling/digits_ladder.py): MLPs 64-h-h-10 at 4
widths h in {8, 16, 32, 64} x 3 training-set sizes (25/50/100% of the digits fit split; 400 Adam steps at 3e-3) are
the ladder; the "task" is the held-out test split, its task loss the test cross-entropy and its metric the test
accuracy. ``paperlab.scaling.fit_task_ladder`` fits step 1 ``L(N, D) = E + A/N**alpha + B/D**beta``
(``fit_chinchilla``, 5 starts: every 900th of the paper's grid) and step 2 ``Acc(L) = a/(1 + exp(-k(L - L0))) + b``
on the 12 ladder runs of each seed; ``predict_task`` predicts the accuracy of the larger model h = 128 trained on the
whole fit split. Claim: within 3 points absolute, and the two-step error <= the direct one.

Protocol: arms ``two_step`` (the method) and ``direct`` (the baseline: a power law fitted directly to accuracy, the
same Chinchilla form on the error rate 1 - Acc, by the same fitter and starts), one point each, 3 seeds (each seed
its own ladder, fits and target). The judge also runs the claim with the direct arm in the method's place (the
control).

Measured (seeds 0-2): h = 128 test accuracy 0.960; two-step prediction 0.949, error 1.15 points (per seed
1.71/1.37/0.38) -- within 3 points -- but the direct power law on the error rate is closer, 0.86 points
(1.91/0.45/0.22), and meets the 3-point bound itself (the control passes: vacuous). Not reproduced.

CI scale (CI_CONFIG): 3 fit starts (every 1500th) instead of 5; at it: the same fits to 1e-8, two-step error 1.15
points (1.71/1.37/0.38), direct 0.86 (1.91/0.45/0.22), vacuous: not reproduced, seeds 0-2, 29 CPU-s (ladder included).
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from paperlab import papers, scaling
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

substrate = load_experiment(pathlib.Path(__file__).with_name("digits_ladder.py"))

PAPER_ID = 156
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"grid_stride": 1500}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.num_ladder_widths = 4
  c.grid_stride = 900  # every 900th start of the paper's 4500 (5 starts; 10 starts gave the same seed-0 fits)
  c.max_abs_err = 0.03
  return c


def _one_seed(config, lad, s: int, arm: str) -> dict:
  k = config.num_ladder_widths
  N = np.repeat(lad["num_params"][:k], len(lad["data_sizes"]))
  D = np.tile(lad["data_sizes"], k)
  loss, acc = lad["test_loss"][s, :k].ravel(), 1.0 - lad["test_err"][s, :k].ravel()
  target = 1.0 - float(lad["test_err"][s, -1, -1])
  n_big, d_big = lad["num_params"][-1], lad["data_sizes"][-1]
  grid = scaling.CHINCHILLA_INIT_GRID[::config.grid_stride]
  if arm == "two_step":
    fits = scaling.fit_task_ladder(N, D, loss, acc, init_grid=grid)
    pred = float(scaling.predict_task(fits, n_big, d_big))
  else:
    fit = scaling.fit_chinchilla(N, D, 1.0 - acc, init_grid=grid)
    p = scaling.ChinchillaParams(*(fit[k_] for k_ in ("E", "A", "B", "alpha", "beta")))
    pred = 1.0 - float(scaling.chinchilla_loss(n_big, d_big, p))
  return {"predicted_acc": pred, "actual_acc": target, "abs_err": abs(pred - target)}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  lad = substrate.ladder(seeds=config.seeds)

  def fit(arm, hparams, seeds):
    del hparams
    rows = [_one_seed(config, lad, int(s), arm.name) for s in seeds]
    for s, r in zip(seeds, rows):
      ctx.log(int(s), {f"{arm.name}/{k}": v for k, v in r.items()})
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}

  comparison = protocol.compare([protocol.Arm("two_step"), protocol.Arm("direct")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds), test=lambda out: out)
  verdict = comparison.judge(lambda m, b: m["abs_err"] < config.max_abs_err and m["abs_err"] <= b["abs_err"],
                             method="two_step", baseline="direct")
  m, b = comparison["two_step"].means(), comparison["direct"].means()
  ctx.print(f"two-step: predicted acc {m['predicted_acc']:.4f} vs actual {m['actual_acc']:.4f} (abs err "
            f"{m['abs_err']:.4f}); direct: {b['predicted_acc']:.4f} (abs err {b['abs_err']:.4f})")
  results = {name: {k: np.asarray(v).tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, **{k: float(v) for k, v in m.items()},
                      "abs_err_per_seed": comparison["two_step"].test["abs_err"].tolist(),
                      "direct_abs_err": b["abs_err"],
                      "direct_abs_err_per_seed": comparison["direct"].test["abs_err"].tolist()}
  return results
