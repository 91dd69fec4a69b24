"""The reproduction protocol: arms x seeds x a hyperparameter grid per arm, selection on validation, one test read.

Every reproduction compares arms (the method, its baselines, controls). The protocol makes the comparison fair and
its claim falsifiable, so that an experiment states only its data, its arms and its claim:

1. every arm gets a hyperparameter grid of the same size (the same tuning budget; a baseline is never left at one
   value while the method is tuned) -- :func:`compare` refuses unequal budgets unless told why;
2. each grid point is trained on the same seeds (>= 3), and one point per arm is chosen on the seed mean of a
   validation metric;
3. the test split is read once per arm, for the chosen point only;
4. the claim is judged on seed means, with the spread (standard deviation over seeds) reported beside them;
5. a control: the same claim judged with the method's results replaced by the baseline's (a method that does
   nothing) must fail, else the claim cannot tell the method from the baseline and is recorded as vacuous.

    arms = [protocol.Arm("sgd", [{"lr": lr} for lr in (0.02, 0.05, 0.1)]),
            protocol.Arm("sam", [{"lr": lr} for lr in (0.02, 0.05, 0.1)])]
    comparison = protocol.compare(arms, seeds=(0, 1, 2), fit=fit, validate=val_accuracy, test=test_metrics)
    claim = comparison.judge(lambda m, b: m["lambda_max"] <= 0.7 * b["lambda_max"], method="sam", baseline="sgd")

``fit(arm, hparams, keys)`` trains one grid point for all seeds at once (typically one ``jit(vmap(...))``
program) and returns anything; ``validate(trained)`` returns the validation metric per seed and ``test(trained)``
a dict of test metrics per seed. Host-side orchestration: nothing here is jitted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["Arm", "ArmResult", "ClaimNotReproduced", "Comparison", "compare", "MIN_SEEDS", "require_reproduced"]

MIN_SEEDS = 3


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm: a name and its hyperparameter grid (a list of points; ``({},)`` for an arm without one)."""

  name: str
  grid: Sequence[Mapping[str, Any]] = ({},)

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Arm name must be a non-empty string, got {self.name!r}.")
    if len(self.grid) == 0:
      raise ValueError(f"Arm {self.name!r}: grid must hold at least one point (use ({{}},) for none).")
    for point in self.grid:
      if not isinstance(point, Mapping):
        raise TypeError(f"Arm {self.name!r}: each grid point must be a mapping of hyperparameters, got {point!r}.")


@dataclasses.dataclass
class ArmResult:
  """What the protocol measured for one arm."""

  name: str
  chosen: dict  # the grid point picked on validation
  validation: list  # seed-mean validation metric of every grid point, in grid order
  test: dict  # metric -> per-seed values (np.ndarray of shape (num_seeds,)) at the chosen point

  def mean(self, metric: str) -> float:
    return float(np.mean(self.test[metric]))

  def std(self, metric: str) -> float:
    return float(np.std(self.test[metric]))

  def means(self) -> dict:
    return {k: self.mean(k) for k in self.test}

  def to_json(self) -> dict:
    return {"chosen": self.chosen, "validation": self.validation,
            "test": {k: np.asarray(v).tolist() for k, v in self.test.items()},
            "mean": self.means(), "std": {k: self.std(k) for k in self.test}}


@dataclasses.dataclass
class Comparison:
  """The arms' results; :meth:`judge` evaluates a claim on them with its control."""

  arms: dict
  seeds: tuple

  def __getitem__(self, name: str) -> ArmResult:
    if name not in self.arms:
      raise KeyError(f"no arm {name!r}; arms are {list(self.arms)}")
    return self.arms[name]

  def judge(self, claim: Callable[[Mapping[str, float], Mapping[str, float]], bool], *, method: str,
            baseline: str) -> dict:
    """Judge ``claim(method_means, baseline_means)`` on seed means, and its control.

    Args:
      claim: a predicate of the method's and the baseline's test-metric seed means (dicts metric -> mean).
      method: the arm the claim is about.
      baseline: the arm it is compared with.

    Returns:
      ``{"passed", "holds", "control_passes", "vacuous", "method", "baseline", "mean", "std"}``: ``holds`` is the
      claim on the real arms, ``control_passes`` the claim with the method replaced by the baseline (a method that
      does nothing); ``passed = holds and not control_passes`` (a claim its control also satisfies shows
      nothing, ``vacuous``).
    """
    m, b = self[method].means(), self[baseline].means()
    holds = bool(claim(m, b))
    control = bool(claim(b, b))
    return {"passed": holds and not control, "holds": holds, "control_passes": control, "vacuous": control,
            "method": method, "baseline": baseline,
            "mean": {name: arm.means() for name, arm in self.arms.items()},
            "std": {name: {k: arm.std(k) for k in arm.test} for name, arm in self.arms.items()}}

  def to_json(self) -> dict:
    return {"seeds": list(self.seeds), "arms": {name: arm.to_json() for name, arm in self.arms.items()}}


