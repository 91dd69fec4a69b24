"""Noise-robust classification losses: normalized and active-passive losses, the comp-sum family, LDR-KL
and its adaptive form ALDR-KL.

Conventions as in :mod:`paperlab.losses.classification`: per-example output, integer labels, ``where`` masks
examples (masked-out entries are 0).
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab.losses.classification import (_check_gamma, _check_integer_labels, _check_logits, _class_where,
                                            _low_precision_in_float32, _masked, _masked_log_softmax,
                                            _one_minus_exp, _safe_pow, _sum_classes, _take)

__all__ = [
    "normalized_cross_entropy_with_integer_labels",
    "reverse_cross_entropy_with_integer_labels",
    "mae_with_integer_labels",
    "normalized_focal_loss_with_integer_labels",
    "active_passive",
    "nce_rce_with_integer_labels",
    "comp_sum_loss_with_integer_labels",
    "generalized_cross_entropy_with_integer_labels",
    "ldr_kl_loss_with_integer_labels",
    "aldr_kl_lambda",
    "aldr_kl_loss_with_integer_labels",
]


def _safe_ratio(num, den):
  """``num / den`` with 0 where ``den == 0`` (a single kept class under a class mask: p_y = 1, loss 0)."""
  zero = den == 0
  return jnp.where(zero, 0.0, num / jnp.where(zero, 1.0, den))


def _log_probs(logits, labels, axis, where=None):
  """Log-probabilities (class axis last), labels, the class mask and the example mask (see ``_class_where``)."""
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  class_mask, where = _class_where(logits, where, axis)
  return _masked_log_softmax(jnp.moveaxis(logits, axis, -1), class_mask), labels, class_mask, where


@_low_precision_in_float32
def normalized_cross_entropy_with_integer_labels(logits: chex.Array, labels: chex.Array, *, axis: int = -1,
                                                 where: chex.Array | None = None) -> jax.Array:
  r"""Normalized cross-entropy :math:`NCE = \log p_y / \sum_k \log p_k`, in [0, 1].

  The normalisation :math:`L(f, y) / \sum_k L(f, k)` makes any loss robust to symmetric label noise;
  :math:`\sum_k NCE(f, k) = 1` for every ``f``. NCE alone underfits: pair it with a passive loss
  via :func:`active_passive` (NCE+RCE).

  References:
    Ma et al., `Normalized Loss Functions for Deep Learning with Noisy Labels
    <https://arxiv.org/abs/2006.13554>`_, ICML 2020.
  """
  log_p, labels, class_mask, where = _log_probs(logits, labels, axis, where)
  return _masked(_safe_ratio(_take(log_p, labels), _sum_classes(log_p, class_mask)), where)


LOG_ZERO = float(np.log(1e-4))
"""The official code's :math:`\log 0`: the one-hot label is clamped to ``[1e-4, 1]`` before the log."""
_PROB_FLOOR = 1e-7  # the official code clamps softmax probabilities to [1e-7, 1] inside RCE


@_low_precision_in_float32
def reverse_cross_entropy_with_integer_labels(logits: chex.Array, labels: chex.Array, *,
                                              log_zero: float = LOG_ZERO, axis: int = -1,
                                              where: chex.Array | None = None) -> jax.Array:
  r"""Reverse cross-entropy :math:`RCE = -\sum_k p_k \log q_k = -A \sum_{k \ne y} \max(p_k, 10^{-7})` with
  one-hot :math:`q` and :math:`\log 0 := A` (``log_zero``).

  The default follows the official code (HanxunH/Active-Passive-Losses, ``loss.py``,
  ``ReverseCrossEntropy``): the one-hot label is clamped to ``[1e-4, 1]``, so :math:`A = \log 10^{-4}
  \approx -9.21`, and the probabilities to ``[1e-7, 1]`` (no gradient below the floor). The papers' text uses
  :math:`A = -4` (Wang et al. 2019, Sec. 3.3; Ma et al. 2020): pass ``log_zero=-4.0`` for it, which makes RCE
  (up to the floor) twice :func:`mae_with_integer_labels`.

  References:
    Wang et al., `Symmetric Cross Entropy for Robust Learning with Noisy Labels
    <https://arxiv.org/abs/1908.06112>`_, ICCV 2019; used as the passive loss in Ma et al., `Normalized Loss
    Functions for Deep Learning with Noisy Labels <https://arxiv.org/abs/2006.13554>`_, ICML 2020.
  """
  _checks.check_range("log_zero", log_zero, None, 0.0, high_inclusive=False)
  log_p, labels, class_mask, where = _log_probs(logits, labels, axis, where)
  p = jnp.clip(jnp.exp(log_p), _PROB_FLOOR, 1.0)
  others = 1.0 - jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)
  return _masked(-log_zero * _sum_classes(others * p, class_mask), where)


