"""muScaling: tune at a small proxy width, transfer the hyperparameters unchanged, extrapolate the loss law.

Yao et al., "Research without Re-search: Maximal Update Parametrization Yields Accurate Loss Prediction across
Scales", arXiv:2304.06875 ("muScaling"; its section and equation numbers were not checked offline): under muP the
best hyperparameters of a small proxy model stay the best at every width (muTransfer), so one set of hyperparameters,
chosen once at the proxy, trains a whole ladder of widths; the ladder's final losses then follow a power law in
model size, ``L(N) = a N^-b + c`` (the form the paper fits: the law of Kaplan et al., arXiv:2001.08361, Eq. 1.1 with
the irreducible term of Henighan et al., arXiv:2010.14701, Eq. 1.1), and the law fitted on the small widths predicts
the loss of a large one before it is trained. Without muP the best hyperparameters drift with width, the fixed ones
fit the larger models worse and worse, and the extrapolation breaks.

Host-side orchestration (NumPy/scipy, not jit-able): :func:`mu_scaling` calls a user's ``train_fn`` once per
(width, hyperparameter point) -- typically a jitted, seed-vmapped training program, so the jit lives there -- and
the fit is :func:`paperlab.scaling.fit_ladder` (Huber on log loss with L-BFGS-B from a grid of starts, in float64).
The parametrization is whatever ``train_fn`` builds (e.g. :func:`paperlab.param.parametrize` with ``kind="mup"`` and
the proxy as base model, so that the proxy is exactly SP); the scaling package stays free of it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from paperlab.scaling import fit as _fit
from paperlab.scaling import ladder as _ladder

__all__ = ["LadderExtrapolation", "MuScaling", "extrapolate_ladder", "mu_scaling"]


class LadderExtrapolation(NamedTuple):
  """The law fitted on a ladder's small rungs and its prediction at a larger size.

  Attributes:
    fit: ``L(N) = a N^-b + c`` fitted on the rungs' seed-mean losses (:func:`paperlab.scaling.fit_ladder`).
    predicted: its loss at the target size.
    observed: the seed-mean loss measured at the target size.
    rel_error: ``|predicted - observed| / observed``.
    per_seed_predicted: ``(seeds,)`` predictions of the law fitted on each seed's own rungs.
    per_seed_rel_error: ``(seeds,)`` their relative errors against the same seed's target loss.
  """

  fit: _fit.Fit
  predicted: float
  observed: float
  rel_error: float
  per_seed_predicted: np.ndarray
  per_seed_rel_error: np.ndarray


class MuScaling(NamedTuple):
  """What :func:`mu_scaling` measured.

  Attributes:
    hparams: the grid point chosen at the proxy width, used unchanged at every width.
    proxy_width: the width the hyperparameters were tuned at.
    proxy_losses: ``(grid,)`` seed-mean proxy loss of every grid point (``inf`` where a seed diverged).
    widths, num_params: ``(rungs,)`` the fitted rungs (sorted by width) and their sizes ``N``.
    losses: ``(rungs, seeds)`` their final losses at ``hparams``.
    target_width, target_num_params: the width whose loss is predicted, and its size.
    target_losses: ``(seeds,)`` its measured losses at ``hparams``.
    extrapolation: the fit on the rungs and its prediction at the target (:class:`LadderExtrapolation`).
  """

  hparams: Mapping[str, Any]
  proxy_width: int
  proxy_losses: np.ndarray
  widths: np.ndarray
  num_params: np.ndarray
  losses: np.ndarray
  target_width: int
  target_num_params: float
  target_losses: np.ndarray
  extrapolation: LadderExtrapolation


def _target_losses(target_losses: Any, seeds: int) -> np.ndarray:
  t = np.asarray(target_losses, np.float64).reshape(-1)
  if t.shape != (seeds,) or not np.all(np.isfinite(t)) or np.any(t <= 0):
    raise ValueError(f"target_losses must hold {seeds} positive finite losses (one per seed, as the rungs' "
                     f"columns), got {np.asarray(target_losses).tolist()!r}.")
  return t


def extrapolate_ladder(num_params: Any, losses: Any, target_num_params: float, target_losses: Any, *,
                       with_offset: bool = True, delta: float = 1e-3, per_seed: bool = True) -> LadderExtrapolation:
  """Fit ``L(N) = a N^-b + c`` on a ladder's rungs and compare its prediction at ``target_num_params`` with the
  loss measured there (Yao et al., arXiv:2304.06875: the muScaling fit ``L(N) = a N^-b + c``).

  The law is fitted once on the seed-mean losses (the prediction, :func:`paperlab.scaling.fit_ladder` with
  Huber ``delta`` 1e-3 on log loss, the Chinchilla recipe) and, with ``per_seed``, once per seed on that seed's
  rungs (the spread). Host-side (scipy's L-BFGS-B in float64; each fit takes a fraction of a CPU-second).

  Args:
    num_params: ``(rungs,)`` model sizes of the fitted rungs (positive, distinct).
    losses: ``(rungs,)`` or ``(rungs, seeds)`` their final losses.
    target_num_params: the larger model's size ``N`` (> 0, not one of the rungs).
    target_losses: ``(seeds,)`` its measured losses (a scalar for one seed).
    with_offset: fit the irreducible loss ``c`` (>= 3 rungs); ``False``: ``c = 0`` (>= 2 rungs).
    delta: the Huber threshold on log loss.
    per_seed: also fit every seed's rungs on their own; ``False`` leaves ``per_seed_predicted`` and
      ``per_seed_rel_error`` NaN (one fit instead of ``seeds + 1``).

  Returns:
    A :class:`LadderExtrapolation`.

  Raises:
    ValueError: an invalid ladder (:func:`paperlab.scaling.ladder_points`), too few rungs, a target size that is
      not positive or is one of the rungs, or target losses that are not one positive finite value per seed.
  """
  n, _, _ = _ladder.ladder_points(num_params, losses)
  loss = np.asarray(losses, np.float64)
  loss = loss[:, None] if loss.ndim == 1 else loss
  loss = loss[np.argsort(np.asarray(num_params, np.float64))]
  target_n = float(target_num_params)
  if not math.isfinite(target_n) or target_n <= 0 or np.any(n == target_n):
    raise ValueError(f"target_num_params must be a positive size that is not one of the rungs {n.tolist()}, got "
                     f"{target_num_params!r}.")
  target = _target_losses(target_losses, loss.shape[1])
  fit = _ladder.fit_ladder(n, loss, with_offset=with_offset, delta=delta)
  predicted = float(_ladder.predict_ladder(fit, target_n))
  observed = float(np.mean(target))
  if per_seed not in (True, False):
    raise ValueError(f"per_seed must be a bool, got {per_seed!r}.")
  if not per_seed:
    seed_pred = np.full(loss.shape[1], np.nan)
  elif loss.shape[1] == 1:
    seed_pred = np.array([predicted])
  else:
    seed_pred = np.array([float(_ladder.predict_ladder(_ladder.fit_ladder(n, loss[:, s], with_offset=with_offset,
                                                                        delta=delta), target_n))
                          for s in range(loss.shape[1])])
  return LadderExtrapolation(fit, predicted, observed, abs(predicted - observed) / observed, seed_pred,
                             np.abs(seed_pred - target) / target)


def _positive_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int (a width), got {value!r}.")
  return int(value)


def _per_seed(out: Any, width: int, hparams: Mapping[str, Any], seeds: int | None) -> np.ndarray:
  arr = np.asarray(out, np.float64).reshape(-1) if np.ndim(out) <= 1 else None
  if arr is None or arr.size == 0 or (seeds is not None and arr.shape != (seeds,)):
    raise ValueError(f"train_fn({width}, {dict(hparams)}) must return the final loss of each seed, a scalar or a 1-D "
                     f"array" + (f" of {seeds} values like the other calls" if seeds is not None else "")
                     + f", got shape {np.shape(out)}.")
  return arr


def mu_scaling(train_fn: Callable[[int, Mapping[str, Any]], Any], widths: Sequence[int], target_width: int, *,
               grid: Sequence[Mapping[str, Any]] = ({},), proxy_width: int | None = None,
               num_params: Callable[[int], float] | None = None, with_offset: bool = True,
               delta: float = 1e-3, per_seed: bool = True) -> MuScaling:
  """muScaling (Yao et al., arXiv:2304.06875): tune at the proxy, transfer unchanged, fit, extrapolate.

  1. Every point of ``grid`` is trained at ``proxy_width``; the one with the lowest seed-mean loss is chosen (a
     point where a seed's loss is not finite counts as diverged, ``inf``).
  2. The chosen point is used unchanged at every width of ``widths`` and at ``target_width`` (muTransfer: the
     parametrization in ``train_fn`` is what makes this transfer; the paper's is muP with the proxy as base).
  3. ``L(N) = a N^-b + c`` (the paper's power law) is fitted on ``widths``' losses and predicts ``target_width``'s
     (:func:`extrapolate_ladder`).

  The proxy's loss at the chosen point is reused as its rung when ``proxy_width`` is one of ``widths``. Host-side:
  ``train_fn`` is called ``len(grid) + len(widths) + 1`` times (one fewer when the proxy is a rung) and holds the
  jitted work; the fit is scipy.

  Args:
    train_fn: ``train_fn(width, hparams) -> losses``: trains the model of that width with the hyperparameters of
      one grid point on every seed and returns each seed's final loss (a scalar or ``(seeds,)``, positive; the
      same number of seeds on every call).
    widths: the rungs the law is fitted on (>= 3 distinct positive widths; >= 2 with ``with_offset=False``).
    target_width: the width whose loss is predicted; larger than every rung.
    grid: the hyperparameter points tried at the proxy (mappings passed to ``train_fn``); default one point
      ``{}`` (nothing tuned: ``train_fn``'s own settings are transferred).
    proxy_width: the width the grid is tuned at; default the smallest rung (the paper's small proxy).
    num_params: ``num_params(width) -> N``, the model size the law is in; default ``N = width``.
    with_offset: fit the irreducible loss ``c``; ``False`` fits a pure power law.
    delta: the Huber threshold on log loss of the fit.
    per_seed: also fit each seed's ladder on its own (the spread; :func:`extrapolate_ladder`).

  Returns:
    A :class:`MuScaling`.

  Raises:
    ValueError: widths that are not positive ints or repeat, a target width not above the rungs, an empty grid or
      a point that is not a mapping, a ``train_fn`` output that is not one loss per seed, every grid point
      diverged, or a non-positive ``num_params``.
  """
  try:
    rung_widths = [_positive_int("widths[i]", w) for w in widths]
  except TypeError as e:
    raise ValueError(f"widths must be a sequence of positive ints, got {widths!r}.") from e
  if len(set(rung_widths)) != len(rung_widths):
    raise ValueError(f"widths must be distinct (one rung per width), got {rung_widths}.")
  need = 3 if with_offset else 2
  if len(rung_widths) < need:
    raise ValueError(f"widths must hold at least {need} rungs to fit L(N) = a N^-b"
                     f"{' + c' if with_offset else ''}, got {rung_widths}.")
  target = _positive_int("target_width", target_width)
  if target <= max(rung_widths):
    raise ValueError(f"target_width must be larger than every rung of widths {sorted(rung_widths)} (the law "
                     f"extrapolates), got {target_width!r}.")
  proxy = min(rung_widths) if proxy_width is None else _positive_int("proxy_width", proxy_width)
  points = list(grid) if not isinstance(grid, Mapping) else None
  if not points or not all(isinstance(p, Mapping) for p in points):
    raise ValueError(f"grid must be a non-empty sequence of hyperparameter mappings (e.g. [{{'lr': 1e-3}}, ...]), "
                     f"got {grid!r}.")
  size = (lambda w: float(w)) if num_params is None else num_params
  if not callable(size):
    raise ValueError(f"num_params must be a callable width -> model size or None, got {num_params!r}.")

  seeds = None
  proxy_runs = []
  for point in points:
    out = _per_seed(train_fn(proxy, point), proxy, point, seeds)
    seeds = out.size
    proxy_runs.append(out)
  scores = np.array([np.mean(r) if np.all(np.isfinite(r)) else np.inf for r in proxy_runs])
  if not np.any(np.isfinite(scores)):
    raise ValueError(f"every grid point diverged at proxy_width={proxy} (a non-finite loss on some seed): grid "
                     f"{points}.")
  best = int(np.argmin(scores))  # the first of equal scores, as numpy's argmin
  chosen = dict(points[best])

  def losses_at(width: int) -> np.ndarray:
    if width == proxy:
      return proxy_runs[best]
    return _per_seed(train_fn(width, chosen), width, chosen, seeds)

  rung_widths = sorted(rung_widths)
  rung_losses = np.stack([losses_at(w) for w in rung_widths])
  target_losses = losses_at(target)
  n = np.array([float(size(w)) for w in rung_widths])
  target_n = float(size(target))
  if not np.all(np.isfinite(n)) or np.any(n <= 0) or not math.isfinite(target_n) or target_n <= 0:
    raise ValueError(f"num_params must give positive finite sizes, got {n.tolist()} for widths {rung_widths} and "
                     f"{target_n} for target_width {target}.")
  extrapolation = extrapolate_ladder(n, rung_losses, target_n, target_losses, with_offset=with_offset, delta=delta,
                                     per_seed=per_seed)
  return MuScaling(chosen, proxy, scores, np.asarray(rung_widths), n, rung_losses, target, target_n, target_losses,
                   extrapolation)
