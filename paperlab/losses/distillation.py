"""Knowledge-distillation losses: classic KD and normalized KD (NKD). Per-example output, classes last."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab.losses.classification import _check_integer_labels, _check_logits, _masked, _take

__all__ = ["kd_loss", "normalized_kd_loss_with_integer_labels"]


def _check_teacher(student_logits, teacher_logits):
  student_logits = _check_logits(student_logits, "student_logits")
  teacher_logits = _check_logits(teacher_logits, "teacher_logits")
  if student_logits.shape != teacher_logits.shape:
    raise ValueError(f"student_logits {student_logits.shape} and teacher_logits {teacher_logits.shape} must "
                     "have the same shape.")
  return student_logits, teacher_logits


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
