"""Scaling with over-training and loss -> downstream error (Gadre et al., 2024, arXiv:2403.08540), catalogue [244].

The catalogue's setting, two parts per seed:
(1) synthetic runs from Chinchilla with alpha = beta = 0.3 (E 1.69, A 406.4, B 410.7) at token multipliers
    M = D / N in {20, 40, 80, 160}, 8 compute budgets C = 6 N D log-spaced in [1e17, 1e21] per M, with 1%
    log-normal noise. ``paperlab.scaling.fit_overtrained`` fits ``L(C, M) = E + (a M**eta + b M**-eta) C**-eta``
    on the M <= 40 runs (12 starts: every 9th of its default grid) and predicts the M = 160 runs; the error is the
    mean relative error against the law's noise-free losses at M = 160 (the noise is not predictable). Claim: < 1%.
(2) the shared DIGITS-MLP ladder (experiments/scaling/digits_ladder.py: 5 widths x 3 training-set sizes, 400 Adam
    steps): ``paperlab.scaling.fit_loss_to_error`` fits ``Err(L) = epsilon - k exp(-gamma L)`` from each run's
    validation loss to its test top-1 error (15 runs per seed). Claim: R^2 of the fit on the errors > 0.9.

Protocol: arms ``overtrained`` (the method) and ``ignores_m`` (the control: a law with no M, ``L(C) = E + a C**-b``
by ``fit_power_law`` on the same M <= 40 runs; and, for the error, no use of the loss: every run predicted the mean
error, R^2 = 0), one point each, 3 seeds (noise draws; ladder seeds).

Measured (seeds 0-2): (1) M = 160 mean relative error 0.80% (per seed 1.75/0.39/0.28%; 1.30% against the noisy
losses), fitted eta 0.157 (generating 0.15); (2) loss -> error R^2 0.947 (0.953/0.926/0.963): reproduced. The control
misses M = 160 by 7.1% and has R^2 0.
"""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from paperlab import papers, scaling
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

substrate = load_experiment(pathlib.Path(__file__).with_name("digits_ladder.py"))

PAPER_ID = 244
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()

LAW = scaling.ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.3, beta=0.3)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.multipliers = (20.0, 40.0, 80.0, 160.0)
  c.fit_max_multiplier = 40.0
  c.num_budgets = 8
  c.noise = 0.01
  c.grid_stride = 9  # every 9th of fit_overtrained's 108 default starts
  return c


def _synthetic(config, seed: int, arm: str) -> dict:
  rng = np.random.default_rng(seed)
  C = np.tile(np.geomspace(1e17, 1e21, config.num_budgets), len(config.multipliers))
  M = np.repeat(np.asarray(config.multipliers), config.num_budgets)
  clean = np.asarray(scaling.overtrained_loss(C, M, scaling.overtrained_from_chinchilla(LAW)), np.float64)
  L = clean * np.exp(config.noise * rng.standard_normal(C.shape))
  train, held = M <= config.fit_max_multiplier, M == max(config.multipliers)
  if arm == "overtrained":
    grid = scaling.transfer._overtrained_grid()[::config.grid_stride]  # pylint: disable=protected-access
    fit = scaling.fit_overtrained(C[train], M[train], L[train], init_grid=grid)
    pred = np.asarray(scaling.overtrained_loss(C[held], M[held], fit), np.float64)
    extra = {"eta": fit["eta"], "E": fit["E"]}
  else:
    fit = scaling.fit_power_law(C[train], L[train])
    pred = fit["c"] + fit["a"] * C[held] ** -fit["b"]
    extra = {"eta": fit["b"], "E": fit["c"]}
  return {"m160_rel_err": float(np.mean(np.abs(pred / clean[held] - 1))),
          "m160_rel_err_vs_noisy": float(np.mean(np.abs(pred / L[held] - 1))), **extra}


def _loss_to_error(lad, s: int, arm: str) -> dict:
  L, err = lad["val_loss"][s].ravel(), lad["test_err"][s].ravel()
  if arm == "overtrained":
    fit = scaling.fit_loss_to_error(L, err)
    pred = np.asarray(scaling.loss_to_error(L, fit), np.float64)
    extra = {"epsilon": fit["epsilon"], "k": fit["k"], "gamma": fit["gamma"]}
  else:  # the loss is not used: every run is predicted the mean error
    pred = np.full_like(err, err.mean())
    extra = {"epsilon": float(err.mean()), "k": 0.0, "gamma": 0.0}
  r2 = 1.0 - np.sum((err - pred) ** 2) / np.sum((err - err.mean()) ** 2)
  return {"r2": float(r2), **extra}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  lad = substrate.ladder(seeds=config.seeds)

  def fit(arm, hparams, seeds):
    del hparams
    rows = [{**_synthetic(config, int(s), arm.name), **_loss_to_error(lad, int(s), arm.name)} for s in seeds]
    for s, r in zip(seeds, rows):
      ctx.log(int(s), {f"{arm.name}/{k}": v for k, v in r.items()})
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}

  comparison = protocol.compare([protocol.Arm("overtrained"), protocol.Arm("ignores_m")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds), test=lambda out: out)
  verdict = comparison.judge(lambda m, b: m["m160_rel_err"] < 0.01 and m["r2"] > 0.9, method="overtrained",
                             baseline="ignores_m")
  m, b = comparison["overtrained"].means(), comparison["ignores_m"].means()
  ctx.print(f"overtrained: M=160 rel err {m['m160_rel_err']:.4f} (eta {m['eta']:.4f}), loss->error R^2 "
            f"{m['r2']:.3f}; control: {b['m160_rel_err']:.4f}, R^2 {b['r2']:.3f}")
  results = {name: {k: np.asarray(v).tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  parts = {"m160_within_1pct": m["m160_rel_err"] < 0.01, "loss_to_error_r2_above_0.9": m["r2"] > 0.9}
  results["claim"] = {**verdict, "statement": CLAIM, "parts": {k: bool(v) for k, v in parts.items()},
                      **{k: float(v) for k, v in m.items()},
                      "m160_rel_err_per_seed": comparison["overtrained"].test["m160_rel_err"].tolist(),
                      "r2_per_seed": comparison["overtrained"].test["r2"].tolist(), "generating_eta": 0.15}
  return results
