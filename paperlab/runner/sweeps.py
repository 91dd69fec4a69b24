"""Sweep helpers: each returns a list of override dicts ``{"dotted.key": value}`` for ``get_sweep()``.

Combine them with :func:`product` (every pairing) and ``+`` (concatenation), the big_vision way::

  def get_sweep():
    return product(grid(**{"optim.learning_rate": [1e-3, 3e-3]}), seeds(3))
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any, Sequence

Sweep = list[dict[str, Any]]


def _check_count(n: int) -> None:
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"n must be an integer >= 1 (the number of points to draw), got {n!r}.")


def grid(**axes: Sequence[Any]) -> Sweep:
  """Cartesian product of the axes (keys may be dotted: pass them with ``**{"optim.lr": [...]}``)."""
  for name, values in axes.items():
    if isinstance(values, (str, bytes)) or not len(values):
      raise ValueError(f"grid axis {name!r} needs a non-empty sequence of values, got {values!r}.")
  keys = list(axes)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def zipped(**axes: Sequence[Any]) -> Sweep:
  """Axes walked together (all must have the same length): ``zipped(a=[1, 2], b=[3, 4])`` gives two points."""
  lengths = {name: len(values) for name, values in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zipped axes must have equal lengths, got {lengths}.")
  keys = list(axes)
  return [dict(zip(keys, combo)) for combo in zip(*(axes[k] for k in keys))]


def seeds(n: int, key: str = "seed", start: int = 0) -> Sweep:
  """``n`` seeds ``start, ..., start + n - 1`` under ``key``."""
  _check_count(n)
  return [{key: start + i} for i in range(n)]


def log_uniform(key: str, low: float, high: float, n: int, *, seed: int = 0) -> Sweep:
  """``n`` values drawn log-uniformly from ``[low, high]`` (random search), reproducible from ``seed``."""
  if not 0 < low <= high:
    raise ValueError(f"log_uniform needs 0 < low <= high, got low={low}, high={high}.")
  _check_count(n)
  rng = random.Random(seed)
  return [{key: math.exp(rng.uniform(math.log(low), math.log(high)))} for _ in range(n)]


def uniform(key: str, low: float, high: float, n: int, *, seed: int = 0) -> Sweep:
  """``n`` values drawn uniformly from ``[low, high]``, reproducible from ``seed``."""
  if not low <= high:
    raise ValueError(f"uniform needs low <= high, got low={low}, high={high}.")
  _check_count(n)
  rng = random.Random(seed)
  return [{key: rng.uniform(low, high)} for _ in range(n)]


def product(*sweeps: Sweep) -> Sweep:
  """Every combination of one point from each sweep (later sweeps vary fastest)."""
  out: Sweep = [{}]
  for sweep in sweeps:
    out = [{**a, **b} for a in out for b in sweep]
  return out
