"""Knowledge-distillation losses: classic KD, normalized KD (NKD) and teacher-free USKD. Per-example output,
classes last."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _check_integer_labels, _check_logits, _masked, _take

__all__ = [
    "kd_loss",
    "normalized_kd_loss_with_integer_labels",
    "USKDSoftLabels",
    "uskd_soft_labels",
    "uskd_rank_scores",
    "uskd_loss_with_integer_labels",
]


def _check_teacher(student_logits, teacher_logits):
  student_logits = _check_logits(student_logits, "student_logits")
  teacher_logits = _check_logits(teacher_logits, "teacher_logits")
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"student_logits {student_logits.shape} and teacher_logits {teacher_logits.shape} must "
                     "have the same shape.")
  return student_logits, teacher_logits


@_low_precision_in_float32
def kd_loss(student_logits: chex.Array, teacher_logits: chex.Array, *, temperature: float = 4.0,
            where: chex.Array | None = None) -> jax.Array:
  r"""Classic distillation loss :math:`T^2\, KL(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T))`.

  The :math:`T^2` factor keeps gradient magnitudes comparable across temperatures. The teacher gets no
  gradient. Built on ``optax.losses.kl_divergence_with_log_targets``.

  References:
    Hinton, Vinyals & Dean, `Distilling the Knowledge in a Neural Network <https://arxiv.org/abs/1503.02531>`_,
    2015, Sec. 2.
  """
  s, t = _check_teacher(student_logits, teacher_logits)
  _checks.check_positive("temperature", temperature)
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  log_p = jax.lax.stop_gradient(jax.nn.log_softmax(t / temperature, axis=-1))
  return _masked(temperature ** 2 * optax.losses.kl_divergence_with_log_targets(log_q, log_p), where)


@_low_precision_in_float32
def normalized_kd_loss_with_integer_labels(student_logits: chex.Array, teacher_logits: chex.Array,
                                           labels: chex.Array, *, gamma: float = 1.5, temperature: float = 1.0,
                                           where: chex.Array | None = None) -> jax.Array:
  r"""Normalized knowledge distillation (NKD).

  .. math:: L = -T_t \log S_t - \gamma \lambda^2 \sum_{i \ne t} \mathcal N(T_i^\lambda) \log \mathcal N(S_i^\lambda)

  with :math:`T, S` the teacher and student softmax, :math:`t` the target class, :math:`\lambda` the
  temperature and :math:`\mathcal N(p_i) = p_i / (1 - p_t)` the non-target distribution renormalised to sum to
  1 (computed as a softmax over the non-target logits, which is well defined even when :math:`p_t = 1`).
  The teacher gets no gradient. Defaults (gamma=1.5, temperature=1) are the ImageNet setting.

  References:
    Yang et al., `From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
    Normalized Loss and Customized Soft Labels <https://arxiv.org/abs/2303.13005>`_, ICCV 2023.
  """
  s, t = _check_teacher(student_logits, teacher_logits)
  labels = _check_integer_labels(s, labels)
  _checks.check_non_negative("gamma", gamma)
  _checks.check_positive("temperature", temperature)
  t = jax.lax.stop_gradient(t)
  target = jax.nn.one_hot(labels, s.shape[-1], dtype=bool)
  log_s_t = _take(jax.nn.log_softmax(s, axis=-1), labels)
  t_t = jnp.exp(_take(jax.nn.log_softmax(t, axis=-1), labels))
  # Non-target distributions at temperature lambda: softmax over the logits with the target removed.
  s_nt = jnp.where(target, -jnp.inf, s / temperature)
  t_nt = jnp.where(target, -jnp.inf, t / temperature)
  log_ns = jax.nn.log_softmax(s_nt, axis=-1)
  nt_teacher = jax.nn.softmax(t_nt, axis=-1)
  non_target = -jnp.sum(jnp.where(target, 0.0, nt_teacher * log_ns), axis=-1)
  return _masked(-t_t * log_s_t + gamma * temperature ** 2 * non_target, where)


class USKDSoftLabels(NamedTuple):
  """Teacher-free soft labels of USKD.

  Attributes:
    target: ``[...]`` weight of the target class's log-probability (the smoothed student target probability).
    non_target: ``[..., num_classes]`` Zipf distribution over the non-target classes (0 at the target; each row
      sums to 1).
  """

  target: jax.Array
  non_target: jax.Array


def _batch_mean(values, where):
  if where is None:
    return jnp.mean(values)
  try:
    keep = jnp.broadcast_to(jnp.asarray(where, bool), values.shape)
  except ValueError:
    raise ValueError(f"where must be a mask over examples broadcastable to {values.shape}, got "
                     f"{jnp.shape(where)}.") from None
  return jnp.sum(jnp.where(keep, values, 0.0)) / jnp.maximum(jnp.sum(keep), 1)


@_low_precision_in_float32
def uskd_soft_labels(student_logits: chex.Array, feature_ranks: chex.Array, labels: chex.Array, *,
                     where: chex.Array | None = None) -> USKDSoftLabels:
  r"""Soft labels of Universal Self-Knowledge Distillation (USKD), made without a teacher.

  Target class (Sec. 4.2, "soft target label"): the student's own target probability, squared to smooth it and
  recentred so that its mean over the batch is 1,

  .. math:: V_t = S_t^2 + 1 - \overline{S_t^2},

  where the bar is the mean over the (kept) examples of the batch, so one example's label depends on the batch.

  Non-target classes (Sec. 4.2, "soft non-target labels"): Zipf's law over a ranking of the classes. All classes
  are ranked by ``feature_ranks`` (descending; rank :math:`r_i = 1` for the highest score, ties broken by class
  order), each gets :math:`1 / r_i`, and the target class is dropped and the rest renormalised to sum to 1, as in
  the official code. In USKD the ranking comes from an intermediate feature (see :func:`uskd_rank_scores`).

  Both labels are constants (``stop_gradient``).

  Args:
    student_logits: ``[..., num_classes]`` final logits of the student.
    feature_ranks: ``[..., num_classes]`` ranking scores; a higher score ranks a class earlier.
    labels: ``[...]`` integer target classes.
    where: optional boolean mask over examples; masked-out examples do not enter the batch mean.

  References:
    Yang et al., `From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
    Normalized Loss and Customized Soft Labels <https://arxiv.org/abs/2303.13005>`_, ICCV 2023, Sec. 4.2;
    official code ``yzd-v/cls_KD`` (``USKDLoss``).
  """
  s = _check_logits(student_logits, "student_logits")
  scores = _check_logits(feature_ranks, "feature_ranks")
  if scores.shape != s.shape:
    raise ValueError(f"feature_ranks {scores.shape} must have the shape of student_logits {s.shape}.")
  labels = _check_integer_labels(s, labels)
  s, scores = jax.lax.stop_gradient(s), jax.lax.stop_gradient(scores)
  p_t = jnp.exp(_take(jax.nn.log_softmax(s, axis=-1), labels)) ** 2
  target = p_t + 1.0 - _batch_mean(p_t, where)
  order = jnp.argsort(-scores, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True) + 1  # 1-based position of each class in the ranking
  is_target = jax.nn.one_hot(labels, s.shape[-1], dtype=bool)
  zipf = jnp.where(is_target, 0.0, 1.0 / rank.astype(s.dtype))
  return USKDSoftLabels(target, zipf / jnp.sum(zipf, axis=-1, keepdims=True))


@_low_precision_in_float32
def uskd_rank_scores(weak_logits: chex.Array, student_logits: chex.Array, labels: chex.Array) -> jax.Array:
  r"""USKD's ranking scores: :math:`W_i / (1 - W_t) + S_i / (1 - S_t)`.

  :math:`W` is the softmax of a weak linear head on an intermediate feature and :math:`S` the student's final
  softmax; each is renormalised over the non-target classes, so both heads count equally. This follows the
  paper's description (ranking by the intermediate feature's weak logits combined with the final logits); the
  official code adds the final head's *log*-probabilities in this sum instead, which changes the tie-breaking
  between the two heads but not the ranking induced by either alone.

  References:
    Yang et al., arXiv:2303.13005, Sec. 4.2.
  """
  w = _check_logits(weak_logits, "weak_logits")
  s = _check_logits(student_logits, "student_logits")
  if w.shape != s.shape:
    raise ValueError(f"weak_logits {w.shape} and student_logits {s.shape} must have the same shape.")
  labels = _check_integer_labels(s, labels)

  def renormalised(z):
    p = jax.nn.softmax(jax.lax.stop_gradient(z), axis=-1)
    return p / jnp.maximum(1.0 - _take(p, labels), 1e-6)[..., None]

  return renormalised(w) + renormalised(s)


@_low_precision_in_float32
def uskd_loss_with_integer_labels(student_logits: chex.Array, weak_logits: chex.Array, labels: chex.Array, *,
                                  alpha: float = 1.0, beta: float = 0.1, mu: float = 0.005,
                                  label_smoothing: float = 0.1, where: chex.Array | None = None) -> jax.Array:
  r"""Teacher-free USKD loss, added to the usual cross-entropy on the final logits (as in the official distiller).

  .. math:: L = -\alpha V_t \log S_t - \beta \sum_{i \ne t} V_i \log \mathcal N(S_i)
              - \mu \sum_i \tilde y_i \log W_i

  with :math:`V` the soft labels of :func:`uskd_soft_labels` ranked by :func:`uskd_rank_scores`,
  :math:`\mathcal N(S)` the student's softmax over the non-target logits, and the last term the weak supervision
  of the intermediate-feature head :math:`W` (``weak_logits``, e.g. a linear layer on a hidden feature) with
  labels smoothed by ``label_smoothing``. Defaults (alpha=1, beta=0.1, mu=0.005, smoothing 0.1) are the official
  ImageNet settings; the CIFAR-100 config uses alpha=0.1, beta=0.1, mu=0.1.

  References:
    Yang et al., `From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
    Normalized Loss and Customized Soft Labels <https://arxiv.org/abs/2303.13005>`_, ICCV 2023, Sec. 4.
  """
  s = _check_logits(student_logits, "student_logits")
  w = _check_logits(weak_logits, "weak_logits")
  labels = _check_integer_labels(s, labels)
  for name, value in (("alpha", alpha), ("beta", beta), ("mu", mu)):
    _checks.check_non_negative(name, value)
  _checks.check_range("label_smoothing", label_smoothing, 0.0, 1.0)
  soft = uskd_soft_labels(s, uskd_rank_scores(w, s, labels), labels, where=where)
  is_target = jax.nn.one_hot(labels, s.shape[-1], dtype=bool)
  target_term = -soft.target * _take(jax.nn.log_softmax(s, axis=-1), labels)
  log_ns = jax.nn.log_softmax(jnp.where(is_target, -jnp.inf, s), axis=-1)
  non_target_term = -jnp.sum(jnp.where(is_target, 0.0, soft.non_target * log_ns), axis=-1)
  smoothed = optax.smooth_labels(is_target.astype(w.dtype), label_smoothing)
  weak_term = optax.softmax_cross_entropy(w, smoothed)
  return _masked(alpha * target_term + beta * non_target_term + mu * weak_term, where)
