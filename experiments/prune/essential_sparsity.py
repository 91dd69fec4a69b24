"""The emergence of essential sparsity (Jaiswal et al., 2023, arXiv:2306.03805), catalogue [64].

DIGITS-MLP (64-128-128-10, ReLU, Adam 1e-3, batch 64, 20 epochs, split 70/15/15, seeds 0-2) pre-trained dense, then
pruned one-shot *without retraining* over s in {0, 0.1, ..., 0.9, 0.95}:

* ``magnitude``: global magnitude masks (:func:`paperlab.prune.sparsity_sweep`), and the 2:4 pattern
  (:func:`paperlab.prune.nm_masks`, largest 2 of every 4 along the input axis);
* ``random`` (the control): uniformly random masks per kernel at each sparsity, and random 2-of-4 masks.

Essential sparsity ``s*`` = :func:`paperlab.prune.find_knee` (largest s whose accuracy stays within 1pt of the dense
one) of the seed-mean test-accuracy curve.

Claim (catalogue): a knee exists -- drop <= 1pt up to s*, then >= 5pt within +0.2 sparsity (we also require s* >= 0.1,
else "up to s*" is empty) -- and 2:4 at 50% is within 2pt of unstructured at 50%. Control: the same claim on the
random arm. Reported only: s* at widths 64 and 128 ("larger model => higher s*").

Measured (seeds 0-2, 270 test images, seed-mean test accuracy): magnitude curve 0:0.964 0.1:0.964 0.2:0.963
0.3:0.960 0.4:0.962 0.5:0.955 0.6:0.947 0.7:0.927 0.8:0.874 0.9:0.533 0.95:0.357, so s* = 0.5 (-0.9pt) but the drop
within +0.2 is only 3.7pt (at 0.7; 9.0pt at 0.8): the knee part does not reproduce as stated (needs >= 5pt). 2:4
0.9591 vs unstructured 50% 0.9554 (+0.4pt) holds. Random pruning (control): s* = 0, fails. Width trend (reported):
s* = 0.5 at both 64 and 128.
CI scale (CI_CONFIG): sparsities {0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.9}, width trend at 128 (reported only); at it: the
record's curve at those points (0.964 0.964 0.960 0.955 0.947 0.927 0.533), s* = 0.5 but -3.7pt by 0.7: not
reproduced, as the record; 2:4 0.9591 vs 0.9554 holds; random s* = 0 (seeds 0-2); 26 CPU-s in pytest at load ~20
(the full sweep: 35 CPU-s in pytest at load ~60).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import papers, prune
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

substrate = load_experiment(pathlib.Path(__file__).with_name("digits_mlp.py"))

PAPER_ID = 64
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "DIGITS-MLP only: the CHAR-LM sweep is left out to keep the reproduction within the CI budget",
    "the width trend is reported at widths 64 and 128 instead of 64/256/1024 (CI budget); reporting only",
    "the knee is also required to be non-trivial (s* >= 0.1): with s* = 0 'drop <= 1pt up to s*' says nothing",
    "DIGITS-MLP width 128-128 pre-trained 20 epochs (not fixed by the catalogue)",
)
# the test suite's scale (paperlab reproduce 64 --ci): 7 of the 11 sparsities (every point the verdict reads at s* =
# 0.5 is kept) and the reported-only width trend at the main width, whose pre-training is then the same program
CI_CONFIG = {"sparsities": (0.0, 0.1, 0.3, 0.5, 0.6, 0.7, 0.9), "trend_width": 128}
ARMS = ("magnitude", "random")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.trend_width = 64
  c.epochs = 20
  c.learning_rate = 1e-3
  c.sparsities = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
  c.tol = 0.01
  return c


def knee_holds(sparsities, curve, tol: float = 0.01) -> tuple[bool, float]:
  """``(claim part 1, s*)`` on a (sparsity -> accuracy) curve: s* = find_knee >= 0.1 and some point within
  ``(s*, s* + 0.2]`` lies >= 5pt below the dense accuracy."""
  pts = list(zip(sparsities, curve))
  knee = prune.find_knee(pts, tol=tol)
  ref = pts[0][1]
  dropped = any(knee < s <= knee + 0.2 + 1e-9 and a <= ref - 0.05 for s, a in pts)
  return bool(knee >= 0.1 and dropped), float(knee)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  (x, y), (xv, yv), (xt, yt) = substrate.splits()
  seeds = list(range(config.seeds))
  sparsities = [float(s) for s in config.sparsities]
  acc = jax.jit(substrate.accuracy)

  def sweep(arm, layers, seed):
    if arm == "magnitude":
      curve = prune.sparsity_sweep(layers, lambda p: acc(p, xt, yt), sparsities)
      val50 = float(acc(prune.apply_masks(layers, prune.magnitude_masks(layers, 0.5)), xv, yv))
      nm = prune.nm_masks(layers, 2, 4)
    else:
      key = jax.random.key(seed)
      curve = [(s, float(acc(prune.apply_masks(layers, prune.random_masks(jax.random.fold_in(key, i), layers,
                                                                            1.0 - s)), xt, yt)))
               for i, s in enumerate(sparsities)]
      val50 = float(acc(prune.apply_masks(layers, prune.random_masks(jax.random.fold_in(key, 99), layers, 0.5)),
                        xv, yv))
      noise = jax.tree.map(lambda a: jax.random.uniform(jax.random.fold_in(key, 7), a.shape), layers)
      nm = prune.nm_masks(noise, 2, 4)
    out = {f"acc_s{round(s * 100):02d}": a for s, a in curve}
    out["acc_nm24"] = float(acc(prune.apply_masks(layers, nm), xt, yt))
    out["val_50"] = val50
    return out

  def trained(widths):
    return substrate.pretrain(seeds, widths, x, y, epochs=config.epochs, learning_rate=config.learning_rate)

  dense = trained(config.widths)

  def fit(arm, hparams, seeds_):
    del hparams
    rows = [sweep(arm.name, jax.tree.map(lambda a, i=i: a[i], dense), int(s)) for i, s in enumerate(seeds_)]
    out = {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
    ctx.log(0, {f"{arm.name}/{k}": float(v.mean()) for k, v in out.items()})
    return out

  comparison = protocol.compare([protocol.Arm(a) for a in ARMS], seeds, fit, validate=lambda out: out["val_50"],
                                test=lambda out: {k: v for k, v in out.items() if k != "val_50"})
  keys = [f"acc_s{round(s * 100):02d}" for s in sparsities]

  def claim(m, b):
    del b
    ok, _ = knee_holds(sparsities, [m[k] for k in keys], config.tol)
    return ok and abs(m["acc_nm24"] - m["acc_s50"]) <= 0.02

  verdict = comparison.judge(claim, method="magnitude", baseline="random")
  knees = {a: knee_holds(sparsities, [comparison[a].mean(k) for k in keys], config.tol)[1] for a in ARMS}
  for a in ARMS:
    curve = " ".join(f"{s:g}:{comparison[a].mean(k):.3f}" for s, k in zip(sparsities, keys))
    ctx.print(f"{a}: s* = {knees[a]:g}; 2:4 {comparison[a].mean('acc_nm24'):.4f} vs 50% "
              f"{comparison[a].mean('acc_s50'):.4f}; curve {curve}")
  # reporting only: s* at a smaller width
  small = trained((config.trend_width, config.trend_width))
  trend_curve = np.mean([[a for _, a in prune.sparsity_sweep(jax.tree.map(lambda a, i=i: a[i], small),
                                                             lambda p: acc(p, xt, yt), sparsities)]
                         for i in range(len(seeds))], axis=0)
  trend = {int(config.trend_width): knee_holds(sparsities, trend_curve.tolist(), config.tol)[1],
           int(config.widths[0]): knees["magnitude"]}
  ctx.print(f"essential sparsity by width (reported only): {trend}")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "essential_sparsity": knees,
                      "nm24_minus_unstructured50": {a: comparison[a].mean("acc_nm24") - comparison[a].mean("acc_s50")
                                                    for a in ARMS},
                      "curve": {a: {k: comparison[a].mean(k) for k in keys} for a in ARMS},
                      "width_trend": trend}
  return results
