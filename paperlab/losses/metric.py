"""Pair-similarity and contrastive losses: circle loss, SigLIP's sigmoid loss, the softmax (CLIP) baseline.

All return one value per anchor / row. ``where`` masks examples; for the in-batch contrastive losses a masked
example is dropped both as a row and as a column (as if it were not in the batch).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _check_integer_labels, _check_logits, _masked

__all__ = [
    "circle_loss",
    "circle_loss_from_embeddings",
    "circle_loss_with_integer_labels",
    "sigmoid_contrastive_loss",
    "siglip_init",
    "clip_softmax_loss",
]


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(logsumexp of x[mask] over the last axis, any(mask))``; rows with an empty mask give 0 (not -inf)."""
  any_ = jnp.any(mask, axis=-1)
  x = jnp.where(mask, x, -jnp.inf)
  m = jax.lax.stop_gradient(jnp.where(any_, jnp.max(x, axis=-1), 0.0))
  s = jnp.sum(jnp.where(mask, jnp.exp(x - m[..., None]), 0.0), axis=-1)
  return jnp.where(any_, jnp.log(jnp.where(any_, s, 1.0)) + m, 0.0), any_


def _broadcast_mask(where, shape, name):
  if where is None:
    return jnp.ones(shape, bool)
  where = jnp.asarray(where, bool)
  try:
    return jnp.broadcast_to(where, shape)
  except ValueError:
    raise ValueError(f"{name} must be broadcastable to {shape}, got {where.shape}.") from None


@_low_precision_in_float32
def circle_loss(sp: chex.Array, sn: chex.Array, *, m: float = 0.25, gamma: float = 256.0,
                where_p: chex.Array | None = None, where_n: chex.Array | None = None) -> jax.Array:
  r"""Circle loss for one anchor's within-class similarities ``sp`` and between-class similarities ``sn``.

  .. math:: L = \mathrm{softplus}\Big(\mathrm{LSE}_j\big[\gamma \alpha_n^j (s_n^j - \Delta_n)\big]
            + \mathrm{LSE}_i\big[-\gamma \alpha_p^i (s_p^i - \Delta_p)\big]\Big)

  with :math:`\alpha_p = [1 + m - s_p]_+`, :math:`\alpha_n = [s_n + m]_+` (constants: no gradient, as in the
  official code), :math:`\Delta_p = 1 - m`, :math:`\Delta_n = m`. Reduces over the last axis of ``sp`` and
  ``sn``; an anchor whose positive or negative set is empty (after ``where_p`` / ``where_n``) gets 0.
  Paper defaults: faces m=0.25, gamma=256; re-ID m=0.25, gamma=128; fine-grained m=0.4, gamma=80.

  References:
    Sun et al., `Circle Loss: A Unified Perspective of Pair Similarity Optimization
    <https://arxiv.org/abs/2002.10857>`_, CVPR 2020.
  """
  sp, sn = _check_logits(sp, "sp"), _check_logits(sn, "sn")
  if sp.shape[:-1] != sn.shape[:-1]:
    raise ValueError(f"sp and sn must share their leading (anchor) axes, got {sp.shape} and {sn.shape}.")
  _checks.check_non_negative("m", m)
  _checks.check_positive("gamma", gamma)
  mask_p = _broadcast_mask(where_p, sp.shape, "where_p")
  mask_n = _broadcast_mask(where_n, sn.shape, "where_n")
  alpha_p = jax.lax.stop_gradient(jax.nn.relu(1.0 + m - sp))
  alpha_n = jax.lax.stop_gradient(jax.nn.relu(sn + m))
  lse_p, has_p = _masked_logsumexp(-gamma * alpha_p * (sp - (1.0 - m)), mask_p)
  lse_n, has_n = _masked_logsumexp(gamma * alpha_n * (sn - m), mask_n)
  valid = has_p & has_n
  return jnp.where(valid, jax.nn.softplus(jnp.where(valid, lse_p + lse_n, 0.0)), 0.0)


def _cosine_matrix(embeddings: jax.Array, eps: float = 1e-12) -> jax.Array:
  x = embeddings / jnp.sqrt(jnp.maximum(jnp.sum(embeddings ** 2, -1, keepdims=True), eps))
  return x @ x.T


@_low_precision_in_float32
def circle_loss_from_embeddings(embeddings: chex.Array, labels: chex.Array, *, m: float = 0.4,
                                gamma: float = 80.0, where: chex.Array | None = None) -> jax.Array:
  r"""Pair-based circle loss over a batch: per anchor, positives are the other same-label examples and
  negatives the different-label ones, scored by cosine similarity. Returns ``[batch]``.

  Defaults are the fine-grained retrieval setting (m=0.4, gamma=80), as in pytorch-metric-learning. Masked
  examples (``where``) are dropped as anchors and as pair partners.

  References:
    Sun et al., `Circle Loss <https://arxiv.org/abs/2002.10857>`_, CVPR 2020.
  """
  embeddings = _check_logits(embeddings, "embeddings")
  if embeddings.ndim != 2:
    raise ValueError(f"embeddings must be [batch, dim], got {embeddings.shape}.")
  labels = jnp.asarray(labels)
  if labels.shape != embeddings.shape[:1]:
    raise ValueError(f"labels must have shape {embeddings.shape[:1]}, got {labels.shape}.")
  n = embeddings.shape[0]
  keep = _broadcast_mask(where, (n,), "where")
  cos = _cosine_matrix(embeddings)
  pair = keep[:, None] & keep[None, :] & ~jnp.eye(n, dtype=bool)
  same = labels[:, None] == labels[None, :]
  loss = circle_loss(cos, cos, m=m, gamma=gamma, where_p=pair & same, where_n=pair & ~same)
  return _masked(loss, keep)


