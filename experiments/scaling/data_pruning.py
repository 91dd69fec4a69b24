"""Data pruning: keep hard examples when data are abundant, easy ones when scarce (Sorscher et al., 2022,
arXiv:2206.14486), catalogue [523].

Setting (the catalogue's): the paper's teacher-student perceptron. A teacher ``w_T ~ N(0, I_N)``, N = 200, labels
``y = sign(w_T . x)`` for ``x ~ N(0, I_N)``; ``P = alpha_tot N`` training examples. The difficulty score is the
negative teacher margin ``-|w_T . x| / |w_T|`` (a perfect probe), and ``paperlab.data.prune`` keeps a fraction
f = 20%: the hardest (``keep="hard"``, smallest margin), the easiest, or a random 20%. The student is logistic
regression without intercept (scikit-learn, lbfgs); its test error is the exact generalisation error of a
perceptron on isotropic Gaussian inputs, ``arccos(cos(w, w_T)) / pi``.

Arms: at alpha_tot = 10, ``hard`` (method) vs ``random`` (baseline); at alpha_tot = 1, ``easy`` (method) vs ``hard``
(baseline). Every arm tunes the inverse L2 strength C over the same 6-point grid (1e-2 .. 1e3) on a validation
set of 2000 fresh teacher-labelled examples (0-1 error); the test error is read once at the chosen
C. 3 seeds (teacher, data, random subset per seed). Claim on seed means: err_hard < 0.8 err_rand at alpha_tot = 10 and err_easy < err_hard at
alpha_tot = 1. Controls (protocol): each method replaced by its baseline must fail.

Measured (seeds 0-2): alpha_tot = 10: keep-hard 0.0955 +- 0.031 vs random 0.1749 +- 0.010 (ratio 0.546 < 0.8);
alpha_tot = 1: keep-easy 0.2756 +- 0.004 vs keep-hard 0.4816 +- 0.002 (random 0.3854): reproduced.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np
from sklearn.linear_model import LogisticRegression

from paperlab import data, papers
from paperlab.runner import protocol

PAPER_ID = 523
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.dim = 200
  c.alpha_large = 10.0
  c.alpha_small = 1.0
  c.keep_frac = 0.2
  c.num_val = 2000
  c.c_grid = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
  return c


def _teacher_data(seed: int, dim: int, num: int, num_val: int):
  rng = np.random.default_rng(seed)
  w_t = rng.standard_normal(dim)
  x = rng.standard_normal((num, dim)).astype(np.float32)
  xv = rng.standard_normal((num_val, dim)).astype(np.float32)
  return w_t, x, np.sign(x @ w_t), xv, np.sign(xv @ w_t), rng


def _kept(seed: int, config, alpha: float, keep: str) -> tuple[np.ndarray, np.ndarray]:
  num = int(round(alpha * config.dim))
  w_t, x, y, _, _, rng = _teacher_data(seed, config.dim, num, config.num_val)
  if keep == "random":
    idx = rng.permutation(num)[: math.ceil(config.keep_frac * num)]
  else:
    scores = -np.abs(x @ w_t) / np.linalg.norm(w_t)  # larger = harder (closer to the teacher's boundary)
    idx = np.asarray(data.prune(scores, config.keep_frac, keep=keep))
  return x[idx], y[idx]


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  seeds = np.arange(config.seeds)

  def fit(arm, hparams, seeds_):
    keep, alpha = arm.name.split("@")
    alpha = float(alpha)
    errs, val_errs = [], []
    for s in seeds_:
      w_t, _, _, xv, yv, _ = _teacher_data(int(s), config.dim, int(round(alpha * config.dim)), config.num_val)
      xk, yk = _kept(int(s), config, alpha, keep)
      clf = LogisticRegression(C=hparams["C"], fit_intercept=False, max_iter=5000).fit(xk, yk)
      w = clf.coef_.ravel()
      cos = float(w @ w_t / (np.linalg.norm(w) * np.linalg.norm(w_t) + 1e-30))
      errs.append(math.acos(max(-1.0, min(1.0, cos))) / math.pi)
      val_errs.append(float(np.mean(clf.predict(xv) != yv)))
    return {"test_error": np.asarray(errs), "val_error": np.asarray(val_errs)}

  grid = [{"C": c} for c in config.c_grid]
  big, small = f"@{config.alpha_large:g}", f"@{config.alpha_small:g}"
  arms = [protocol.Arm("hard" + big, grid), protocol.Arm("random" + big, grid),
          protocol.Arm("easy" + small, grid), protocol.Arm("hard" + small, grid),
          protocol.Arm("random" + small, grid)]
  comparison = protocol.compare(arms, seeds, fit, validate=lambda out: out["val_error"],
                                test=lambda out: {"test_error": out["test_error"]}, maximize=False)
  large = comparison.judge(lambda m, b: m["test_error"] < 0.8 * b["test_error"], method="hard" + big,
                           baseline="random" + big)
  scarce = comparison.judge(lambda m, b: m["test_error"] < b["test_error"], method="easy" + small,
                            baseline="hard" + small)
  err = {name: comparison[name].mean("test_error") for name in comparison.arms}
  for name in comparison.arms:
    ctx.print(f"{name}: test error {err[name]:.4f} +- {comparison[name].std('test_error'):.4f} "
              f"(C={comparison[name].chosen['C']})")
  ctx.log(0, {f"{name}/test_error": e for name, e in err.items()})
  results = {name: {k: np.asarray(v).tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {
      "passed": bool(large["passed"] and scarce["passed"]), "holds": bool(large["holds"] and scarce["holds"]),
      "control_passes": bool(large["control_passes"] or scarce["control_passes"]),
      "vacuous": bool(large["vacuous"] or scarce["vacuous"]), "statement": CLAIM,
      "control": "each method arm replaced by its baseline arm",
      "ratio_hard_to_random_at_large_alpha": err["hard" + big] / err["random" + big],
      "easy_minus_hard_at_small_alpha": err["easy" + small] - err["hard" + small],
      "test_error": err, "large_alpha": large, "small_alpha": scarce,
      "per_seed": {name: comparison[name].test["test_error"].tolist() for name in comparison.arms}}
  return results
