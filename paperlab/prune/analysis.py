"""Essential sparsity: one-shot magnitude pruning swept over sparsity, without retraining, and the knee of the curve.

Jaiswal et al., "The Emergence of Essential Sparsity in Large Pre-trained Models: The Weights that Matter",
arXiv:2306.03805, Sec. 3: the *essential sparsity* is the largest sparsity reached by one-shot global magnitude
pruning before performance drops sharply (a drop of at most ``tol``; the paper's knee of the curve).
Host-side loops (one evaluation per sparsity); the masks themselves are jittable.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from paperlab import _checks
from paperlab.prune.masks import apply_masks, magnitude_masks

PyTree = Any

__all__ = ["sparsity_sweep", "find_knee"]


def sparsity_sweep(params: PyTree, eval_fn: Callable[[PyTree], float], sparsities: Sequence[float], *,
                   scope: str = "global", include: str | None = None, exclude: str | None = None
                   ) -> list[tuple[float, float]]:
  """``[(s, eval_fn(params pruned one-shot to s)), ...]`` in the given order (magnitude masks, no retraining).

  Raises:
    ValueError: an empty ``sparsities`` or one outside ``[0, 1)``.
  """
  if len(sparsities) == 0:
    raise ValueError("sparsities must hold at least one value.")
  out = []
  for s in sparsities:
    _checks.check_range("sparsity", s, 0.0, 1.0, high_inclusive=False)
    masks = magnitude_masks(params, float(s), scope=scope, include=include, exclude=exclude)
    out.append((float(s), float(eval_fn(apply_masks(params, masks)))))
  return out


def find_knee(curve: Sequence[tuple[float, float]], tol: float = 0.01) -> float:
  """The essential sparsity of a (sparsity, metric) curve where larger metric is better: the largest ``s`` such that
  every point with sparsity ``<= s`` stays within ``tol`` of the metric at the smallest sparsity.

  Raises:
    ValueError: an empty curve or a negative ``tol``.
  """
  _checks.check_non_negative("tol", tol)
  if len(curve) == 0:
    raise ValueError("curve must hold at least one (sparsity, metric) point.")
  pts = sorted((float(s), float(m)) for s, m in curve)
  ref = pts[0][1]
  knee = pts[0][0]
  for s, m in pts:
    if not np.isfinite(m) or m < ref - tol:
      break
    knee = s
  return knee
