"""Calibration metrics (ECE, AdaECE, classwise ECE, MCE, Brier) and post-hoc temperature scaling.

Metrics return scalars and are jittable (binning by ``jnp.digitize`` / sorting and ``segment_sum``). ``probs`` are
``[n, num_classes]`` class probabilities, ``labels`` ``[n]`` integer classes; ``where`` masks examples.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _check_integer_labels, _check_logits

__all__ = [
    "expected_calibration_error",
    "max_calibration_error",
    "classwise_ece",
    "brier_score",
    "fit_temperature",
]


def _inputs(probs, labels, where):
  probs = _check_logits(probs, "probs")
  if probs.ndim != 2:
    raise ValueError(f"probs must be [num_examples, num_classes], got {probs.shape}.")
  labels = _check_integer_labels(probs, labels)
  weight = jnp.ones(probs.shape[:1], probs.dtype) if where is None else jnp.asarray(where, probs.dtype)
  if weight.shape != probs.shape[:1]:
    raise ValueError(f"where must have shape {probs.shape[:1]}, got {weight.shape}.")
  return probs, labels, weight


def _bin_index(conf, weight, num_bins, binning):
  if binning == "width":
    # Bins (k/B, (k+1)/B]; confidence 0 goes to the first bin.
    return jnp.clip(jnp.ceil(conf * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  # Equal mass: rank the (kept) confidences and cut the ranks into num_bins equal-count groups.
  order = jnp.argsort(jnp.where(weight > 0, conf, jnp.inf), stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  n_kept = jnp.maximum(jnp.sum(weight > 0), 1)
  return jnp.clip((rank * num_bins) // n_kept, 0, num_bins - 1).astype(jnp.int32)


def _bin_gaps(conf, correct, weight, num_bins, binning):
  idx = _bin_index(conf, weight, num_bins, binning)
  count = jax.ops.segment_sum(weight, idx, num_bins)
  conf_sum = jax.ops.segment_sum(weight * conf, idx, num_bins)
  acc_sum = jax.ops.segment_sum(weight * correct, idx, num_bins)
  gap = jnp.abs(acc_sum - conf_sum) / jnp.maximum(count, 1e-12)
  return gap, count


def _check_bins(num_bins, binning):
  if not isinstance(num_bins, int) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}.")
  _checks.check_choice("binning", binning, ("width", "mass"))


@_low_precision_in_float32
def expected_calibration_error(probs: chex.Array, labels: chex.Array, *, num_bins: int = 15,
                               binning: str = "width", where: chex.Array | None = None) -> jax.Array:
  r"""Expected calibration error of the top-1 prediction.

  .. math:: ECE = \sum_b \frac{|B_b|}{n} \big|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big|

  over ``num_bins`` equal-width confidence bins :math:`(k/B, (k+1)/B]` (``binning="width"``, Guo et al.'s ECE)
  or equal-mass bins (``binning="mass"``, AdaECE).

  References:
    Guo et al., `On Calibration of Modern Neural Networks <https://arxiv.org/abs/1706.04599>`_, ICML 2017;
    Tao et al., A Benchmark Study on Calibration, ICLR 2024.
  """
  _check_bins(num_bins, binning)
  probs, labels, weight = _inputs(probs, labels, where)
  conf = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
  gap, count = _bin_gaps(conf, correct, weight, num_bins, binning)
  return jnp.sum(gap * count) / jnp.maximum(jnp.sum(weight), 1e-12)


@_low_precision_in_float32
def max_calibration_error(probs: chex.Array, labels: chex.Array, *, num_bins: int = 15, binning: str = "width",
                          where: chex.Array | None = None) -> jax.Array:
  r"""Maximum calibration error :math:`\max_b |\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|` over non-empty bins.

  References:
    Naeini et al., Obtaining Well Calibrated Probabilities Using Bayesian Binning, AAAI 2015; Guo et al. (2017).
  """
  _check_bins(num_bins, binning)
  probs, labels, weight = _inputs(probs, labels, where)
  conf = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
  gap, count = _bin_gaps(conf, correct, weight, num_bins, binning)
  return jnp.max(jnp.where(count > 0, gap, 0.0))


@_low_precision_in_float32
def classwise_ece(probs: chex.Array, labels: chex.Array, *, num_bins: int = 15, binning: str = "width",
                  where: chex.Array | None = None) -> jax.Array:
  r"""Classwise ECE: the mean over classes ``k`` of the ECE of the one-vs-rest probabilities :math:`p_k`
  against the indicators :math:`[y = k]`.

  References:
    Kull et al., `Beyond temperature scaling <https://arxiv.org/abs/1910.12656>`_, NeurIPS 2019;
    Tao et al. (2023).
  """
  _check_bins(num_bins, binning)
  probs, labels, weight = _inputs(probs, labels, where)
  onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)

  def per_class(p_k, y_k):
    gap, count = _bin_gaps(p_k, y_k, weight, num_bins, binning)
    return jnp.sum(gap * count) / jnp.maximum(jnp.sum(weight), 1e-12)

  return jnp.mean(jax.vmap(per_class, in_axes=(1, 1))(probs, onehot))


@_low_precision_in_float32
def brier_score(probs: chex.Array, labels: chex.Array, *, where: chex.Array | None = None) -> jax.Array:
  r"""Multiclass Brier score :math:`\frac1n \sum_i \sum_k (p_{ik} - [y_i = k])^2`.

  References:
    Brier, Verification of forecasts expressed in terms of probability, 1950; Tao et al. (2023).
  """
  probs, labels, weight = _inputs(probs, labels, None if where is None else where)
  onehot = jax.nn.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
  per_example = jnp.sum((probs - onehot) ** 2, axis=-1)
  return jnp.sum(weight * per_example) / jnp.maximum(jnp.sum(weight), 1e-12)


@_low_precision_in_float32
def fit_temperature(logits: chex.Array, labels: chex.Array, *, min_temperature: float = 1e-2,
                    max_temperature: float = 1e2, num_iters: int = 60,
                    where: chex.Array | None = None) -> jax.Array:
  r"""Temperature scaling: :math:`T^* = \arg\min_T \mathrm{NLL}(\mathrm{logits}/T)` on held-out data.

  The NLL is convex in :math:`\beta = 1/T` (a log-sum-exp of functions linear in :math:`\beta` minus a linear
  term), so the minimiser is found by bisection on the sign of :math:`d\,\mathrm{NLL}/d\beta`, in
  :math:`\log\beta`, within ``[min_temperature, max_temperature]``. Jittable.

  References:
    Guo et al., `On Calibration of Modern Neural Networks <https://arxiv.org/abs/1706.04599>`_, ICML 2017,
    Sec. 4.2.
  """
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels)
  _checks.check_positive("min_temperature", min_temperature)
  if not max_temperature > min_temperature:
    raise ValueError(f"max_temperature must exceed min_temperature, got {max_temperature!r}.")
  weight = jnp.ones(labels.shape, logits.dtype) if where is None else jnp.asarray(where, logits.dtype)
  if weight.shape != labels.shape:
    raise ValueError(f"where must be a mask over examples of shape {labels.shape}, got {weight.shape}.")
  z_y = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]

  def slope(log_beta):
    p = jax.nn.softmax(jnp.exp(log_beta) * logits, axis=-1)
    return jnp.sum(weight * (jnp.sum(p * logits, -1) - z_y))  # d NLL / d beta (up to 1/n)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    up = slope(mid) < 0  # still descending: the minimiser is at larger beta
    return jnp.where(up, mid, lo), jnp.where(up, hi, mid)

  lo, hi = jnp.log(1.0 / max_temperature), jnp.log(1.0 / min_temperature)
  lo, hi = jax.lax.fori_loop(0, num_iters, body, (jnp.asarray(lo, logits.dtype), jnp.asarray(hi, logits.dtype)))
  return jnp.exp(-0.5 * (lo + hi))