@_low_precision_in_float32
def mae_with_integer_labels(logits: chex.Array, labels: chex.Array, *, axis: int = -1,
                            where: chex.Array | None = None) -> jax.Array:
  r"""Mean absolute error between softmax and one-hot in the official code's reduced form, :math:`1 - p_y`.

  The paper's MAE :math:`\sum_k |p_k - q_k| = 2(1 - p_y)` is twice this; the default follows the official code
  (HanxunH/Active-Passive-Losses, ``loss.py``, ``MeanAbsoluteError``: "Reduced MAE"), so its ``alpha``/``beta``
  settings transfer unchanged. Multiply by 2 for the paper's form.

  References:
    Ghosh et al., `Robust Loss Functions under Label Noise for Deep Neural Networks
    <https://arxiv.org/abs/1712.09482>`_, AAAI 2017; Ma et al., `Normalized Loss Functions for Deep Learning
    with Noisy Labels <https://arxiv.org/abs/2006.13554>`_, ICML 2020.
  """
  log_p, labels, _, where = _log_probs(logits, labels, axis, where)
  return _masked(_one_minus_exp(_take(log_p, labels)), where)


@_low_precision_in_float32
def normalized_focal_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, gamma: float = 0.5,
                                              stop_gradient_modulator: bool = True, axis: int = -1,
                                              where: chex.Array | None = None) -> jax.Array:
  r"""Normalized focal loss :math:`NFL = FL(f, y) / \sum_k FL(f, k)`,
  :math:`FL(f, k) = -(1 - p_k)^\gamma \log p_k`.

  ``gamma=0`` gives NCE. The official NFL+RCE configs use :math:`\gamma = 0.5`. By default the gradient follows
  the official code (HanxunH/Active-Passive-Losses, ``loss.py``, ``NormalizedFocalLoss``): the modulating
  factors :math:`(1 - p_k)^\gamma` are constants for the gradient, in the numerator and in the normaliser
  (``logpt.data.exp()``), while the :math:`\log p_k` terms, including those of the normaliser, are
  differentiated. ``stop_gradient_modulator=False`` differentiates the paper's formula in full.

  References:
    Ma et al., `Normalized Loss Functions for Deep Learning with Noisy Labels
    <https://arxiv.org/abs/2006.13554>`_, ICML 2020, Eq. (4).
  """
  _check_gamma(gamma)
  log_p, labels, class_mask, where = _log_probs(logits, labels, axis, where)
  modulator = _safe_pow(_one_minus_exp(log_p), gamma)
  if stop_gradient_modulator:
    modulator = jax.lax.stop_gradient(modulator)
  focal = jnp.where(jnp.isneginf(log_p), 0.0, -modulator * log_p)  # masked classes: p = 0 contributes 0
  return _masked(_safe_ratio(_take(focal, labels), _sum_classes(focal, class_mask)), where)


