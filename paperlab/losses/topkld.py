"""TopKLD: a distillation KL that weighs the teacher's top-k tokens ("explicit knowledge") against its tail
("implicit knowledge"), for quantization-aware distillation (Ding et al., "Dissecting Bit-Level Scaling Laws in
Quantizing Vision Generative Models", 2024; no arXiv id in the catalogue). Per-example output, classes last."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab.losses.classification import _check_logits, _low_precision_in_float32, _masked

__all__ = ["topk_kl"]


@_low_precision_in_float32
def topk_kl(teacher_logits: chex.Array, student_logits: chex.Array, *, k: int, w_tail: float | jax.Array,
            where: chex.Array | None = None) -> jax.Array:
  r"""TopKLD between the teacher's and the student's softmax (Ding et al., 2024, "Dissecting Bit-Level Scaling
  Laws in Quantizing Vision Generative Models": the TopKLD distillation loss of its quantized language-style
  generators).

  With :math:`p, q` the teacher's and student's distributions, :math:`K` the teacher's ``k`` most probable tokens,
  :math:`T` the others, :math:`P_T = \sum_{j \in T} p_j` and :math:`Q_T = \sum_{j \in T} q_j`:

  .. math::
     L = \sum_{j \in K} p_j \log\frac{p_j}{q_j} + w_{tail} \sum_{j \in T} p_j \log\frac{p_j}{q_j}
         + (1 - w_{tail})\, P_T \log\frac{P_T}{Q_T}

  By the chain rule of KL this is :math:`KL(\bar p \| \bar q) + w_{tail}\, P_T\, KL(p_{|T} \| q_{|T})`: the
  "explicit" KL of the top-k tokens plus one tail bucket (the tail *mass*), and ``w_tail`` times the KL of the
  tail's shape (the "implicit" knowledge). Hence ``w_tail = 1`` (any ``k``) and ``k = vocabulary size`` (any
  ``w_tail``) give the standard :math:`KL(p \| q)`, ``w_tail = 0`` only matches the top-k tokens and the tail mass,
  ``L >= 0``, and for ``w_tail > 0`` ``L = 0`` iff ``p = q``. The catalogue describes TopKLD as "a top-k-truncated
  KL combined with a KL over the tail mass" and marks its exact weighting unverified; the form above is that
  description with the tail's shape weighted by ``w_tail``. The paper's ``k`` and weighting are not in the
  catalogue, so both are required arguments (no default).

  Ties in the teacher's logits are broken as ``jax.lax.top_k`` does (the lower index first). The teacher gets no
  gradient.

  Args:
    teacher_logits: ``(..., vocab)`` logits of the full-precision teacher.
    student_logits: the student's logits, same shape.
    k: number of top tokens, ``1 <= k <= vocab`` (static).
    w_tail: weight of the tail's shape, ``>= 0`` (may be traced).
    where: optional mask over examples ``(...)``; masked examples give 0.

  Returns:
    Per-example loss ``(...)`` in the logits' dtype (computed in float32 for half-precision logits). Jittable.

  Raises:
    ValueError: mismatched shapes, ``k`` outside ``[1, vocab]``, a negative ``w_tail``, or a ``where`` that does not
      broadcast to the examples.
  """
  t = _check_logits(teacher_logits, "teacher_logits")
  s = _check_logits(student_logits, "student_logits")
  if t.shape != s.shape:
    raise ValueError(f"teacher_logits {t.shape} and student_logits {s.shape} must have the same shape.")
  vocab = t.shape[-1]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= vocab:
    raise ValueError(f"k must be an int in [1, {vocab}] (the vocabulary size), got {k!r}.")
  _checks.check_non_negative("w_tail", w_tail)
  log_p = jax.lax.stop_gradient(jax.nn.log_softmax(t, axis=-1))
  log_q = jax.nn.log_softmax(s, axis=-1)
  p = jnp.exp(log_p)
  _, top = jax.lax.top_k(jax.lax.stop_gradient(t), int(k))
  head = jnp.sum(jax.nn.one_hot(top, vocab, dtype=bool), axis=-2)
  terms = jnp.where(p > 0, p * (log_p - log_q), 0.0)
  head_kl = jnp.sum(jnp.where(head, terms, 0.0), axis=-1)
  tail_kl = jnp.sum(jnp.where(head, 0.0, terms), axis=-1)
  if k == vocab:  # no tail: the standard KL (and no logsumexp over an empty set, whose gradient is NaN)
    return _masked(head_kl, where)
  neg_inf = jnp.asarray(-jnp.inf, log_p.dtype)
  log_pt = jax.nn.logsumexp(jnp.where(head, neg_inf, log_p), axis=-1)
  log_qt = jax.nn.logsumexp(jnp.where(head, neg_inf, log_q), axis=-1)
  mass_kl = jnp.exp(log_pt) * (log_pt - log_qt)
  w = jnp.asarray(w_tail, head_kl.dtype)
  return _masked(head_kl + w * tail_kl + (1.0 - w) * mass_kl, where)
