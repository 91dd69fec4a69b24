"""Scaling laws in wall-clock time: step time from memory-copy counts, and the Chinchilla loss at a time budget.

Inbar et al., "Time Matters: Scaling Laws for Any Budget" (2024). FLOPs predict wall-clock time poorly, so the paper
predicts the time per training step from the number of memory copies a step makes, with a linear regression
``t_step ~ w * copies(hparams) + b``. A time budget ``T`` then buys ``D(T) = T * tokens_per_step / t_step`` tokens,
and the Chinchilla law ``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al., arXiv:2203.15556, eq. 2)
gives the loss as a function of the hyperparameters and ``T`` alone.

The catalogue marks the paper's exact copy-count formula "to verify", and it is not reproduced here from the paper.
:func:`copy_count` is this module's count of the tensor elements a decoder-only transformer step writes and reads
(derivation in its docstring); the regression itself is the paper's linear form. Host-side (NumPy float64): these
are fits over a handful of measured configurations, not traced computations.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from paperlab.scaling import laws
from paperlab.scaling.fit import Fit

__all__ = ["STEP_TIME_FEATURES", "copy_count", "transformer_flops", "step_time_model", "predict_step_time",
           "loss_at_time"]

STEP_TIME_FEATURES = ("copies", "flops")
_REQUIRED = ("num_layers", "d_model", "seq_len", "batch_size")
_DEFAULTS = {"num_heads": 4, "vocab_size": 256, "mlp_ratio": 4}


def _hparams(hparams: Mapping[str, Any]) -> dict:
  if not isinstance(hparams, Mapping):
    raise ValueError(f"hparams must be a mapping with keys {list(_REQUIRED)} (and optionally "
                     f"{list(_DEFAULTS)}), got {type(hparams).__name__}.")
  missing = [k for k in _REQUIRED if k not in hparams]
  unknown = [k for k in hparams if k not in _REQUIRED and k not in _DEFAULTS]
  if missing or unknown:
    raise ValueError(f"hparams must have keys {list(_REQUIRED)} (optional {list(_DEFAULTS)}); missing {missing}, "
                     f"unknown {unknown}.")
  out = {}
  for k in (*_REQUIRED, *_DEFAULTS):
    arr = np.asarray(hparams.get(k, _DEFAULTS.get(k)), dtype=np.float64)
    if np.any(~np.isfinite(arr) | (arr <= 0)):
      raise ValueError(f"hparams[{k!r}] must be finite and > 0, got {np.ravel(arr)[:5].tolist()}.")
    out[k] = arr
  return out


def _non_embedding_params(h: Mapping[str, np.ndarray]) -> np.ndarray:
  """``N = (4 + 2 mlp_ratio) L d^2`` (attention ``4 d^2``, MLP ``2 r d^2``: ``12 L d^2`` at ratio 4; Kaplan et al.,
  arXiv:2001.08361, Table 1)."""
  return (4 + 2 * h["mlp_ratio"]) * h["num_layers"] * h["d_model"] ** 2


def copy_count(hparams: Mapping[str, Any]) -> np.ndarray:
  """Tensor elements written and read by one training step of a decoder-only transformer (Adam).

  Per layer the forward pass writes ``(10 + 2 r) b s d + 2 b h s^2`` activation elements (LayerNorm, q/k/v,
  attention output and projection, two residuals, a second LayerNorm, the MLP's ``r d`` up-projection and its
  activation, the down-projection; the attention scores and their softmax), the backward pass about twice that,
  so ``3 L ((10 + 2 r) b s d + 2 b h s^2)``; the logits and their gradient ``3 b s V``; and the parameters
  ``P = N + 2 V d`` are moved about 10 times (read forward and backward, gradient written, Adam reads parameter,
  gradient and two moments and writes three). ``r`` is ``mlp_ratio``, ``h`` ``num_heads``, ``V`` ``vocab_size``.
  This is this module's count, not the paper's verified formula (see the module docstring).

  Args:
    hparams: ``num_layers``, ``d_model``, ``seq_len``, ``batch_size`` (scalars or equal-shaped arrays) and
      optionally ``num_heads`` (4), ``vocab_size`` (256), ``mlp_ratio`` (4).

  Returns:
    float64 array of copy counts, broadcast over the hyperparameters.
  """
  h = _hparams(hparams)
  L, d, s, b, r = h["num_layers"], h["d_model"], h["seq_len"], h["batch_size"], h["mlp_ratio"]
  activations = 3 * L * ((10 + 2 * r) * b * s * d + 2 * b * h["num_heads"] * s ** 2)
  params = _non_embedding_params(h) + 2 * h["vocab_size"] * d
  return activations + 3 * b * s * h["vocab_size"] + 10 * params


def transformer_flops(hparams: Mapping[str, Any]) -> np.ndarray:
  """Training FLOPs of one step, ``6 N b s`` (the ``C = 6 N D`` of Kaplan et al. and Chinchilla; ``N`` the
  non-embedding parameters ``(4 + 2 mlp_ratio) L d^2``). Same ``hparams`` as :func:`copy_count`."""
  h = _hparams(hparams)
  return 6 * _non_embedding_params(h) * h["batch_size"] * h["seq_len"]


def _feature(hparams, features: str) -> np.ndarray:
  if features not in STEP_TIME_FEATURES:
    raise ValueError(f"features must be one of {list(STEP_TIME_FEATURES)}, got {features!r}.")
  return copy_count(hparams) if features == "copies" else transformer_flops(hparams)


def step_time_model(hparams: Mapping[str, Any], times: Any, *, features: str = "copies") -> Fit:
  """Least-squares fit of ``t_step = w * x(hparams) + b`` (Inbar et al., 2024: the linear step-time model), with
  ``x`` the :func:`copy_count` (the paper's choice) or, as the FLOPs baseline, :func:`transformer_flops`.

  Args:
    hparams: one entry per measured configuration (arrays of equal length ``n >= 3``; see :func:`copy_count`).
    times: ``(n,)`` measured seconds per step (> 0).
    features: ``"copies"`` or ``"flops"``.

  Returns:
    ``Fit(law="step_time_<features>", params={"w", "b", "r2"}, objective=sum of squared residuals, num_points=n)``;
    ``r2`` is the in-sample coefficient of determination ``1 - SSE / SST``.
  """
  x = np.ravel(_feature(hparams, features))
  t = np.ravel(np.asarray(times, dtype=np.float64))
  if t.shape != x.shape or t.size < 3:
    raise ValueError(f"times must hold one value per configuration (>= 3), got {t.size} times for {x.size} "
                     f"configurations.")
  if np.any(~np.isfinite(t) | (t <= 0)):
    raise ValueError(f"times must be finite and > 0, got {t[~np.isfinite(t) | (t <= 0)][:5].tolist()}.")
  design = np.stack([x, np.ones_like(x)], 1)
  (w, b), *_ = np.linalg.lstsq(design, t, rcond=None)
  sse = float(np.sum((design @ np.array([w, b]) - t) ** 2))
  sst = float(np.sum((t - t.mean()) ** 2))
  return Fit(law=f"step_time_{features}", params={"w": float(w), "b": float(b), "r2": 1 - sse / sst},
             objective=sse, num_points=int(t.size))


def predict_step_time(time_fit: Fit, hparams: Mapping[str, Any]) -> np.ndarray:
  """``w * x(hparams) + b`` of a :func:`step_time_model` fit."""
  if not isinstance(time_fit, Fit) or not time_fit.law.startswith("step_time_"):
    raise ValueError(f"time_fit must be a Fit from step_time_model, got {time_fit!r}.")
  x = _feature(hparams, time_fit.law[len("step_time_"):])
  return time_fit.params["w"] * x + time_fit.params["b"]


def loss_at_time(chinchilla_fit: Fit | laws.ChinchillaParams, time_fit: Fit, hparams: Mapping[str, Any],
                 T: Any) -> np.ndarray:
  """Chinchilla loss after training for ``T`` seconds: ``L(N, D(T))`` with ``D(T) = T * b s / t_step(hparams)``
  (Inbar et al., 2024), ``N`` the non-embedding parameters and ``t_step`` predicted by ``time_fit``.

  With ``t_step = w * 6 N b s`` (the FLOPs model without intercept) this is the compute-based law:
  ``D = C / (6 N)`` for the compute ``C = T / w``.

  Args:
    chinchilla_fit: a :func:`~paperlab.scaling.fit_chinchilla` fit or :class:`~paperlab.scaling.ChinchillaParams`.
    time_fit: a :func:`step_time_model` fit.
    hparams: the configuration(s) (see :func:`copy_count`).
    T: time budget(s) in seconds (> 0).

  Returns:
    float64 array of losses (broadcast over ``hparams`` and ``T``).
  """
  if isinstance(chinchilla_fit, Fit):
    if chinchilla_fit.law != "chinchilla":
      raise ValueError(f"chinchilla_fit must be a Chinchilla fit (law 'chinchilla'), got law {chinchilla_fit.law!r}.")
    chinchilla_fit = laws.ChinchillaParams(*(chinchilla_fit.params[k] for k in ("E", "A", "B", "alpha", "beta")))
  if not isinstance(chinchilla_fit, laws.ChinchillaParams):
    raise ValueError(f"chinchilla_fit must be a Fit from fit_chinchilla or a ChinchillaParams, got "
                     f"{type(chinchilla_fit).__name__}.")
  T = np.asarray(T, dtype=np.float64)
  if np.any(~np.isfinite(T) | (T <= 0)):
    raise ValueError(f"T must be finite and > 0, got {np.ravel(T)[:5].tolist()}.")
  h = _hparams(hparams)
  t_step = predict_step_time(time_fit, hparams)
  if np.any(t_step <= 0):
    raise ValueError(f"time_fit predicts a non-positive step time for these hparams: {np.ravel(t_step)[:5].tolist()}.")
  N = _non_embedding_params(h)
  D = T * h["batch_size"] * h["seq_len"] / t_step
  p = chinchilla_fit
  return p.E + p.A / N ** p.alpha + p.B / D ** p.beta