def active_passive(active_fn: Callable[..., jax.Array], passive_fn: Callable[..., jax.Array], *,
                   alpha: float = 1.0, beta: float = 1.0) -> Callable[..., jax.Array]:
  r"""Active-Passive Loss :math:`APL = \alpha L_{active} + \beta L_{passive}`.

  Both losses take ``(logits, labels, *, where=None, ...)``; the result has the same signature (keyword
  arguments other than ``where`` are not forwarded; bind them with ``functools.partial`` first).
  Paper defaults: CIFAR-10 alpha=beta=1; CIFAR-100 alpha=10, beta=0.1.

  References:
    Ma et al., `Normalized Loss Functions for Deep Learning with Noisy Labels
    <https://arxiv.org/abs/2006.13554>`_, ICML 2020.
  """
  _checks.check_non_negative("alpha", alpha)
  _checks.check_non_negative("beta", beta)

  def loss(logits, labels, *, where=None):
    return alpha * active_fn(logits, labels, where=where) + beta * passive_fn(logits, labels, where=where)

  return loss


@_low_precision_in_float32
def nce_rce_with_integer_labels(logits: chex.Array, labels: chex.Array, *, alpha: float = 1.0, beta: float = 1.0,
                                log_zero: float = LOG_ZERO, axis: int = -1,
                                where: chex.Array | None = None) -> jax.Array:
  r"""NCE+RCE, the recommended Active-Passive Loss: :math:`\alpha\, NCE + \beta\, RCE`.

  As the official ``NCEandRCE`` (HanxunH/Active-Passive-Losses, ``loss.py``): RCE with :math:`A = \log 10^{-4}`
  (see :func:`reverse_cross_entropy_with_integer_labels`; ``log_zero=-4.0`` for the papers' text).

  References:
    Ma et al., `Normalized Loss Functions for Deep Learning with Noisy Labels
    <https://arxiv.org/abs/2006.13554>`_, ICML 2020.
  """
  _checks.check_non_negative("alpha", alpha)
  _checks.check_non_negative("beta", beta)
  nce = normalized_cross_entropy_with_integer_labels(logits, labels, axis=axis, where=where)
  rce = reverse_cross_entropy_with_integer_labels(logits, labels, log_zero=log_zero, axis=axis, where=where)
  return alpha * nce + beta * rce


@_low_precision_in_float32
def comp_sum_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, tau: float = 1.0,
                                      axis: int = -1, where: chex.Array | None = None) -> jax.Array:
  r"""Comp-sum loss :math:`L_\tau = \Phi^\tau\big(\sum_{y'} e^{h_{y'} - h_y}\big) = \Phi^\tau(1/p_y)`.

  .. math:: \Phi^\tau(u) = \frac{u^{1-\tau} - 1}{1 - \tau} \ (\tau \ne 1), \qquad \Phi^1(u) = \log u

  computed as :math:`-\mathrm{expm1}((\tau - 1)\log p_y)/(\tau - 1)` from ``log_softmax``.
  :math:`\tau = 0`: sum-exponential :math:`\sum_{y' \ne y} e^{h_{y'} - h_y}` (exponential in the logits, so
  its gradient overflows at extreme logits); :math:`\tau = 1`: cross-entropy; :math:`\tau \in (1, 2)`:
  generalized CE with :math:`q = \tau - 1`; :math:`\tau = 2`: MAE :math:`1 - p_y`.

  References:
    Mao, Mohri & Zhong, `Cross-Entropy Loss Functions: Theoretical Analysis and Applications
    <https://arxiv.org/abs/2304.07288>`_, ICML 2023.
  """
  _checks.check_non_negative("tau", tau)
  log_p, labels, _, where = _log_probs(logits, labels, axis, where)
  log_py = _take(log_p, labels)
  if isinstance(tau, (int, float)) and tau == 1:
    return _masked(-log_py, where)
  t = jnp.asarray(tau, log_py.dtype) - 1.0
  is_one = t == 0
  safe_t = jnp.where(is_one, 1.0, t)
  loss = jnp.where(is_one, -log_py, -jnp.expm1(safe_t * log_py) / safe_t)
  return _masked(loss, where)


