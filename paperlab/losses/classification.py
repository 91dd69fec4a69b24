"""Per-example multiclass classification losses in the ``optax.losses`` style.

Every loss takes ``logits`` first and labels second and returns one value per example (no batch reduction).
``*_with_integer_labels`` variants take integer class ids; the base forms take one-hot or soft labels.
``where`` is an optional boolean mask over examples (broadcastable to the output); masked-out entries are 0, so
``loss.sum() / where.sum()`` equals the mean over the kept examples. As in ``optax.losses.softmax_cross_entropy``,
the softmax losses also take a ``where`` shaped like the logits: a mask over classes (masked classes are left out of
the softmax and of the sums over classes; the label's class must be kept; an example without kept classes gives
0). Losses that cannot honour a class mask refuse it with a ``ValueError`` naming ``where``. Half-precision
(bfloat16/float16) inputs are computed in float32 and the result is returned in the input's dtype.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab import _checks

__all__ = [
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "softmax_focal_loss_with_integer_labels",
    "focal_prior_bias",
    "poly_loss_cross_entropy",
    "poly_loss_cross_entropy_with_integer_labels",
    "poly1_sigmoid_focal_loss",
    "squentropy",
    "squentropy_with_integer_labels",
    "z_loss_with_integer_labels",
    "logsumexp_penalty",
    "encouraging_loss",
    "encouraging_loss_with_integer_labels",
    "one_vs_rest_loss_with_integer_labels",
    "switching_ovr_loss_with_integer_labels",
    "ensloss_surrogate",
    "ensloss_boxcox_derivatives",
    "sample_calibrated_derivative",
]

# optax already ships these exactly as the papers define them; re-exported so users find them here.
sigmoid_focal_loss = optax.losses.sigmoid_focal_loss
poly_loss_cross_entropy = optax.losses.poly_loss_cross_entropy


# ----------------------------------------------------------------------------------------------------------
# Shared input handling (private; imported by the sibling loss modules).


_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _low_precision_in_float32(fn: Callable) -> Callable:
  """Compute in float32 when array arguments are bfloat16/float16; return the first floating argument's dtype.

  ``optax.losses`` returns the input dtype; the losses here take logs, powers and normalisers that overflow or
  lose all precision in half precision (NaN gradients in float16 at ordinary logits), so they upcast inside
  and cast the (per-example) result back. Only array arguments are touched; Python scalars stay as they are.
  """

  def _is_low(a):
    return isinstance(a, (jax.Array, np.ndarray)) and a.dtype in _LOW_PRECISION

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    first = next((a for a in args if isinstance(a, (jax.Array, np.ndarray))
                  and jnp.issubdtype(a.dtype, jnp.floating)), None)
    if first is None or first.dtype not in _LOW_PRECISION:
      if not any(_is_low(a) for a in (*args, *kwargs.values())):
        return fn(*args, **kwargs)
    up = lambda a: jnp.asarray(a, jnp.float32) if _is_low(a) else a
    out = fn(*(up(a) for a in args), **{k: up(v) for k, v in kwargs.items()})
    if first is None or first.dtype not in _LOW_PRECISION:
      return out
    down = lambda o: o.astype(first.dtype) if (isinstance(o, jax.Array)
                                               and jnp.issubdtype(o.dtype, jnp.floating)) else o
    return jax.tree.map(down, out)

  return wrapper


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_logits(logits: Any, name: str = "logits") -> jax.Array:
  logits = jnp.asarray(logits)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array, got dtype {logits.dtype}.")
  if logits.ndim < 1:
    raise ValueError(f"{name} must have at least one (class) axis, got a scalar.")
  return logits


def _check_integer_labels(logits: jax.Array, labels: Any, axis: int = -1) -> jax.Array:
  """Integer labels with the shape of ``logits`` minus the class axis, in ``[0, num_classes)``."""
  labels = jnp.asarray(labels) if not isinstance(labels, jax.core.Tracer) else labels
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be an integer array of class ids, got dtype {labels.dtype}; "
                    "use the variant without '_with_integer_labels' for one-hot or soft labels.")
  expected = logits.shape[:axis % logits.ndim] + logits.shape[axis % logits.ndim + 1:]
  if labels.shape != expected:
    raise ValueError(f"labels must have shape {expected} (logits shape {logits.shape} without the class axis), "
                     f"got {labels.shape}.")
  num_classes = logits.shape[axis]
  if _is_concrete(labels) and labels.size:
    host = np.asarray(labels)
    lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}].")
  return labels


def _check_soft_labels(logits: jax.Array, labels: Any) -> jax.Array:
  labels = jnp.asarray(labels)
  if labels.shape != logits.shape:
    raise ValueError(f"labels must have the shape of logits {logits.shape} (one-hot or soft labels), "
                     f"got {labels.shape}.")
  return labels.astype(logits.dtype)


def _check_gamma(gamma: Any, name: str = "gamma") -> Any:
  return _checks.check_non_negative(name, gamma)


def _mask(where, shape) -> jax.Array:
  """A boolean mask over examples broadcast to ``shape`` (all True for ``None``), for functions without class masks."""
  if where is None:
    return jnp.ones(shape, bool)
  where = jnp.asarray(where, bool)
  try:
    return jnp.broadcast_to(where, shape)
  except ValueError:
    raise ValueError(f"where must be a mask broadcastable to the per-example shape {shape}, got {where.shape} "
                     "(this function takes no mask over classes).") from None


def _masked(loss: jax.Array, where: Any) -> jax.Array:
  """Zero the masked-out entries (gradients to them are exactly zero)."""
  if where is None:
    return loss
  where = jnp.asarray(where)
  try:
    ok = jnp.broadcast_shapes(where.shape, loss.shape) == loss.shape
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"where must be broadcastable to the per-example loss shape {loss.shape}, got "
                     f"{where.shape} (this loss does not take a mask over classes).")
  return jnp.where(where, loss, jnp.zeros_like(loss))


def _class_where(logits: jax.Array, where: Any, axis: int = -1) -> tuple[jax.Array | None, Any]:
  """Split ``where`` as ``optax.losses.softmax_cross_entropy`` does.

  A mask with as many dimensions as ``logits`` selects *classes* (broadcast to the logits' shape): the softmax
  and the sums over classes run over the kept classes only, and an example with no kept class gets loss 0.
  Any other mask selects examples. Returns ``(class_mask, example_where)``; ``class_mask`` has the class axis
  last (``None`` for an example mask), and rows without a kept class are all True there (so nothing is
  computed from an empty set; their loss is zeroed through ``example_where``).
  """
  if where is None:
    return None, None
  where = jnp.asarray(where)
  if where.ndim != logits.ndim:
    return None, where
  try:
    mask = jnp.broadcast_to(where, logits.shape).astype(bool)
  except ValueError:
    raise ValueError(f"where with {where.ndim} dimensions masks classes and must broadcast to the logits' shape "
                     f"{logits.shape}, got {where.shape}; pass a mask over examples to mask examples.") from None
  mask = jnp.moveaxis(mask, axis, -1)
  kept = jnp.any(mask, axis=-1)
  return mask | ~kept[..., None], kept


def _masked_log_softmax(z: jax.Array, class_mask: jax.Array | None) -> jax.Array:
  """``log_softmax`` over the last axis restricted to the kept classes (masked classes: -inf)."""
  if class_mask is None:
    return jax.nn.log_softmax(z, axis=-1)
  return jax.nn.log_softmax(z, axis=-1, where=class_mask)


def _sum_classes(values: jax.Array, class_mask: jax.Array | None) -> jax.Array:
  """Sum over the last (class) axis, over the kept classes only."""
  if class_mask is None:
    return jnp.sum(values, axis=-1)
  return jnp.sum(jnp.where(class_mask, values, jnp.zeros_like(values)), axis=-1)


def _take(values: jax.Array, labels: jax.Array) -> jax.Array:
  """``values[..., labels]`` along the last axis."""
  return jnp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def _one_minus_exp(log_p: jax.Array) -> jax.Array:
  """``1 - exp(log_p)`` without cancellation near ``log_p = 0``."""
  return -jnp.expm1(log_p)


def _safe_pow(base: jax.Array, exponent: Any) -> jax.Array:
  """``base ** exponent`` for ``base >= 0`` whose gradient is finite at ``base = 0`` (0 there for exponent>0)."""
  positive = base > 0
  safe = jnp.where(positive, base, jnp.ones_like(base))
  at_zero = jnp.where(jnp.asarray(exponent) == 0, 1.0, 0.0).astype(base.dtype)
  return jnp.where(positive, safe ** exponent, at_zero)


def _alpha_weights(alpha: Any, num_classes: int, dtype) -> jax.Array | None:
  if alpha is None:
    return None
  alpha = jnp.asarray(alpha, dtype)
  if alpha.ndim > 1 or (alpha.ndim == 1 and alpha.shape[0] != num_classes):
    raise ValueError(f"alpha must be None, a scalar or a vector of length num_classes={num_classes}, "
                     f"got shape {alpha.shape}.")
  if _is_concrete(alpha) and alpha.size and float(jnp.min(alpha)) < 0:
    raise ValueError(f"alpha must be non-negative, got {alpha}.")
  return alpha


# ----------------------------------------------------------------------------------------------------------
# [39] Focal loss (softmax form).


@_low_precision_in_float32
def softmax_focal_loss(logits: chex.Array, labels: chex.Array, *, gamma: float = 2.0, alpha: Any = None,
                       axis: int = -1, where: chex.Array | None = None) -> jax.Array:
  r"""Multiclass (softmax) focal loss with one-hot or soft labels.

  .. math:: FL = -\sum_k y_k \, \alpha_k (1 - p_k)^\gamma \log p_k, \quad p = \mathrm{softmax}(z)

  which for one-hot labels is the paper's :math:`-\alpha_y (1-p_y)^\gamma \log p_y`. Computed in log space
  from ``log_softmax`` (``1 - p`` as ``-expm1(log p)``), so gradients stay finite at logits of :math:`\pm 10^4`.
  With ``gamma=0`` and ``alpha=None`` it is ``optax.losses.softmax_cross_entropy``.

  Args:
    logits: ``[..., num_classes]`` unnormalised scores.
    labels: one-hot or soft labels with the shape of ``logits``.
    gamma: focusing parameter :math:`\gamma \ge 0` (paper: 2).
    alpha: ``None`` (no class weighting), a scalar, or a ``[num_classes]`` vector of class weights
      :math:`\alpha_k` (the paper uses 0.25 for the binary detection case).
    axis: the class axis.
    where: optional boolean mask over examples; masked-out entries are 0.

  Returns:
    Per-example loss with the shape of ``logits`` minus ``axis``.

  References:
    Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_, ICCV 2017.
  """
  logits = _check_logits(logits)
  labels = jnp.moveaxis(_check_soft_labels(logits, labels), axis, -1)
  class_mask, where = _class_where(logits, where, axis)
  logits = jnp.moveaxis(logits, axis, -1)
  _check_gamma(gamma)
  log_p = _masked_log_softmax(logits, class_mask)
  weight = _safe_pow(_one_minus_exp(log_p), gamma)
  a = _alpha_weights(alpha, logits.shape[-1], logits.dtype)
  if a is not None:
    weight = weight * a
  used = labels != 0 if class_mask is None else (labels != 0) & class_mask
  per_class = jnp.where(used, -labels * weight * log_p, 0.0)
  return _masked(per_class.sum(-1), where)


@_low_precision_in_float32
def softmax_focal_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, gamma: float = 2.0,
                                           alpha: Any = None, axis: int = -1,
                                           where: chex.Array | None = None) -> jax.Array:
  r"""Multiclass focal loss :math:`-\alpha_y (1 - p_y)^\gamma \log p_y` with integer labels.

  See :func:`softmax_focal_loss`; with ``gamma=0`` and ``alpha=None`` this is
  ``optax.losses.softmax_cross_entropy_with_integer_labels``.

  References:
    Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_, ICCV 2017.
  """
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  class_mask, where = _class_where(logits, where, axis)
  logits = jnp.moveaxis(logits, axis, -1)
  _check_gamma(gamma)
  log_py = _take(_masked_log_softmax(logits, class_mask), labels)
  loss = -_safe_pow(_one_minus_exp(log_py), gamma) * log_py
  a = _alpha_weights(alpha, logits.shape[-1], logits.dtype)
  if a is not None:
    loss = loss * (a if a.ndim == 0 else a[labels])
  return _masked(loss, where)


def focal_prior_bias(pi: float = 0.01) -> float:
  r"""Classifier bias init :math:`b = -\log((1 - \pi)/\pi)` so every anchor starts with foreground prob. ``pi``.

  References:
    Lin et al., `Focal Loss for Dense Object Detection <https://arxiv.org/abs/1708.02002>`_, Sec. 4.1 (pi=0.01).
  """
  _checks.check_range("pi", pi, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  return float(-np.log((1.0 - pi) / pi))


# ----------------------------------------------------------------------------------------------------------
# [238] PolyLoss.


@_low_precision_in_float32
def poly_loss_cross_entropy_with_integer_labels(logits: chex.Array, labels: chex.Array, *, epsilon: float = 2.0,
                                                axis: int = -1, where: chex.Array | None = None) -> jax.Array:
  r"""Poly-1 cross-entropy :math:`-\log p_y + \epsilon (1 - p_y)` with integer labels.

  The integer-label twin of ``optax.losses.poly_loss_cross_entropy`` (which takes one-hot labels).

  Args:
    epsilon: coefficient of the first polynomial term (paper: 2 for ImageNet; must be >= -1 for the loss to
      stay monotone, not enforced).

  References:
    Leng et al., `PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions
    <https://arxiv.org/abs/2204.12511>`_, ICLR 2022.
  """
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  class_mask, where = _class_where(logits, where, axis)
  log_py = _take(_masked_log_softmax(jnp.moveaxis(logits, axis, -1), class_mask), labels)
  return _masked(-log_py + epsilon * _one_minus_exp(log_py), where)


@_low_precision_in_float32
def poly1_sigmoid_focal_loss(logits: chex.Array, labels: chex.Array, *, epsilon: float = -1.0, gamma: float = 2.0,
                             alpha: float | None = 0.25, where: chex.Array | None = None) -> jax.Array:
  r"""Poly-1 focal loss :math:`FL_\gamma + \epsilon (1 - p_t)^{\gamma + 1}`, elementwise like
  ``optax.losses.sigmoid_focal_loss`` (which it builds on).

  The polynomial term uses the same :math:`\alpha_t` weighting as the focal term (as in the paper's code).
  Defaults are the paper's detection setting (:math:`\epsilon=-1, \gamma=2, \alpha=0.25`).

  References:
    Leng et al., `PolyLoss <https://arxiv.org/abs/2204.12511>`_, ICLR 2022.
  """
  logits = _check_logits(logits)
  labels = jnp.asarray(labels, logits.dtype)
  _check_gamma(gamma)
  if alpha is not None:
    _checks.check_range("alpha", alpha, 0.0, 1.0)
  fl = optax.losses.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)
  # 1 - p_t, computed from log-sigmoids of the right sign.
  one_minus_pt = labels * jax.nn.sigmoid(-logits) + (1 - labels) * jax.nn.sigmoid(logits)
  poly = epsilon * _safe_pow(one_minus_pt, gamma + 1.0)
  if alpha is not None:
    poly = poly * (labels * alpha + (1 - labels) * (1 - alpha))
  return _masked(fl + poly, where)


# ----------------------------------------------------------------------------------------------------------
# [155] Squentropy.


@_low_precision_in_float32
def squentropy(logits: chex.Array, labels: chex.Array, *, axis: int = -1,
               where: chex.Array | None = None) -> jax.Array:
  r"""Squentropy: cross-entropy plus the mean squared *wrong-class* logit.

  .. math:: L = -\sum_k y_k \log \mathrm{softmax}(f)_k + \frac{1}{C-1} \sum_k (1 - y_k) f_k^2

  on raw logits :math:`f`; for one-hot labels the second term averages :math:`f_j^2` over :math:`j \ne y`.
  No hyperparameters.

  References:
    Hui, Belkin & Wright, `Cut your Losses with Squentropy <https://arxiv.org/abs/2302.03952>`_, ICML 2023.
  """
  logits = _check_logits(logits)
  labels = _check_soft_labels(logits, labels)
  num_classes = logits.shape[axis]
  if num_classes < 2:
    raise ValueError(f"squentropy needs at least 2 classes, got {num_classes}.")
  ce = optax.losses.softmax_cross_entropy(logits, labels, axis=axis)
  square = jnp.sum((1.0 - labels) * logits ** 2, axis=axis) / (num_classes - 1)
  return _masked(ce + square, where)


@_low_precision_in_float32
def squentropy_with_integer_labels(logits: chex.Array, labels: chex.Array, *, axis: int = -1,
                                   where: chex.Array | None = None) -> jax.Array:
  r"""Squentropy :math:`-\log p_y + \frac{1}{C-1}\sum_{j \ne y} f_j^2` with integer labels.

  References:
    Hui, Belkin & Wright, `Cut your Losses with Squentropy <https://arxiv.org/abs/2302.03952>`_, ICML 2023.
  """
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  num_classes = logits.shape[axis]
  if num_classes < 2:
    raise ValueError(f"squentropy needs at least 2 classes, got {num_classes}.")
  z = jnp.moveaxis(logits, axis, -1)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)
  square = (jnp.sum(z ** 2, axis=-1) - _take(z, labels) ** 2) / (num_classes - 1)
  return _masked(ce + square, where)


# ----------------------------------------------------------------------------------------------------------
# [148] Spherical Z-loss, and PaLM's log-partition penalty (a different thing).


@_low_precision_in_float32
def z_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, a: float = 1.0, b: float = 1.0,
                               eps: float = 1e-6, axis: int = -1, where: chex.Array | None = None) -> jax.Array:
  r"""Z-loss: a shift- and scale-invariant loss of the spherical family.

  .. math:: z_c = \frac{o_c - \mu(o)}{\sigma(o)}, \qquad L = \frac{1}{a}\,\mathrm{softplus}\big(a (b - z_y)\big)

  with :math:`\mu, \sigma` the mean and standard deviation of the logits over classes (``eps`` is added to
  the variance). ``loss(s * o + t) == loss(o)`` for ``s > 0``; as ``a -> inf`` it tends to the hinge
  :math:`[b - z_y]_+`. ``a`` and ``b`` are tuned on validation in the paper.

  References:
    de Brébisson & Vincent, `The Z-loss: a shift and scale invariant classification loss belonging to the
    Spherical Family <https://arxiv.org/abs/1604.08859>`_, 2016.
  """
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  _checks.check_positive("a", a)
  _checks.check_non_negative("eps", eps)
  o = jnp.moveaxis(logits, axis, -1)
  mu = jnp.mean(o, axis=-1, keepdims=True)
  sigma = jnp.sqrt(jnp.mean((o - mu) ** 2, axis=-1, keepdims=True) + eps)
  z_y = _take((o - mu) / sigma, labels)
  return _masked(jax.nn.softplus(a * (b - z_y)) / a, where)


@_low_precision_in_float32
def logsumexp_penalty(logits: chex.Array, *, weight: float = 1e-4, axis: int = -1,
                      where: chex.Array | None = None) -> jax.Array:
  r"""PaLM's auxiliary "z-loss" :math:`w \cdot (\log Z)^2`, :math:`\log Z = \mathrm{logsumexp}(z)`, per example.

  It keeps the softmax normaliser near 1 (log Z near 0). Not to be confused with the spherical
  :func:`z_loss_with_integer_labels`.

  References:
    Chowdhery et al., `PaLM: Scaling Language Modeling with Pathways <https://arxiv.org/abs/2204.02311>`_,
    2022 (weight 1e-4).
  """
  logits = _check_logits(logits)
  _checks.check_non_negative("weight", weight)
  return _masked(weight * jax.nn.logsumexp(logits, axis=axis) ** 2, where)


# ----------------------------------------------------------------------------------------------------------
# [257] Encouraging loss.


def _encouraging_bonus(log_p: jax.Array, log_end: float) -> jax.Array:
  one_minus_p = _one_minus_exp(log_p)
  bonus = jnp.log(jnp.maximum(one_minus_p, 1e-5))
  if log_end < 1.0:
    p = jnp.exp(log_p)
    tangent = np.log(1.0 - log_end) - (p - log_end) / (1.0 - log_end)
    bonus = jnp.where(p > log_end, tangent, bonus)
  return bonus


@_low_precision_in_float32
def encouraging_loss(logits: chex.Array, labels: chex.Array, *, log_end: float = 0.75, axis: int = -1,
                     where: chex.Array | None = None) -> jax.Array:
  r"""Encouraging loss with one-hot or soft labels (e.g. from ``optax.smooth_labels``).

  .. math:: EL = \sum_k y_k \big(-\log p_k + \log(1 - p_k)\big)

  The bonus :math:`\log(1-p)` (clamped at ``1e-5``) rewards well-classified examples instead of letting their
  gradient vanish; for :math:`p > LE` (``log_end``) it is replaced by its tangent at ``LE``, the
  conservative form. ``log_end=1`` gives the plain bonus.

  References:
    Zhao et al., `Well-classified Examples are Underestimated in Classification with Deep Neural Networks
    <https://arxiv.org/abs/2110.06537>`_, AAAI 2022 (conservative bonus, default LE = 0.75).
  """
  logits = _check_logits(logits)
  labels = _check_soft_labels(logits, labels)
  _checks.check_range("log_end", log_end, 0.0, 1.0, low_inclusive=False)
  log_p = jax.nn.log_softmax(logits, axis=axis)
  per_class = labels * (-log_p + _encouraging_bonus(log_p, float(log_end)))
  return _masked(jnp.sum(jnp.where(labels != 0, per_class, 0.0), axis=axis), where)


@_low_precision_in_float32
def encouraging_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, log_end: float = 0.75,
                                         axis: int = -1, where: chex.Array | None = None) -> jax.Array:
  r"""Encouraging loss :math:`-\log p_y + \mathrm{bonus}(p_y)` with integer labels; see :func:`encouraging_loss`.

  References:
    Zhao et al., `Well-classified Examples are Underestimated in Classification with Deep Neural Networks
    <https://arxiv.org/abs/2110.06537>`_, AAAI 2022.
  """
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  _checks.check_range("log_end", log_end, 0.0, 1.0, low_inclusive=False)
  class_mask, where = _class_where(logits, where, axis)
  log_py = _take(_masked_log_softmax(jnp.moveaxis(logits, axis, -1), class_mask), labels)
  return _masked(-log_py + _encouraging_bonus(log_py, float(log_end)), where)


# ----------------------------------------------------------------------------------------------------------
# [153] One-vs-the-rest and switching OVR.


@_low_precision_in_float32
def one_vs_rest_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *,
                                         where: chex.Array | None = None) -> jax.Array:
  r"""One-vs-the-rest loss :math:`\mathrm{softplus}(-z_y) + \sum_{k \ne y} \mathrm{softplus}(z_k)`.

  Independent sigmoid cross-entropy on one-hot targets, summed over classes
  (``optax.losses.sigmoid_binary_cross_entropy(logits, one_hot).sum(-1)``). Classes are on the last axis.

  References:
    Kanai et al., `One-vs-the-Rest Loss to Focus on Important Samples in Adversarial Training
    <https://arxiv.org/abs/2207.10283>`_, ICML 2023.
  """
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels)
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return _masked(optax.losses.sigmoid_binary_cross_entropy(logits, one_hot).sum(-1), where)


@_low_precision_in_float32
def switching_ovr_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, switch_ratio: float = 0.4,
                                           where: chex.Array | None = None) -> jax.Array:
  r"""Switching one-vs-the-rest (SOVR): OVR on the ``switch_ratio`` fraction of the batch with the smallest
  logit margin :math:`z_y - \max_{k \ne y} z_k` ("important" samples), cross-entropy on the rest.

  ``logits`` is ``[batch, num_classes]``; the ranking is over the (unmasked) batch and carries no gradient.
  ``switch_ratio=0`` is CE and ``switch_ratio=1`` is OVR. The paper's M is not verified here (default 0.4).

  References:
    Kanai et al., `One-vs-the-Rest Loss to Focus on Important Samples in Adversarial Training
    <https://arxiv.org/abs/2207.10283>`_, ICML 2023.
  """
  logits = _check_logits(logits)
  if logits.ndim != 2:
    raise ValueError(f"logits must be [batch, num_classes] (the switch ranks the batch), got {logits.shape}.")
  labels = _check_integer_labels(logits, labels)
  _checks.check_range("switch_ratio", switch_ratio, 0.0, 1.0)
  n = logits.shape[0]
  if where is not None and jnp.shape(where) not in ((), (1,), (n,)):
    raise ValueError(f"where must be a mask over the batch of shape ({n},), got {jnp.shape(where)} (the switch "
                     "ranks examples; there is no mask over classes).")
  keep = jnp.ones((n,), bool) if where is None else jnp.broadcast_to(jnp.asarray(where, bool), (n,))
  z = jax.lax.stop_gradient(logits)
  z_y = _take(z, labels)
  others = jnp.where(jax.nn.one_hot(labels, z.shape[-1], dtype=bool), -jnp.inf, z)
  margin = jnp.where(keep, z_y - jnp.max(others, axis=-1), jnp.inf)
  rank = jnp.argsort(jnp.argsort(margin, stable=True), stable=True)
  num_ovr = jnp.round(switch_ratio * keep.sum()).astype(jnp.int32)
  use_ovr = rank < num_ovr
  ovr = one_vs_rest_loss_with_integer_labels(logits, labels)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  return _masked(jnp.where(use_ovr, ovr, ce), keep)


# ----------------------------------------------------------------------------------------------------------
# [170] EnsLoss: stochastic ensembles of calibrated margin losses (binary).


def sample_calibrated_derivative(key: chex.PRNGKey, *, generator: str = "random_cdf"):
  r"""Sample the derivative :math:`\partial\phi` of a random convex, classification-calibrated margin loss.

  For a margin loss :math:`\phi(m)` (``m = y f``, ``y`` in {-1, +1}), convexity and calibration reduce to
  :math:`\phi'` non-decreasing with :math:`\phi'(0) < 0` (Bartlett et al., 2006). Any
  :math:`\phi'(m) = -S(m)` with :math:`S` the survival function of a distribution with full support meets both.
  ``generator="random_cdf"`` draws :math:`S` from a random location-scale logistic / Gaussian / Gumbel
  distribution (location ~ N(0, 1), log-scale ~ N(0, 0.5^2)); ``generator="logistic"`` fixes the standard logistic,
  whose :math:`\phi` is the logistic loss (BCE). The official batch-level generator is
  :func:`ensloss_boxcox_derivatives` (the default of :func:`ensloss_surrogate`).

  Returns:
    ``dphi(margins) -> array`` (jittable).

  References:
    Dai, `EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification
    <https://arxiv.org/abs/2409.00908>`_, ICML 2025.
  """
  _checks.check_choice("generator", generator, ("random_cdf", "logistic"))
  if generator == "logistic":
    return lambda m: -jax.nn.sigmoid(-m)
  k_family, k_loc, k_scale = jax.random.split(key, 3)
  family = jax.random.randint(k_family, (), 0, 3)
  loc = jax.random.normal(k_loc, ())
  scale = jnp.exp(0.5 * jax.random.normal(k_scale, ()))

  def dphi(m):
    u = (m - loc) / scale
    survival = jax.lax.switch(family, [
        lambda u: jax.nn.sigmoid(-u),
        lambda u: 0.5 * jax.scipy.special.erfc(u / np.sqrt(2.0)),
        lambda u: -jnp.expm1(-jnp.exp(-u)),  # Gumbel survival 1 - exp(-exp(-u))
    ], u)
    return -survival

  return dphi


@_low_precision_in_float32
def ensloss_boxcox_derivatives(margins: chex.Array, normals: chex.Array, *, boxcox_lambda: float = 0.0,
                               where: chex.Array | None = None) -> jax.Array:
  r"""EnsLoss's batch-level random loss derivatives, from given standard-normal draws (the official generator).

  One random convex, calibrated loss per batch, given by its derivative at the batch's margins:

  1. :math:`d_j = \max(-\mathrm{BC}^{-1}_\lambda(z_j), -1)` with :math:`z_j \sim N(0, 1)` and the inverse
     Box-Cox transform :math:`\mathrm{BC}^{-1}_\lambda(z) = (1 + \lambda z)_+^{1/\lambda}` (:math:`e^z` at
     :math:`\lambda = 0`);
  2. the sorted :math:`d_{(1)} \le \dots \le d_{(n)}` are given to the examples in the order of their margins
     (smallest margin, most negative derivative), so the derivative is non-decreasing in the margin: a convex loss;
  3. margins above 1 get :math:`d / m` (a super-linearly vanishing tail), and every derivative is lowered by
     1e-6, so it is negative everywhere, at 0 in particular: classification-calibrated (Bartlett et al., 2006).

  Masked-out examples (``where`` False) are ranked after every kept one and get derivative 0.

  Args:
    margins: ``y * f`` with ``y`` in {-1, +1}, shape ``(n,)`` (one batch).
    normals: ``(n,)`` standard-normal draws.
    boxcox_lambda: the Box-Cox :math:`\lambda` (official code: 0, i.e. log-normal magnitudes).
    where: optional ``(n,)`` boolean mask.

  Returns:
    ``(n,)`` derivatives :math:`\partial\phi(m_i)`.

  References:
    Dai, `EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification
    <https://arxiv.org/abs/2409.00908>`_, ICML 2025 (Algorithm 1; generator of the official statmlben/ensLoss).
  """
  m = _check_logits(margins, "margins")
  if m.ndim != 1:
    raise ValueError(f"margins must be one batch of shape (n,), got shape {m.shape}.")
  z = jnp.asarray(normals, m.dtype)
  if z.shape != m.shape:
    raise ValueError(f"normals must have the shape of margins {m.shape}, got {z.shape}.")
  _checks.check_non_negative("boxcox_lambda", boxcox_lambda)
  if boxcox_lambda == 0.0:
    magnitude = jnp.exp(z)
  else:
    magnitude = jnp.maximum(1.0 + boxcox_lambda * z, 0.0) ** (1.0 / boxcox_lambda)
  d = jnp.sort(jnp.maximum(-magnitude, -1.0))
  keep = jnp.ones(m.shape, bool) if where is None else jnp.broadcast_to(jnp.asarray(where, bool), m.shape)
  order = jnp.argsort(jnp.where(keep, m, jnp.inf))  # stable: masked entries last
  g = jnp.zeros_like(m).at[order].set(d)
  g = jnp.where(m > 1.0, g / jnp.where(m > 1.0, m, 1.0), g) - 1e-6
  return jnp.where(keep, g, 0.0)


@_low_precision_in_float32
def ensloss_surrogate(margins: chex.Array, key: chex.PRNGKey, *, generator: str = "boxcox",
                      boxcox_lambda: float = 0.0, where: chex.Array | None = None) -> jax.Array:
  r"""Per-example surrogate whose gradient is a freshly sampled calibrated loss derivative (EnsLoss).

  ``stop_gradient(dphi) * m``: its value is not a loss, but ``grad`` of its mean gives the EnsLoss "doubly
  stochastic" gradient :math:`\partial\phi(y_i f(x_i))\, y_i \nabla f`. Pass a new ``key`` every step.
  ``margins = y * f`` with ``y`` in {-1, +1}.

  Args:
    margins: margins of one batch, shape ``(n,)`` for ``generator="boxcox"``, any shape otherwise.
    key: PRNG key (a fresh one per step).
    generator: ``"boxcox"`` (default, the official generator: sorted inverse-Box-Cox-transformed normal draws
      assigned by margin rank, see :func:`ensloss_boxcox_derivatives`), ``"random_cdf"`` (a random
      location-scale logistic / Gaussian / Gumbel survival function, see :func:`sample_calibrated_derivative`)
      or ``"logistic"`` (fixed: the gradient of BCE).
    boxcox_lambda: the Box-Cox :math:`\lambda` of ``"boxcox"`` (official: 0).
    where: optional mask; masked examples contribute 0.

  References:
    Dai, `EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification
    <https://arxiv.org/abs/2409.00908>`_, ICML 2025.
  """
  _checks.check_choice("generator", generator, ("boxcox", "random_cdf", "logistic"))
  if generator == "boxcox":
    m = _check_logits(margins, "margins")
    dphi = ensloss_boxcox_derivatives(m, jax.random.normal(key, m.shape, m.dtype), boxcox_lambda=boxcox_lambda,
                                      where=where)
    return jax.lax.stop_gradient(dphi) * m
  margins = _check_logits(jnp.atleast_1d(margins), "margins").reshape(jnp.shape(margins))
  dphi = sample_calibrated_derivative(key, generator=generator)
  return _masked(jax.lax.stop_gradient(dphi(margins)) * margins, where)