@_low_precision_in_float32
def circle_loss_with_integer_labels(cos_logits: chex.Array, labels: chex.Array, *, m: float = 0.25,
                                    gamma: float = 256.0, where: chex.Array | None = None) -> jax.Array:
  r"""Class-level circle loss: ``cos_logits`` are cosine similarities to class proxies ``[..., num_classes]``;
  :math:`s_p` is the target class's and :math:`s_n` the others'.

  References:
    Sun et al., `Circle Loss <https://arxiv.org/abs/2002.10857>`_, CVPR 2020 (class-proxy form).
  """
  cos_logits = _check_logits(cos_logits, "cos_logits")
  labels = _check_integer_labels(cos_logits, labels)
  target = jax.nn.one_hot(labels, cos_logits.shape[-1], dtype=bool)
  loss = circle_loss(cos_logits, cos_logits, m=m, gamma=gamma, where_p=target, where_n=~target)
  return _masked(loss, where)


def _normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-12))


def _check_pair(x_emb, y_emb):
  x_emb, y_emb = _check_logits(x_emb, "x_emb"), _check_logits(y_emb, "y_emb")
  if x_emb.ndim != 2 or x_emb.shape != y_emb.shape:
    raise ValueError(f"x_emb and y_emb must both be [batch, dim] with equal shapes, got {x_emb.shape} and "
                     f"{y_emb.shape}.")
  return x_emb, y_emb


@_low_precision_in_float32
def sigmoid_contrastive_loss(x_emb: chex.Array, y_emb: chex.Array, log_temperature: chex.Numeric,
                             bias: chex.Numeric, *, where: chex.Array | None = None) -> jax.Array:
  r"""SigLIP's pairwise sigmoid loss, per row ``i`` (sum over ``j``); ``mean`` over rows is the paper's loss.

  .. math:: L_i = -\sum_j \log\sigma\big(z_{ij}\,(t\,\hat x_i^\top \hat y_j + b)\big), \quad
            z_{ij} = 1 \text{ if } i = j \text{ else } -1,\ t = e^{t'}

  on L2-normalised embeddings. ``log_temperature`` (t') and ``bias`` (b) are learnable scalars; see
  :func:`siglip_init` (t' = log 10, b = -10).

  References:
    Zhai et al., `Sigmoid Loss for Language Image Pre-Training <https://arxiv.org/abs/2303.15343>`_,
    ICCV 2023, Algorithm 1.
  """
  x_emb, y_emb = _check_pair(x_emb, y_emb)
  n = x_emb.shape[0]
  keep = _broadcast_mask(where, (n,), "where")
  logits = jnp.exp(log_temperature) * _normalize(x_emb) @ _normalize(y_emb).T + bias
  z = 2.0 * jnp.eye(n, dtype=logits.dtype) - 1.0
  pair_loss = -jax.nn.log_sigmoid(z * logits)
  loss = jnp.sum(jnp.where(keep[None, :], pair_loss, 0.0), axis=-1)
  return _masked(loss, keep)


def siglip_init() -> dict:
  """Initial learnable SigLIP scalars: ``{"log_temperature": log(10), "bias": -10}`` (Zhai et al., 2023)."""
  return {"log_temperature": jnp.asarray(np.log(10.0), jnp.float32), "bias": jnp.asarray(-10.0, jnp.float32)}


@_low_precision_in_float32
def clip_softmax_loss(x_emb: chex.Array, y_emb: chex.Array, log_temperature: chex.Numeric, *,
                      where: chex.Array | None = None) -> jax.Array:
  r"""CLIP's symmetric softmax (InfoNCE) loss per row: the mean of the image->text and text->image
  cross-entropies of pair ``i``, with logits :math:`e^{t'} \hat x_i^\top \hat y_j`. ``mean`` over rows is the
  CLIP loss. The baseline that SigLIP is compared with.

  References:
    Radford et al., `Learning Transferable Visual Models From Natural Language Supervision
    <https://arxiv.org/abs/2103.00020>`_, ICML 2021, Fig. 3 pseudocode.
  """
  x_emb, y_emb = _check_pair(x_emb, y_emb)
  n = x_emb.shape[0]
  keep = _broadcast_mask(where, (n,), "where")
  logits = jnp.exp(log_temperature) * _normalize(x_emb) @ _normalize(y_emb).T
  # Masked partners drop out of each softmax; masked rows/columns are replaced by zeros (finite, discarded).
  rows = jnp.where(keep[:, None], jnp.where(keep[None, :], logits, -jnp.inf), 0.0)
  cols = jnp.where(keep[None, :], jnp.where(keep[:, None], logits, -jnp.inf), 0.0)
  diag = jnp.diagonal(logits)
  loss = 0.5 * ((jax.nn.logsumexp(rows, axis=1) - diag) + (jax.nn.logsumexp(cols, axis=0) - diag))
  return _masked(loss, keep)
