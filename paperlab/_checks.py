"""Validation of hyperparameters at public boundaries (shared by every family).

Checks apply to concrete Python/NumPy numbers only: traced values and schedules pass through untouched, so
validation never breaks ``jax.jit``.
"""

from __future__ import annotations

import numbers
from typing import Any


def _concrete(value: Any) -> float | None:
  if isinstance(value, numbers.Real) and not isinstance(value, bool):
    return float(value)
  try:
    import numpy as np

    if isinstance(value, np.ndarray) and value.shape == ():
      return float(value)
  except TypeError:
    pass
  return None


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_inclusive: bool = True, high_inclusive: bool = True) -> Any:
  """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the given interval (if it is concrete).

  A string where a number is expected is a ``TypeError`` naming ``name`` (``"0.1"`` would otherwise fail deep
  inside JAX with an unrelated message).
  """
  if isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be a number (or an array / schedule where accepted), got {value!r}.")
  v = _concrete(value)
  if v is None:
    return value
  ok = True
  if low is not None:
    ok &= v >= low if low_inclusive else v > low
  if high is not None:
    ok &= v <= high if high_inclusive else v < high
  if not ok or v != v:
    lo = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
    hi = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
    raise ValueError(f"{name} must lie in {lo}, {hi}, got {value!r}.")
  return value


def check_finite(name: str, value: Any) -> Any:
  """``value`` is a finite number (when concrete): NaN and +-Inf are errors."""
  check_range(name, value)
  v = _concrete(value)
  if v is not None and v in (float("inf"), float("-inf")):
    raise ValueError(f"{name} must be finite, got {value!r}.")
  return value


def check_positive(name: str, value: Any) -> Any:
  """``value > 0`` (when concrete)."""
  return check_range(name, value, 0.0, None, low_inclusive=False)


def check_non_negative(name: str, value: Any) -> Any:
  """``value >= 0`` (when concrete)."""
  return check_range(name, value, 0.0, None)


def check_choice(name: str, value: Any, accepted) -> Any:
  """``value`` is one of ``accepted``."""
  if value not in accepted:
    raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}.")
  return value
