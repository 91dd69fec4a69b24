"""The bivariate encoder/decoder scaling law of neural machine translation and its optimal parameter split.

Ghorbani et al., "Scaling Laws for Neural Machine Translation", arXiv:2109.07740, eq. (2):

    L(N_e, N_d) = alpha (Nbar_e / N_e)**p_e (Nbar_d / N_d)**p_d + L_inf,

``N_e`` / ``N_d`` the encoder / decoder parameter counts, ``Nbar_e`` / ``Nbar_d`` fixed reference (normalization)
sizes, ``p_e != p_d`` in general. Under a budget ``N_e + N_d = B`` the reducible term
``N_e**-p_e (B - N_e)**-p_d`` is smallest at ``N_e / B = p_e / (p_e + p_d)`` (set the derivative of
``p_e log N_e + p_d log(B - N_e)`` to zero), whatever ``alpha``, ``L_inf`` and the reference sizes: the paper's
recommendation to give the component with the larger exponent (the decoder, in its fits) the larger share.

:func:`enc_dec_loss` is pure ``jax.numpy`` (elementwise, jits and vmaps). :func:`fit_enc_dec` and
:func:`optimal_split` are host-side NumPy float64: the fit is :mod:`paperlab.scaling.fit`'s shared backend (Huber
loss on log loss, L-BFGS-B from a grid of starts, optional percentile bootstrap).
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab.scaling import fit as _fl
from paperlab.scaling import laws

__all__ = ["EncDecParams", "enc_dec_loss", "fit_enc_dec", "optimal_split"]


class EncDecParams(NamedTuple):
  """``L = alpha (ref_e / N_e)**p_e (ref_d / N_d)**p_d + L_inf`` (Ghorbani et al., arXiv:2109.07740, eq. 2)."""

  alpha: float
  p_e: float
  p_d: float
  L_inf: float
  ref_e: float
  ref_d: float


def _as_params(params: EncDecParams | _fl.Fit) -> EncDecParams:
  if isinstance(params, _fl.Fit):
    if params.law != "enc_dec":
      raise TypeError(f"params must be an 'enc_dec' Fit (from fit_enc_dec) or an EncDecParams, got a Fit of law "
                      f"{params.law!r}.")
    params = EncDecParams(*(params.params[k] for k in EncDecParams._fields))
  elif isinstance(params, tuple) and len(params) == len(EncDecParams._fields):
    params = EncDecParams(*params)
  else:
    raise TypeError(f"params must be an EncDecParams {EncDecParams._fields} or an 'enc_dec' Fit, got "
                    f"{params!r:.80}.")
  for name in ("alpha", "p_e", "p_d", "ref_e", "ref_d"):
    _checks.check_positive(f"params.{name}", getattr(params, name))
  _checks.check_non_negative("params.L_inf", params.L_inf)
  return params


def enc_dec_loss(N_e: Any, N_d: Any, params: EncDecParams | _fl.Fit) -> jax.Array:
  """``L(N_e, N_d) = alpha (ref_e / N_e)**p_e (ref_d / N_d)**p_d + L_inf`` (Ghorbani et al., "Scaling Laws for
  Neural Machine Translation", arXiv:2109.07740, eq. 2).

  Pure jnp, elementwise over broadcastable ``N_e`` (encoder parameters) and ``N_d`` (decoder parameters), in their
  floating dtype (integers promote to float32, or float64 under x64). ``params`` is an :class:`EncDecParams` or a
  :func:`fit_enc_dec` fit (closed over as Python floats, so the function jits).

  Raises:
    ValueError: concrete ``N_e`` / ``N_d`` not finite and > 0, or non-positive ``alpha, p_e, p_d, ref_e, ref_d``
      or negative ``L_inf``.
    TypeError: ``params`` of another kind.
  """
  p = _as_params(params)
  N_e, N_d = laws._positive("N_e", N_e), laws._positive("N_d", N_d)  # pylint: disable=protected-access
  return p.alpha * (p.ref_e / N_e) ** p.p_e * (p.ref_d / N_d) ** p.p_d + p.L_inf


def _residuals(log_ne, log_nd, log_l):
  def residuals(theta, idx):
    log_alpha, p_e, p_d, log_linf = theta
    reducible = log_alpha - p_e * log_ne[idx] - p_d * log_nd[idx]  # log of the product term (references folded in)
    lse, (w0, w1) = _fl._lse(reducible, np.full(len(idx), log_linf))  # pylint: disable=protected-access
    return lse - log_l[idx], np.stack([w0, -w0 * log_ne[idx], -w0 * log_nd[idx], w1], axis=1)
  return residuals


def fit_enc_dec(N_e: Any, N_d: Any, L: Any, *, ref: tuple[float, float] | None = None, delta: float = 1e-3,
                init_grid: Any | None = None, bootstrap: int = 0, confidence: float = 0.95, seed: int = 0
                ) -> _fl.Fit:
  """Fit Ghorbani et al.'s bivariate law ``L = alpha (ref_e/N_e)**p_e (ref_d/N_d)**p_d + L_inf`` (arXiv:2109.07740,
  eq. 2) to losses of encoder/decoder models.

  The objective is the shared one of :mod:`paperlab.scaling.fit`: ``sum_i Huber_delta(log Lhat_i - log L_i)`` with
  ``log Lhat = LSE(log alpha - p_e log(N_e/ref_e) - p_d log(N_d/ref_d), log L_inf)``, minimized by L-BFGS-B
  (float64, exact gradient) from every start of a grid, keeping the best; the paper fits its eq. 2 jointly to
  encoder-scaling and decoder-scaling runs (its Fig. 2), which is what ``N_e, N_d, L`` should hold (a design where
  ``N_e`` and ``N_d`` only move together cannot separate ``p_e`` from ``p_d``). Host-side scipy.

  Args:
    N_e: encoder parameter counts, 1-D, > 0.
    N_d: decoder parameter counts, same length, > 0.
    L: losses (per-token cross-entropy), same length, > 0; at least 4 points.
    ref: the reference sizes ``(ref_e, ref_d)`` (the paper's fixed ``Nbar_e, Nbar_d``; they only rescale
      ``alpha``). Default: the geometric means of ``N_e`` and ``N_d``.
    delta: Huber threshold on log loss (1e-3, Hoffmann et al.'s value, as the other fits here).
    init_grid: starts ``(num_starts, 4)`` with columns ``(log alpha, p_e, p_d, log L_inf)``; default
      ``p_e, p_d in {0.1, 0.3, 0.6, 1}`` x ``log L_inf in {log min L - 3, log min L - 0.1}`` (32 starts) with
      ``log alpha = log(median L - L_inf start)``.
    bootstrap: number of point resamples for percentile intervals (0: none).
    confidence: interval level.
    seed: resampling seed.

  Returns:
    :class:`~paperlab.scaling.Fit` (law ``"enc_dec"``) with params ``alpha, p_e, p_d, L_inf, ref_e, ref_d``.

  Raises:
    ValueError: non-positive or non-finite inputs, mismatched lengths, fewer than 4 points, a bad ``ref``.
  """
  N_e, N_d, L = _fl._points(("N_e", "N_d", "L"), (N_e, N_d, L), 4)  # pylint: disable=protected-access
  if ref is None:
    ref = (float(np.exp(np.mean(np.log(N_e)))), float(np.exp(np.mean(np.log(N_d)))))
  if not isinstance(ref, (tuple, list)) or len(ref) != 2:
    raise ValueError(f"ref must be a pair (ref_e, ref_d) of reference sizes > 0, or None, got {ref!r}.")
  ref_e, ref_d = (float(_checks.check_positive(f"ref[{i}]", _checks.check_finite(f"ref[{i}]", r)))
                  for i, r in enumerate(ref))
  log_ne, log_nd, log_l = np.log(N_e / ref_e), np.log(N_d / ref_d), np.log(L)
  if init_grid is None:
    starts = []
    for p_e, p_d, lc in itertools.product((0.1, 0.3, 0.6, 1.0), (0.1, 0.3, 0.6, 1.0),
                                          (log_l.min() - 3.0, log_l.min() - 0.1)):
      gap = max(float(np.median(L)) - float(np.exp(lc)), 1e-3 * float(np.median(L)))
      starts.append((np.log(gap), p_e, p_d, lc))
    grid = np.asarray(starts)
  else:
    grid = _fl._check_grid(init_grid, 4, "(log alpha, p_e, p_d, log L_inf)")  # pylint: disable=protected-access

  def named(t) -> dict:
    return {"alpha": float(np.exp(t[0])), "p_e": float(t[1]), "p_d": float(t[2]), "L_inf": float(np.exp(t[3])),
            "ref_e": ref_e, "ref_d": ref_d}

  return _fl._fit("enc_dec", _residuals(log_ne, log_nd, log_l), len(L), grid, named,  # pylint: disable=protected-access
                  delta=delta, bootstrap=bootstrap, confidence=confidence, seed=seed)


def optimal_split(fit: EncDecParams | _fl.Fit, budget: Any) -> tuple[np.ndarray, np.ndarray]:
  """The loss-minimizing ``(N_e, N_d)`` with ``N_e + N_d = budget`` under the bivariate law (Ghorbani et al.,
  arXiv:2109.07740, eq. 2): ``N_e = budget p_e / (p_e + p_d)``, ``N_d = budget p_d / (p_e + p_d)``.

  The closed form of the constrained minimum of ``N_e**-p_e N_d**-p_d`` (``alpha``, ``L_inf`` and the reference
  sizes do not move it). Host-side float64, elementwise over ``budget``.

  Args:
    fit: a :func:`fit_enc_dec` fit or :class:`EncDecParams`.
    budget: total encoder + decoder parameters, scalar or array, > 0.

  Returns:
    ``(N_e, N_d)`` shaped like ``budget``; ``N_e / budget`` is the optimal encoder fraction.

  Raises:
    ValueError: non-positive or non-finite ``budget``, or invalid law parameters.
    TypeError: ``fit`` of another kind.
  """
  p = _as_params(fit)
  budget = _fl._positive_np("budget", budget)  # pylint: disable=protected-access
  share = p.p_e / (p.p_e + p.p_d)
  return budget * share, budget * (1.0 - share)
