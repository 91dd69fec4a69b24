"""The scaling law with learning-rate annealing: ``L(s) = L0 + A S1**-alpha - C S2``.

Tissue et al., "Scaling Law with Learning Rate Annealing", arXiv:2408.11029, eqs. 1-4: the loss after step ``s``
of any schedule ``eta_1..eta_s`` depends on the forward area ``S1 = sum_{i<=s} eta_i`` and the annealing area
``S2 = sum_{i<=s} m_i`` with ``m_i = lam m_{i-1} + (eta_{i-1} - eta_i)`` (momentum of the learning-rate decrease,
decay ``lam`` = 0.999 by default, 0.99-0.999 in the paper; ``m_0 = 0``, ``eta_0 = eta_1``, so a constant schedule
has ``S2 = 0``). Warm-up steps are excluded from both areas. Fit ``(L0, A, alpha, C)`` on one or a few curves
(e.g. constant and cosine) by Huber loss on log loss with L-BFGS, then predict the curve of any other schedule.

:func:`lr_areas` and :func:`annealing_loss` are pure ``jax.numpy`` (jit; ``warmup`` static). The fit is host-side
(scipy ``L-BFGS-B``, float64, see :mod:`paperlab.scaling.fit`).
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab.scaling import fit as _fit_lib

__all__ = ["lr_areas", "annealing_loss", "fit_lr_annealing", "predict_curve", "best_schedule"]


def _check_lam(lam) -> None:
  _checks.check_range("lam", lam, 0.0, 1.0, high_inclusive=False)


def _check_warmup(warmup, length) -> int:
  if not isinstance(warmup, (int, np.integer)) or isinstance(warmup, bool) or warmup < 0:
    raise ValueError(f"warmup must be an int >= 0 (steps excluded from the areas), got {warmup!r}.")
  if length is not None and warmup >= length:
    raise ValueError(f"warmup must be smaller than the schedule length {length}, got {warmup}.")
  return int(warmup)


def lr_areas(lrs: Any, lam: float = 0.999, warmup: int = 0) -> tuple[jax.Array, jax.Array]:
  """Forward area ``S1`` and annealing area ``S2`` after every step of a learning-rate schedule.

  Tissue et al., arXiv:2408.11029, eqs. 2-3: ``S1(s) = sum_{i<=s} eta_i``, ``S2(s) = sum_{i<=s} m_i``,
  ``m_i = lam m_{i-1} + (eta_{i-1} - eta_i)``, starting after ``warmup`` steps (``eta_0 := eta_{warmup+1}``, so
  ``S2 = 0`` for a constant schedule). Steps inside the warm-up get ``S1 = S2 = 0``.

  Args:
    lrs: ``(steps,)`` learning rate of each step (e.g. an ``optax.schedules`` schedule evaluated on
      ``jnp.arange(steps)``), floating.
    lam: momentum decay of the annealing area, in [0, 1) (paper: 0.999).
    warmup: number of leading warm-up steps to exclude (static).

  Returns:
    ``(S1, S2)``, each ``(steps,)`` in the dtype of ``lrs``.
  """
  lrs = jnp.asarray(lrs)
  if lrs.ndim != 1:
    raise ValueError(f"lrs must be 1-D (one learning rate per step), got shape {lrs.shape}.")
  if not jnp.issubdtype(lrs.dtype, jnp.floating):
    raise TypeError(f"lrs must be floating, got dtype {lrs.dtype}.")
  _check_lam(lam)
  warmup = _check_warmup(warmup, lrs.shape[0])
  if not isinstance(lrs, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(lrs) & (lrs >= 0))):
    raise ValueError("lrs must be finite and >= 0.")
  after = lrs[warmup:]
  decrease = jnp.concatenate([jnp.zeros((1,), after.dtype), after[:-1] - after[1:]])
  lam = jnp.asarray(lam, after.dtype)

  def step(m, d):
    m = lam * m + d
    return m, m

  _, m = jax.lax.scan(step, jnp.zeros((), after.dtype), decrease)
  pad = jnp.zeros((warmup,), after.dtype)
  return jnp.concatenate([pad, jnp.cumsum(after)]), jnp.concatenate([pad, jnp.cumsum(m)])


def annealing_loss(S1: Any, S2: Any, L0: float, A: float, alpha: float, C: float) -> jax.Array:
  """``L = L0 + A S1**-alpha - C S2`` (Tissue et al., arXiv:2408.11029, eq. 1); ``S1 > 0`` (after warm-up)."""
  S1, S2 = jnp.asarray(S1), jnp.asarray(S2)
  return L0 + A * S1 ** (-alpha) - C * S2


def _curves(steps, lrs, losses) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Normalize one curve or a list of curves to ``[(steps, lrs, losses), ...]`` as NumPy float64/int arrays."""
  several = isinstance(lrs, (list, tuple)) and len(lrs) > 0 and np.ndim(lrs[0]) >= 1
  if not several:
    steps, lrs, losses = [steps], [lrs], [losses]
  if not (len(steps) == len(lrs) == len(losses)) or len(lrs) == 0:
    raise ValueError(f"steps, lrs and losses must hold the same number of curves (>= 1), got {len(steps)}, "
                     f"{len(lrs)}, {len(losses)}.")
  out = []
  for k, (s, lr, loss) in enumerate(zip(steps, lrs, losses)):
    lr = np.asarray(lr, dtype=np.float64)
    s = np.asarray(s)
    if lr.ndim != 1:
      raise ValueError(f"lrs[{k}] must be 1-D, got shape {lr.shape}.")
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer) or np.any(s < 0) or np.any(s >= len(lr)):
      raise ValueError(f"steps[{k}] must be 1-D integer indices into lrs[{k}] (0..{len(lr) - 1}), got "
                       f"{s if s.size < 6 else s[:6]}.")
    (loss,) = _fit_lib._points((f"losses[{k}]",), (loss,), 1)  # pylint: disable=protected-access
    if loss.shape != s.shape:
      raise ValueError(f"losses[{k}] must have one value per step index: shapes {loss.shape} vs steps {s.shape}.")
    out.append((s, lr, loss))
  return out