@_low_precision_in_float32
def generalized_cross_entropy_with_integer_labels(logits: chex.Array, labels: chex.Array, *, q: float = 0.7,
                                                  axis: int = -1, where: chex.Array | None = None) -> jax.Array:
  r"""Generalized cross-entropy :math:`(1 - p_y^q)/q`: comp-sum with :math:`\tau = 1 + q`.

  ``q -> 0`` is CE and ``q = 1`` is MAE (up to a factor 2); the paper's default is 0.7.

  References:
    Zhang & Sabuncu, `Generalized Cross Entropy Loss for Training Deep Neural Networks with Noisy Labels
    <https://arxiv.org/abs/1805.07836>`_, NeurIPS 2018; Mao et al. (2023), the comp-sum family.
  """
  _checks.check_range("q", q, 0.0, 1.0, low_inclusive=False)
  return comp_sum_loss_with_integer_labels(logits, labels, tau=1.0 + q, axis=axis, where=where)


@_low_precision_in_float32
def ldr_kl_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, lam: float = 1.0,
                                    margin: float = 0.0, axis: int = -1,
                                    where: chex.Array | None = None) -> jax.Array:
  r"""Label-distributionally robust loss with a KL regulariser (LDR-KL).

  .. math:: L = \max_{p \in \Delta} \sum_k p_k(\delta_{k,y} + f_k - f_y) - \lambda\,KL(p, \tfrac{1}{K})
            = \lambda \log \frac{1}{K} \sum_k \exp\Big(\frac{\delta_{k,y} + f_k - f_y}{\lambda}\Big)

  with margin :math:`\delta_{k,y} = c\,[k \ne y]`. With ``margin=0`` it equals
  :math:`\lambda\,CE(f/\lambda) - \lambda \log K`; as :math:`\lambda \to 0` it tends to the Crammer-Singer
  hinge :math:`\max_k(\delta_{k,y} + f_k - f_y)`.

  References:
    Zhu, Ying & Yang, `Label Distributionally Robust Losses for Multi-class Classification: Consistency,
    Robustness and Adaptivity <https://arxiv.org/abs/2112.14869>`_, ICML 2023.
  """
  _checks.check_positive("lam", lam)
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  f = jnp.moveaxis(logits, axis, -1)
  num_classes = f.shape[-1]
  class_mask, where = _class_where(logits, where, axis)
  delta = margin * (1.0 - jax.nn.one_hot(labels, num_classes, dtype=f.dtype))
  scaled = (delta + f - _take(f, labels)[..., None]) / lam
  if class_mask is None:
    return _masked(lam * (jax.nn.logsumexp(scaled, axis=-1) - np.log(num_classes)), where)
  log_k = jnp.log(jnp.sum(class_mask, axis=-1).astype(f.dtype))  # the uniform prior over the kept classes
  return _masked(lam * (jax.nn.logsumexp(scaled, axis=-1, where=class_mask) - log_k), where)


def _ldr_margins(logits, labels, margin, axis):
  logits = _check_logits(logits)
  labels = _check_integer_labels(logits, labels, axis)
  f = jnp.moveaxis(logits, axis, -1)
  delta = margin * (1.0 - jax.nn.one_hot(labels, f.shape[-1], dtype=f.dtype))
  return delta + f - _take(f, labels)[..., None]  # v_k = delta_{k,y} + f_k - f_y


