"""Hyperparameter scaling laws: the "Step Law" for the optimal learning rate and batch size.

Li et al., "Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in Large Language Model Pretraining",
arXiv:2503.04715, eqs. 5-6 (fitted on 3,700 runs): ``eta_opt(N, D) = 1.79 N**-0.713 D**0.307`` and
``B_opt(D) = 0.58 D**0.571`` (tokens per batch), N non-embedding parameters, D training tokens.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from paperlab.scaling import fit as _fit_lib
from paperlab.scaling import laws

__all__ = ["StepLawConstants", "STEP_LAW", "step_law", "fit_hparam_law"]


class StepLawConstants(NamedTuple):
  """``eta = lr_coef N**lr_n_exp D**lr_d_exp``, ``B = bs_coef D**bs_d_exp`` (Li et al., arXiv:2503.04715)."""

  lr_coef: float = 1.79
  lr_n_exp: float = -0.713
  lr_d_exp: float = 0.307
  bs_coef: float = 0.58
  bs_d_exp: float = 0.571


STEP_LAW = StepLawConstants()


def step_law(N: Any, D: Any, consts: StepLawConstants = STEP_LAW) -> tuple[jax.Array, jax.Array]:
  """Optimal ``(learning_rate, batch_tokens)`` by the Step Law (Li et al., arXiv:2503.04715, eqs. 5-6):
  ``eta = 1.79 N**-0.713 D**0.307``, ``B = 0.58 D**0.571`` (pure jnp, elementwise; N, D > 0)."""
  N, D = laws._positive("N", N), laws._positive("D", D)  # pylint: disable=protected-access
  return consts.lr_coef * N ** consts.lr_n_exp * D ** consts.lr_d_exp, consts.bs_coef * D ** consts.bs_d_exp


def fit_hparam_law(N: Any, D: Any, lr_opt: Any, B_opt: Any | None = None, *, bootstrap: int = 0,
                   confidence: float = 0.95, seed: int = 0) -> _fit_lib.Fit:
  """Fit the Step Law's form by linear least squares in log space (Li et al., arXiv:2503.04715, Sec. 3):
  ``log eta_opt = log lr_coef + lr_n_exp log N + lr_d_exp log D`` and, when ``B_opt`` is given,
  ``log B_opt = log bs_coef + bs_d_exp log D``. Host-side (``numpy.linalg.lstsq``).

  Returns:
    :class:`~paperlab.scaling.Fit` with params ``lr_coef, lr_n_exp, lr_d_exp`` (and ``bs_coef, bs_d_exp``), the
    objective the residual RMSE of ``log eta`` (natural log), and bootstrap intervals when asked.

  Raises:
    ValueError: non-positive or non-finite values, mismatched lengths, fewer than 3 points.
  """
  _fit_lib._check_bootstrap(bootstrap, confidence)  # pylint: disable=protected-access
  names, arrays = ["N", "D", "lr_opt"], [N, D, lr_opt]
  if B_opt is not None:
    names.append("B_opt"), arrays.append(B_opt)
  cols = _fit_lib._points(names, arrays, 3)  # pylint: disable=protected-access
  logs = [np.log(c) for c in cols]
  n = len(logs[0])

  def solve(idx) -> dict:
    X = np.stack([np.ones(len(idx)), logs[0][idx], logs[1][idx]], axis=1)
    coef, *_ = np.linalg.lstsq(X, logs[2][idx], rcond=None)
    out = {"lr_coef": float(np.exp(coef[0])), "lr_n_exp": float(coef[1]), "lr_d_exp": float(coef[2])}
    if B_opt is not None:
      slope, intercept = np.polyfit(logs[1][idx], logs[3][idx], 1)
      out.update(bs_coef=float(np.exp(intercept)), bs_d_exp=float(slope))
    return out

  params = solve(np.arange(n))
  pred = np.log(params["lr_coef"]) + params["lr_n_exp"] * logs[0] + params["lr_d_exp"] * logs[1]
  rmse = float(np.sqrt(np.mean((pred - logs[2]) ** 2)))
  ci = samples = None
  if bootstrap:
    ci, samples = _fit_lib.bootstrap_intervals(solve, n, bootstrap, confidence=confidence, seed=seed)
  return _fit_lib.Fit("hparam_law", params, rmse, n, ci, samples, confidence if bootstrap else None)
