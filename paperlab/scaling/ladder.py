"""Model ladders: fit a loss-vs-size law to a family of small models and extrapolate it.

A *ladder* is a family of models of one architecture at several sizes, trained the same way, whose losses fix a
scaling law that predicts larger models (Bhagia et al., "Establishing Task Scaling Laws via Compute-Efficient
Model Ladders", arXiv:2412.04403, Sec. 3, step 1; the size term ``L(N) = E + A / N^alpha`` of Kaplan et al.,
arXiv:2001.08361, Eq. 1.1 with an irreducible loss, and Henighan et al., arXiv:2010.14701, Eq. 1.1). The fit is
:func:`paperlab.scaling.fit_power_law` (Huber loss on log loss with L-BFGS from a grid of starts, the Chinchilla
recipe) on the seed means of every rung; seeds of a rung are averaged first, so a rung is one point of the law.

Training the rungs is the runner's job (``paperlab.runner.ladder.train_ladder`` trains char transformers over
widths, one vmapped program of seeds per width); this module is data-only and host-side (NumPy/scipy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paperlab.scaling import fit as _fit

__all__ = ["ladder_points", "fit_ladder", "predict_ladder"]


def ladder_points(num_params: Any, losses: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The ladder's points ``(N, mean loss, seed std)`` sorted by size, after validation.

  Args:
    num_params: ``(rungs,)`` model sizes (positive, distinct).
    losses: ``(rungs,)`` losses or ``(rungs, seeds)`` per-seed losses (positive and finite).

  Raises:
    ValueError: shapes that do not match, sizes that are not positive or repeat, or a non-finite / non-positive
      loss (naming the rung's size and seed).
  """
  n = np.asarray(num_params, np.float64)
  loss = np.asarray(losses, np.float64)
  if n.ndim != 1 or n.size == 0:
    raise ValueError(f"num_params must be a non-empty 1-D array of model sizes, got shape {n.shape}.")
  if loss.ndim == 1:
    loss = loss[:, None]
  if loss.ndim != 2 or loss.shape[0] != n.shape[0] or loss.shape[1] == 0:
    raise ValueError(f"losses must have shape ({n.shape[0]},) or ({n.shape[0]}, seeds) to match num_params, got "
                     f"{np.shape(losses)}.")
  if not np.all(np.isfinite(n)) or np.any(n <= 0):
    raise ValueError(f"num_params must be positive and finite, got {n.tolist()}.")
  if len(np.unique(n)) != len(n):
    raise ValueError(f"num_params must be distinct (one rung per size), got {n.tolist()}.")
  bad = np.argwhere(~np.isfinite(loss) | (loss <= 0))
  if bad.size:
    rung, seed = bad[0]
    raise ValueError(f"losses of the rung with num_params={n[rung]:g}, seed index {seed}: {loss[rung, seed]!r}; a "
                     "ladder needs positive finite losses (a diverged run is not a point of the law).")
  order = np.argsort(n)
  return n[order], loss.mean(axis=1)[order], loss.std(axis=1)[order]


def fit_ladder(num_params: Any, losses: Any, *, with_offset: bool = True, delta: float = 1e-3, bootstrap: int = 0,
               confidence: float = 0.95, seed: int = 0) -> _fit.Fit:
  """Fit ``L(N) = c + a N^-b`` to a ladder's seed-mean losses (Bhagia et al., arXiv:2412.04403, step 1 at fixed
  data; Kaplan et al., arXiv:2001.08361, Eq. 1.1 with the irreducible term ``c``).

  :func:`paperlab.scaling.fit_power_law` on :func:`ladder_points` (Huber ``delta`` 1e-3 on log loss, L-BFGS from
  a grid of starts, optional bootstrap intervals over the rungs). ``b`` is the size exponent (Kaplan's
  ``alpha_N``), ``c`` the irreducible loss.

  Args:
    num_params: ``(rungs,)`` model sizes (Kaplan counts non-embedding parameters).
    losses: ``(rungs,)`` or ``(rungs, seeds)`` losses; seeds are averaged per rung.
    with_offset: fit the irreducible loss ``c`` (needs >= 3 rungs); ``False`` fits a pure power law (>= 2).
    delta, bootstrap, confidence, seed: as in :func:`paperlab.scaling.fit_power_law`.

  Returns:
    A :class:`paperlab.scaling.Fit` with params ``a, b, c``.

  Raises:
    ValueError: too few rungs for the law, or invalid points (:func:`ladder_points`).
  """
  n, mean, _ = ladder_points(num_params, losses)
  need = 3 if with_offset else 2
  if len(n) < need:
    raise ValueError(f"fit_ladder needs at least {need} rungs (model sizes) to fit L(N) = c + a N^-b"
                     f"{'' if with_offset else ' with c = 0'}, got {len(n)}: num_params={n.tolist()}.")
  return _fit.fit_power_law(n, mean, with_offset=with_offset, delta=delta, bootstrap=bootstrap,
                            confidence=confidence, seed=seed)


def predict_ladder(fit: _fit.Fit, num_params: Any) -> np.ndarray:
  """The fitted law's loss at ``num_params``: ``c + a N^-b`` (float64)."""
  if not isinstance(fit, _fit.Fit) or not {"a", "b", "c"} <= set(fit.params):
    raise TypeError(f"fit must be a Fit from fit_ladder / fit_power_law (params a, b, c), got {fit!r}.")
  n = np.asarray(num_params, np.float64)
  if not np.all(np.isfinite(n)) or np.any(n <= 0):
    raise ValueError(f"num_params must be positive and finite, got {n.tolist()}.")
  return fit["c"] + fit["a"] * n ** (-fit["b"])  # host-side float64 (paperlab.scaling.power_law is jnp float32)