def _areas64(lr: np.ndarray, lam: float, warmup: int) -> tuple[np.ndarray, np.ndarray]:
  with jax.enable_x64(True):
    s1, s2 = lr_areas(jnp.asarray(lr, jnp.float64), lam, warmup)
    return np.asarray(s1), np.asarray(s2)


def fit_lr_annealing(steps: Any, lrs: Any, losses: Any, *, lam: float = 0.999, warmup: int = 0,
                     delta: float = 1e-3, init_grid: Any | None = None, bootstrap: int = 0,
                     confidence: float = 0.95, seed: int = 0) -> _fit_lib.Fit:
  """Fit ``(L0, A, alpha, C)`` of Tissue et al.'s law (arXiv:2408.11029, eq. 1) on one or several loss curves.

  Minimizes ``sum Huber_delta(log L_pred - log L)`` over all given points of all curves (the paper fits with
  Huber loss and L-BFGS; delta 1e-3 on log loss as in Hoffmann et al.), by scipy ``L-BFGS-B`` with
  ``L0, A, alpha, C >= 0`` from a grid of starts, keeping the best (host-side, float64).

  Args:
    steps: indices (0-based, into the schedule) at which ``losses`` were measured: an int array for one curve, or
      a list of them for several curves. The loss at index ``i`` is the loss after step ``i + 1``. Indices inside
      the warm-up are not allowed (``S1 = 0`` there).
    lrs: the full per-step schedule ``(num_steps,)`` of the curve, or a list of them.
    losses: the measured losses, matching ``steps``; > 0.
    lam: annealing momentum decay (paper: 0.999).
    warmup: warm-up steps excluded from the areas (the same for every curve).
    delta: Huber threshold.
    init_grid: ``(num_starts, 4)`` starts ``(L0, A, alpha, C)``; default ``L0 in {0.3, 0.6, 0.9} x min(loss)``,
      ``A`` matching the first point, ``alpha in {0.2, 0.5, 1}``, ``C in {0, 0.5 x (max - min) / max S2}``.
    bootstrap, confidence, seed: point-resampling intervals (:func:`paperlab.scaling.bootstrap_intervals`).

  Returns:
    :class:`~paperlab.scaling.Fit` with params ``L0, A, alpha, C`` and ``lam``, ``warmup`` (as given).
  """
  _check_lam(lam)
  warmup = _check_warmup(warmup, None)
  curves = _curves(steps, lrs, losses)
  s1s, s2s, ys = [], [], []
  for k, (s, lr, loss) in enumerate(curves):
    if np.any(s < warmup):
      raise ValueError(f"steps[{k}] must be >= warmup={warmup} (the law needs S1 > 0).")
    s1, s2 = _areas64(lr, lam, warmup)
    s1s.append(s1[s]), s2s.append(s2[s]), ys.append(loss)
  s1, s2, y = np.concatenate(s1s), np.concatenate(s2s), np.concatenate(ys)
  if len(y) < 4:
    raise ValueError(f"too few points to fit 4 parameters: got {len(y)}; need at least 4.")
  log_s1, log_y = np.log(s1), np.log(y)

  def residuals(theta, idx):
    l0, a, alpha, c = theta
    power = np.exp(-alpha * log_s1[idx])
    pred = l0 + a * power - c * s2[idx]
    jac = np.stack([np.ones(len(idx)), power, -a * power * log_s1[idx], -s2[idx]], axis=1) / pred[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(pred > 0, np.log(np.where(pred > 0, pred, 1.0)), np.inf) - log_y[idx], jac

  if init_grid is None:
    i0 = int(np.argmin(s1))
    c_scale = (y.max() - y.min()) / max(float(s2.max()), 1e-12)
    grid = np.array([[f * y.min(), max(y[i0] - f * y.min(), 1e-6) * s1[i0] ** al, al, c]
                     for f, al, c in itertools.product((0.3, 0.6, 0.9), (0.2, 0.5, 1.0), (0.0, 0.5 * c_scale))])
  else:
    grid = _fit_lib._check_grid(init_grid, 4, "(L0, A, alpha, C)")  # pylint: disable=protected-access
  fit = _fit_lib._fit(  # pylint: disable=protected-access
      "lr_annealing", residuals, len(y), grid,
      lambda t: {"L0": float(t[0]), "A": float(t[1]), "alpha": float(t[2]), "C": float(t[3])}, delta=delta,
      bootstrap=bootstrap, confidence=confidence, seed=seed, bounds=[(0.0, None)] * 4)
  return _fit_lib.Fit(fit.law, {**fit.params, "lam": float(lam), "warmup": warmup}, fit.objective, fit.num_points,
                      fit.ci, fit.samples, fit.confidence)


def predict_curve(fit: _fit_lib.Fit, lrs: Any, steps: Any | None = None) -> np.ndarray:
  """Predicted loss after each step (or at ``steps``, 0-based indices) of the schedule ``lrs``, by a fit of
  :func:`fit_lr_annealing` (Tissue et al., arXiv:2408.11029, eq. 1, with the fit's ``lam`` and ``warmup``).
  Steps inside the warm-up are NaN."""
  if not isinstance(fit, _fit_lib.Fit) or fit.law != "lr_annealing":
    raise TypeError(f"fit must be a Fit from fit_lr_annealing, got {fit!r:.80}.")
  lr = np.asarray(lrs, dtype=np.float64)
  if lr.ndim != 1:
    raise ValueError(f"lrs must be 1-D, got shape {lr.shape}.")
  p = fit.params
  s1, s2 = _areas64(lr, p["lam"], int(p["warmup"]))
  with np.errstate(divide="ignore"):
    pred = np.where(s1 > 0, p["L0"] + p["A"] * np.where(s1 > 0, s1, 1.0) ** (-p["alpha"]) - p["C"] * s2, np.nan)
  return pred if steps is None else pred[np.asarray(steps)]


def best_schedule(fit: _fit_lib.Fit, candidates: Sequence[Any]) -> tuple[int, np.ndarray]:
  """Index of the candidate schedule with the lowest predicted final loss, and every candidate's final loss
  (Tissue et al., arXiv:2408.11029, Sec. 5: choosing schedules by the law)."""
  if len(candidates) == 0:
    raise ValueError("candidates must hold at least one schedule.")
  finals = np.array([predict_curve(fit, lr)[-1] for lr in candidates])
  return int(np.nanargmin(finals)), finals