@_low_precision_in_float32
def aldr_kl_lambda(logits: chex.Array, labels: chex.Array, *, lam0: float = 1.0, alpha: float = 2.0,
                   margin: float = 0.1, num_iters: int = 20, axis: int = -1) -> jax.Array:
  r"""Per-example adaptive temperature :math:`\lambda_i` of ALDR-KL (no gradient flows through it).

  The stationarity condition of the inner maximisation over :math:`\lambda` (see
  :func:`aldr_kl_loss_with_integer_labels`) is

  .. math:: \lambda = \lambda_0 \Big(1 - \frac{KL(p_\lambda, \tfrac1K)}{\alpha \log K}\Big), \quad
            p_\lambda = \mathrm{softmax}(v / \lambda),\ v_k = \delta_{k,y} + f_k - f_y,

  the update of the official code. :math:`KL(p_\lambda, 1/K)` falls as :math:`\lambda` grows, so the map is
  monotone: iterated ``num_iters`` times from :math:`\lambda_0` it decreases to the largest fixed point, which lies
  in :math:`[\lambda_0 (1 - 1/\alpha), \lambda_0]`. The official code takes one such step per visit of an
  example and keeps :math:`\lambda_i` across epochs; this stateless form iterates to the fixed point instead.

  References:
    Zhu, Ying & Yang, `Label Distributionally Robust Losses for Multi-class Classification: Consistency,
    Robustness and Adaptivity <https://arxiv.org/abs/2112.14869>`_, ICML 2023; code Optimization-AI/ICML2023_LDR.
  """
  _checks.check_positive("lam0", lam0)
  _checks.check_range("alpha", alpha, 1.0, None, low_inclusive=False)
  if not isinstance(num_iters, int) or num_iters < 0:
    raise ValueError(f"num_iters must be a non-negative integer, got {num_iters!r}.")
  v = jax.lax.stop_gradient(_ldr_margins(logits, labels, margin, axis))
  log_k = np.log(v.shape[-1])

  def step(_, lam):
    log_p = jax.nn.log_softmax(v / lam[..., None], axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p + log_k), axis=-1)
    return lam0 * (1.0 - jnp.clip(kl, 0.0, log_k) / (alpha * log_k))

  return jax.lax.fori_loop(0, num_iters, step, jnp.full(v.shape[:-1], lam0, v.dtype))


@_low_precision_in_float32
def aldr_kl_loss_with_integer_labels(logits: chex.Array, labels: chex.Array, *, lam0: float = 1.0,
                                     alpha: float = 2.0, margin: float = 0.1, num_iters: int = 20,
                                     axis: int = -1, where: chex.Array | None = None) -> jax.Array:
  r"""Adaptive label-distributionally robust loss (ALDR-KL): LDR-KL with a per-example temperature.

  .. math:: L = \max_{\lambda} \Big[\max_{p \in \Delta} \sum_k p_k v_k - \lambda\,KL(p, \tfrac1K)\Big]
                - \frac{\alpha \log K}{2 \lambda_0} (\lambda - \lambda_0)^2
              = \lambda^* \log \frac1K \sum_k e^{v_k / \lambda^*} - \frac{\alpha \log K}{2 \lambda_0}
                (\lambda^* - \lambda_0)^2

  with :math:`v_k = \delta_{k,y} + f_k - f_y`, margin :math:`\delta_{k,y} = c\,[k \ne y]`, and :math:`\lambda^*`
  from :func:`aldr_kl_lambda`. Confident (low-entropy worst-case) examples get a smaller :math:`\lambda`, i.e.
  a loss closer to the hinge; uncertain (possibly mislabelled) ones keep :math:`\lambda \approx \lambda_0`. The
  penalty is scaled as in the official code (``alpha > 1`` keeps :math:`\lambda^* \ge \lambda_0 (1 - 1/\alpha)
  > 0`); the paper's :math:`\alpha` is :math:`\alpha \log K / \lambda_0` here. :math:`\lambda^*` is a constant
  for the gradient, which at the maximiser is the gradient of the max (Danskin). As ``alpha -> inf`` this is
  :func:`ldr_kl_loss_with_integer_labels` with ``lam=lam0``. The official code also divides the logits by their
  mean absolute value first; apply that to ``logits`` beforehand to match it. Defaults: alpha=2 and margin=0.1
  as in the official scripts (which use lam0=10 on those normalised logits).

  References:
    Zhu, Ying & Yang, `Label Distributionally Robust Losses for Multi-class Classification: Consistency,
    Robustness and Adaptivity <https://arxiv.org/abs/2112.14869>`_, ICML 2023.
  """
  lam = aldr_kl_lambda(logits, labels, lam0=lam0, alpha=alpha, margin=margin, num_iters=num_iters, axis=axis)
  v = _ldr_margins(logits, labels, margin, axis)
  log_k = np.log(v.shape[-1])
  ldr = lam * (jax.nn.logsumexp(v / lam[..., None], axis=-1) - log_k)
  return _masked(ldr - alpha * log_k / (2.0 * lam0) * (lam - lam0) ** 2, where)
