"""Multi-label and sparse-output losses: asymmetric loss, sparsemax loss, self-adjusting dice.

Elementwise losses (``asymmetric_loss``, ``self_adjusting_dice_loss``) return ``[..., num_labels]`` like
``optax.losses.sigmoid_focal_loss``; sum over labels yourself. ``where`` masks entries (masked-out ones are 0).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _check_gamma, _check_logits, _check_soft_labels, _masked, _safe_pow

__all__ = [
    "asymmetric_loss",
    "sparsemax",
    "sparsemax_loss",
    "self_adjusting_dice_loss",
]


@_low_precision_in_float32
def asymmetric_loss(logits: chex.Array, labels: chex.Array, *, gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                    clip: float = 0.05, stop_gradient_weight: bool = False,
                    where: chex.Array | None = None) -> jax.Array:
  r"""Asymmetric loss (ASL) for multi-label classification, elementwise.

  .. math:: L = -y (1 - p)^{\gamma_+} \log p - (1 - y)\, p_m^{\gamma_-} \log(1 - p_m), \quad
            p = \sigma(z),\ p_m = \max(p - m, 0)

  :math:`\log p` is ``log_sigmoid(z)`` and :math:`\log(1 - p_m) = \log\min(1 - p + m, 1)` (with ``m = 0``:
  ``log_sigmoid(-z)``), so gradients stay finite at extreme logits. ``gamma_pos = gamma_neg = 0, clip = 0`` is
  sigmoid BCE; equal gammas and ``clip = 0`` is ``optax.losses.sigmoid_focal_loss(alpha=None)``.

  Args:
    logits: ``[..., num_labels]`` logits.
    labels: ``{0, 1}`` (or soft) targets with the shape of ``logits``.
    gamma_pos: focusing exponent for positives (paper: 0; the official class defaults to 1).
    gamma_neg: focusing exponent for negatives (paper: 4).
    clip: probability margin ``m`` that hard-thresholds easy negatives (paper: 0.05).
    stop_gradient_weight: treat the focusing weights as constants (the official
      ``disable_torch_grad_focal_loss`` option).
    where: optional mask broadcastable to ``logits``.

  References:
    Ridnik et al., `Asymmetric Loss For Multi-Label Classification <https://arxiv.org/abs/2009.14119>`_,
    ICCV 2021.
  """
  logits = _check_logits(logits)
  labels = _check_soft_labels(logits, labels)
  _check_gamma(gamma_pos, "gamma_pos")
  _check_gamma(gamma_neg, "gamma_neg")
  _checks.check_range("clip", clip, 0.0, 1.0)
  log_p = jax.nn.log_sigmoid(logits)
  if isinstance(clip, (int, float)) and clip == 0:
    log_not_pm = jax.nn.log_sigmoid(-logits)
    p_m = jax.nn.sigmoid(logits)
  else:
    log_not_pm = jnp.log(jnp.minimum(jax.nn.sigmoid(-logits) + clip, 1.0))
    p_m = jnp.maximum(jax.nn.sigmoid(logits) - clip, 0.0)
  w_pos = _safe_pow(jax.nn.sigmoid(-logits), gamma_pos)
  w_neg = _safe_pow(p_m, gamma_neg)
  if stop_gradient_weight:
    w_pos, w_neg = jax.lax.stop_gradient(w_pos), jax.lax.stop_gradient(w_neg)
  loss = -labels * w_pos * log_p - (1.0 - labels) * w_neg * log_not_pm
  return _masked(loss, where)


@_low_precision_in_float32
def sparsemax(logits: chex.Array, axis: int = -1) -> jax.Array:
  r"""Sparsemax :math:`\arg\min_{p \in \Delta} \|p - z\|^2 = [z - \tau(z)]_+` along ``axis``.

  A thin wrapper over ``optax.projections.projection_simplex`` (vmapped over the other axes).

  References:
    Martins & Astudillo, `From Softmax to Sparsemax: A Sparse Model of Attention and Multi-Label
    Classification <https://arxiv.org/abs/1602.02068>`_, ICML 2016.
  """
  logits = _check_logits(logits)
  z = jnp.moveaxis(logits, axis, -1)
  flat = z.reshape(-1, z.shape[-1])
  p = jax.vmap(optax.projections.projection_simplex)(flat).reshape(z.shape)
  return jnp.moveaxis(p, -1, axis)


@_low_precision_in_float32
def sparsemax_loss(logits: chex.Array, label_dist: chex.Array, *, axis: int = -1,
                   where: chex.Array | None = None) -> jax.Array:
  r"""Multi-label sparsemax loss with a target distribution :math:`q` (e.g. ``y / y.sum()``).

  .. math:: L(z; q) = -q^\top z + \tfrac12 \sum_{j \in S(z)} (z_j^2 - \tau^2(z)) + \tfrac12 \|q\|^2

  written in the equivalent Fenchel-Young form :math:`z^\top p - \tfrac12\|p\|^2 + \tfrac12\|q\|^2 - q^\top z`
  with :math:`p = \mathrm{sparsemax}(z)`. Non-negative, zero iff sparsemax(z) = q; its gradient is
  :math:`\mathrm{sparsemax}(z) - q`. For one-hot ``q`` it equals ``optax.losses.multiclass_sparsemax_loss``.

  References:
    Martins & Astudillo, `From Softmax to Sparsemax <https://arxiv.org/abs/1602.02068>`_, ICML 2016.
  """
  logits = _check_logits(logits)
  q = _check_soft_labels(logits, label_dist)
  z, q = jnp.moveaxis(logits, axis, -1), jnp.moveaxis(q, axis, -1)
  p = jax.lax.stop_gradient(sparsemax(z))
  # With p held constant the value is unchanged (p is the argmax) and the gradient is exactly p - q.
  loss = jnp.sum(z * p, -1) - 0.5 * jnp.sum(p * p, -1) + 0.5 * jnp.sum(q * q, -1) - jnp.sum(q * z, -1)
  return _masked(jnp.maximum(loss, 0.0), where)


@_low_precision_in_float32
def self_adjusting_dice_loss(logits: chex.Array, labels: chex.Array, *, alpha: float = 0.0,
                             smooth: float = 1e-4, activation: str = "sigmoid",
                             where: chex.Array | None = None) -> jax.Array:
  r"""Self-adjusting dice loss (DSC), per element.

  .. math:: DSC = 1 - \frac{2 (1-p)^\alpha p\, y + \gamma}{(1-p)^\alpha p + y + \gamma}

  with :math:`p` the predicted probability (``sigmoid`` per label, or ``softmax`` over the last axis),
  :math:`\gamma` = ``smooth`` and :math:`\alpha` down-weighting easy examples. ``alpha = 0`` is the per-element
  soft dice :math:`1 - (2py + \gamma)/(p + y + \gamma)`. For the set-level Dice/Tversky losses use
  ``optax.losses.dice_loss``.

  References:
    Li et al., `Dice Loss for Data-imbalanced NLP Tasks <https://arxiv.org/abs/1911.02855>`_, ACL 2020
    (official defaults: smooth=1e-4, alpha=0).
  """
  logits = _check_logits(logits)
  y = _check_soft_labels(logits, labels)
  _checks.check_non_negative("alpha", alpha)
  _checks.check_positive("smooth", smooth)
  _checks.check_choice("activation", activation, ("sigmoid", "softmax"))
  if activation == "sigmoid":
    p, one_minus_p = jax.nn.sigmoid(logits), jax.nn.sigmoid(-logits)
  else:
    p = jax.nn.softmax(logits, axis=-1)
    one_minus_p = 1.0 - p
  weighted_p = _safe_pow(one_minus_p, alpha) * p
  loss = 1.0 - (2.0 * weighted_p * y + smooth) / (weighted_p + y + smooth)
  return _masked(loss, where)