def _per_seed(values, num_seeds: int, what: str) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.shape != (num_seeds,):
    raise ValueError(f"{what} must return one value per seed, shape ({num_seeds},), got shape {arr.shape}.")
  return arr


def compare(arms: Sequence[Arm], seeds: Sequence[int], fit: Callable[[Arm, dict, np.ndarray], Any], *,
            validate: Callable[[Any], Any], test: Callable[[Any], Mapping[str, Any]], maximize: bool = True,
            equal_budget: bool = True, allow_fewer_seeds: bool = False) -> Comparison:
  """Run the protocol (see the module docstring) and return every arm's chosen point and test metrics.

  Args:
    arms: the arms; names unique.
    seeds: the seeds (>= 3 unless ``allow_fewer_seeds``, which a record must list as a deviation).
    fit: ``fit(arm, hparams, seeds) -> trained`` for all seeds of one grid point (``seeds`` an int array).
    validate: ``validate(trained) -> (num_seeds,)`` validation metric.
    test: ``test(trained) -> {metric: (num_seeds,)}``; called once per arm, on the chosen point.
    maximize: whether a larger validation metric is better (accuracy) or a smaller one (loss).
    equal_budget: require grids of the same size for every arm (the same tuning budget).
    allow_fewer_seeds: permit fewer than :data:`MIN_SEEDS` seeds.

  Raises:
    ValueError: duplicate arm names, unequal budgets, too few seeds, or a metric not shaped per seed.
  """
  arms = list(arms)
  seeds = tuple(int(s) for s in seeds)
  if not arms:
    raise ValueError("arms must hold at least one Arm.")
  names = [a.name for a in arms]
  if len(set(names)) != len(names):
    raise ValueError(f"arm names must be unique, got {names}.")
  if len(seeds) < MIN_SEEDS and not allow_fewer_seeds:
    raise ValueError(f"seeds: the protocol needs >= {MIN_SEEDS} seeds, got {list(seeds)}; pass "
                     f"allow_fewer_seeds=True and list it as a deviation.")
  budgets = {a.name: len(a.grid) for a in arms}
  if equal_budget and len(set(budgets.values())) > 1:
    raise ValueError(f"every arm needs the same tuning budget (grid size), got {budgets}; pass equal_budget=False "
                     f"and list it as a deviation.")
  results = {}
  for arm in arms:
    best, best_score, scores = None, None, []
    for point in arm.grid:
      trained = fit(arm, dict(point), np.asarray(seeds))
      score = float(np.mean(_per_seed(validate(trained), len(seeds), "validate")))
      scores.append(score)
      better = best_score is None or (score > best_score if maximize else score < best_score)
      if better and np.isfinite(score):
        best, best_score = (dict(point), trained), score
    if best is None:
      raise ValueError(f"arm {arm.name!r}: every grid point gave a non-finite validation metric: {scores}.")
    metrics = test(best[1])
    results[arm.name] = ArmResult(arm.name, best[0], scores,
                                  {k: _per_seed(v, len(seeds), f"test metric {k!r}") for k, v in metrics.items()})
  return Comparison(results, seeds)


class ClaimNotReproduced(AssertionError):
  """A reproduction's claim failed. Tests of known non-reproductions mark themselves
  ``xfail(strict=True, raises=ClaimNotReproduced)``, so that any other failed assertion (a control that passes, a
  part of the claim that should hold) still fails the test instead of hiding behind the expected failure."""


def require_reproduced(claim: Mapping[str, Any]) -> None:
  """Raise :class:`ClaimNotReproduced` (naming the claim's numbers) unless ``claim["passed"]``."""
  if not claim.get("passed"):
    numbers = {k: v for k, v in claim.items() if k not in ("statement", "mean", "std")}
    raise ClaimNotReproduced(f"claim not reproduced: {numbers}")
