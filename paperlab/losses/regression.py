"""Regression losses (elementwise) and regression-as-classification (HL-Gauss, two-hot).

Elementwise losses take ``(predictions, targets)`` and return an array of their broadcast shape; ``where``
masks entries (masked-out ones are 0).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _check_logits, _masked

__all__ = [
    "squared_error",
    "huber_loss",
    "log_cosh",
    "absolute_error",
    "pinball_loss",
    "squared_log_error",
    "absolute_percentage_error",
    "symmetric_absolute_percentage_error",
    "hl_gauss_target",
    "two_hot_target",
    "histogram_mean",
    "hl_gauss_loss",
]

# optax ships these exactly as the survey defines them.
squared_error = optax.losses.squared_error
huber_loss = optax.losses.huber_loss
log_cosh = optax.losses.log_cosh


def _pair(predictions, targets):
  predictions = _check_logits(jnp.atleast_1d(predictions), "predictions").reshape(jnp.shape(predictions))
  targets = jnp.asarray(targets, predictions.dtype)
  try:
    jnp.broadcast_shapes(predictions.shape, targets.shape)
  except ValueError:
    raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} must be broadcastable.") from None
  return predictions, targets


@_low_precision_in_float32
def absolute_error(predictions: chex.Array, targets: chex.Array, *, where: chex.Array | None = None) -> jax.Array:
  r"""Absolute error :math:`|y - \hat y|` (MAE once averaged).

  References:
    Jadon et al., `A Comprehensive Survey of Regression Based Loss Functions for Time Series Forecasting
    <https://arxiv.org/abs/2211.02989>`_, 2022.
  """
  predictions, targets = _pair(predictions, targets)
  return _masked(jnp.abs(targets - predictions), where)


@_low_precision_in_float32
def pinball_loss(predictions: chex.Array, targets: chex.Array, *, quantile: float = 0.5,
                 where: chex.Array | None = None) -> jax.Array:
  r"""Quantile (pinball) loss :math:`\max(q e, (q - 1) e)`, :math:`e = y - \hat y`.

  Its minimiser over a constant is the ``quantile``-th quantile of the targets; ``quantile=0.5`` is half the
  absolute error.

  References:
    Koenker & Bassett, Regression Quantiles, Econometrica 1978; Jadon et al. (2022)
    <https://arxiv.org/abs/2211.02989>.
  """
  _checks.check_range("quantile", quantile, 0.0, 1.0)
  predictions, targets = _pair(predictions, targets)
  e = targets - predictions
  return _masked(jnp.maximum(quantile * e, (quantile - 1.0) * e), where)


@_low_precision_in_float32
def squared_log_error(predictions: chex.Array, targets: chex.Array, *,
                      where: chex.Array | None = None) -> jax.Array:
  r"""Squared log error :math:`(\log(1 + y) - \log(1 + \hat y))^2` (MSLE once averaged); inputs > -1.

  References:
    Jadon et al. (2022) <https://arxiv.org/abs/2211.02989>.
  """
  predictions, targets = _pair(predictions, targets)
  return _masked((jnp.log1p(targets) - jnp.log1p(predictions)) ** 2, where)


@_low_precision_in_float32
def absolute_percentage_error(predictions: chex.Array, targets: chex.Array, *, eps: float = 1e-8,
                              where: chex.Array | None = None) -> jax.Array:
  r"""Absolute percentage error :math:`|y - \hat y| / \max(|y|, \epsilon)` (a fraction, not x100; MAPE once
  averaged, sklearn's convention).

  References:
    Jadon et al. (2022) <https://arxiv.org/abs/2211.02989>.
  """
  _checks.check_positive("eps", eps)
  predictions, targets = _pair(predictions, targets)
  return _masked(jnp.abs(targets - predictions) / jnp.maximum(jnp.abs(targets), eps), where)


@_low_precision_in_float32
def symmetric_absolute_percentage_error(predictions: chex.Array, targets: chex.Array, *, eps: float = 1e-8,
                                        where: chex.Array | None = None) -> jax.Array:
  r"""Symmetric absolute percentage error :math:`2|y - \hat y| / \max(|y| + |\hat y|, \epsilon)` (sMAPE).

  References:
    Makridakis, Accuracy measures: theoretical and practical concerns, IJF 1993; Jadon et al. (2022).
  """
  _checks.check_positive("eps", eps)
  predictions, targets = _pair(predictions, targets)
  denom = jnp.maximum(jnp.abs(targets) + jnp.abs(predictions), eps)
  return _masked(2.0 * jnp.abs(targets - predictions) / denom, where)


# ----------------------------------------------------------------------------------------------------------
# [544] HL-Gauss: regression as classification over a histogram.


def _check_support(num_bins, v_min, v_max):
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
    raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}.")
  if not float(v_max) > float(v_min):
    raise ValueError(f"v_max must be greater than v_min, got v_min={v_min!r}, v_max={v_max!r}.")


def _centres(num_bins, v_min, v_max, dtype=jnp.float32):
  width = (v_max - v_min) / num_bins
  return jnp.asarray(v_min + width * (np.arange(num_bins) + 0.5), dtype)


def hl_gauss_target(targets: chex.Array, num_bins: int, v_min: float, v_max: float, sigma: float, *,
                    clip_targets: bool = False) -> jax.Array:
  r"""Histogram-loss target: the mass of :math:`N(y, \sigma^2)` in each of ``num_bins`` uniform bins on
  ``[v_min, v_max]``, renormalised to the support.

  .. math:: p_i(y) = \frac{\Phi((z_i - y)/\sigma) - \Phi((z_{i-1} - y)/\sigma)}
                          {\Phi((z_m - y)/\sigma) - \Phi((z_0 - y)/\sigma)}

  The default follows the paper's listing (Farebrother et al. 2024, Listing 1, ``transform_to_probs``), which
  does not clip ``y``. The listing's ``erf`` differences cancel to ``0 / 0`` for targets a few :math:`\sigma`
  outside the support; here the same formula is evaluated in log space (``log_ndtr``, reflected so that the tail
  in use is the lower one), which agrees with the listing wherever the listing is accurate and gives the limit
  (the mass piles up in the outermost bins) beyond. ``clip_targets=True`` clips ``y`` to ``[v_min, v_max]``
  first, as many codebases do.

  Returns:
    ``targets.shape + (num_bins,)`` float32 probabilities.

  References:
    Farebrother et al., `Stop Regressing: Training Value Functions via Classification for Scalable Deep RL
    <https://arxiv.org/abs/2403.03950>`_, ICML 2024; Imani & White (2018).
  """
  _check_support(num_bins, v_min, v_max)
  _checks.check_positive("sigma", sigma)
  if not isinstance(clip_targets, (bool, np.bool_)):
    raise TypeError(f"clip_targets must be a bool, got {clip_targets!r}.")
  y = jnp.asarray(targets, jnp.float32)
  if clip_targets:
    y = jnp.clip(y, v_min, v_max)
  else:  # beyond 100 sigma outside the support the target is one-hot on the outer bin to float32 precision
    y = jnp.clip(y, v_min - 100.0 * sigma, v_max + 100.0 * sigma)
  edges = jnp.linspace(v_min, v_max, num_bins + 1, dtype=jnp.float32)
  u = (edges - y[..., None]) / sigma
  # Reflect u -> -u (bins reversed) for targets below the centre, so that the far bins lie in the lower tail of
  # Phi, where log_ndtr keeps relative precision; the bin masses are unchanged by the reflection.
  flip = (y < 0.5 * (v_min + v_max))[..., None]
  w = jnp.where(flip, -jnp.flip(u, axis=-1), u)
  log_cdf = jax.scipy.special.log_ndtr(w)
  hi, lo = log_cdf[..., 1:], log_cdf[..., :-1]
  log_mass = hi + jnp.log(-jnp.expm1(jnp.minimum(lo - hi, -1e-30)))  # log(Phi(b) - Phi(a)), a < b
  probs = jax.nn.softmax(log_mass, axis=-1)
  return jnp.where(flip, jnp.flip(probs, axis=-1), probs)


def two_hot_target(targets: chex.Array, num_bins: int, v_min: float, v_max: float) -> jax.Array:
  r"""Two-hot target: the mass is split linearly between the two bin centres that bracket ``y``, so the
  histogram mean is ``y`` exactly (after clipping ``y`` to the outermost centres).

  References:
    Farebrother et al., `Stop Regressing <https://arxiv.org/abs/2403.03950>`_, ICML 2024;
    Schrittwieser et al. (MuZero), 2020.
  """
  _check_support(num_bins, v_min, v_max)
  centres = _centres(num_bins, v_min, v_max)
  width = (v_max - v_min) / num_bins
  y = jnp.clip(jnp.asarray(targets, jnp.float32), centres[0], centres[-1])
  pos = (y - centres[0]) / width
  lower = jnp.clip(jnp.floor(pos), 0, num_bins - 2).astype(jnp.int32)
  frac = pos - lower
  return (jax.nn.one_hot(lower, num_bins) * (1.0 - frac)[..., None]
          + jax.nn.one_hot(lower + 1, num_bins) * frac[..., None])


@_low_precision_in_float32
def histogram_mean(logits: chex.Array, v_min: float, v_max: float) -> jax.Array:
  r"""Scalar prediction :math:`\hat y = \sum_i \mathrm{softmax}(\ell)_i c_i` with bin centres :math:`c_i`.

  References:
    Farebrother et al., `Stop Regressing <https://arxiv.org/abs/2403.03950>`_, ICML 2024.
  """
  logits = _check_logits(logits)
  _check_support(logits.shape[-1], v_min, v_max)
  return jax.nn.softmax(logits, axis=-1) @ _centres(logits.shape[-1], v_min, v_max, logits.dtype)


@_low_precision_in_float32
def hl_gauss_loss(logits: chex.Array, targets: chex.Array, *, v_min: float, v_max: float, sigma_ratio: float = 0.75,
                  clip_targets: bool = False, where: chex.Array | None = None) -> jax.Array:
  r"""HL-Gauss loss: cross-entropy between ``softmax(logits)`` and :func:`hl_gauss_target`.

  The number of bins is ``logits.shape[-1]``; :math:`\sigma` = ``sigma_ratio`` x bin width (the paper
  recommends 0.75). Predict with :func:`histogram_mean`. Targets are not clipped to ``[v_min, v_max]``, as in
  the paper's listing; ``clip_targets=True`` clips them first (see :func:`hl_gauss_target`).

  Args:
    logits: ``[..., num_bins]``.
    targets: scalar regression targets with shape ``logits.shape[:-1]``.

  References:
    Farebrother et al., `Stop Regressing: Training Value Functions via Classification for Scalable Deep RL
    <https://arxiv.org/abs/2403.03950>`_, ICML 2024, sigma/width = 0.75.
  """
  logits = _check_logits(logits)
  targets = jnp.asarray(targets)
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"targets must have shape {logits.shape[:-1]} (logits without the bin axis), "
                     f"got {targets.shape}.")
  _checks.check_positive("sigma_ratio", sigma_ratio)
  num_bins = logits.shape[-1]
  _check_support(num_bins, v_min, v_max)
  sigma = sigma_ratio * (v_max - v_min) / num_bins
  probs = jax.lax.stop_gradient(hl_gauss_target(targets, num_bins, v_min, v_max, sigma,
                                                clip_targets=clip_targets)).astype(logits.dtype)
  return _masked(optax.losses.softmax_cross_entropy(logits, probs), where)
