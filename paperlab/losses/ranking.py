"""Listwise ranking losses (optax ranking conventions: ``scores`` and ``relevance`` are ``[..., list_size]``,
``where`` masks list items; one value per list).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _check_logits

__all__ = ["neural_sort", "sinkhorn_normalize", "neural_ndcg_loss"]


def _item_mask(where, shape):
  if where is None:
    return jnp.ones(shape, bool)
  where = jnp.asarray(where, bool)
  if where.shape != shape:
    raise ValueError(f"where must have the shape of scores {shape}, got {where.shape}.")
  return where


@_low_precision_in_float32
def neural_sort(scores: chex.Array, *, temperature: float = 1.0, where: chex.Array | None = None) -> jax.Array:
  r"""NeuralSort relaxation of the (descending) sorting permutation matrix, ``[..., n, n]``.

  .. math:: \hat P[i, :] = \mathrm{softmax}\big(((n + 1 - 2i)\, s - A_s \mathbf 1)/\tau\big), \quad
            A_s[j, k] = |s_j - s_k|

  Row ``i`` (1-based) is a distribution over which item lands at rank ``i``. With ``where``, ``n`` is the
  number of valid items, masked items get no mass, and rows beyond ``n`` are 0: the valid block equals the
  matrix of the list with the masked items dropped.

  References:
    Grover et al., `Stochastic Optimization of Sorting Networks via Continuous Relaxations
    <https://arxiv.org/abs/1903.08850>`_, ICLR 2019.
  """
  scores = _check_logits(scores, "scores")
  _checks.check_positive("temperature", temperature)
  valid = _item_mask(where, scores.shape)
  n = jnp.sum(valid, axis=-1, keepdims=True).astype(scores.dtype)  # [..., 1]
  s = jnp.where(valid, scores, 0.0)
  a = jnp.abs(s[..., :, None] - s[..., None, :])
  b = jnp.sum(jnp.where(valid[..., None, :], a, 0.0), axis=-1)  # [..., n]: sum_k |s_j - s_k| over valid k
  i = jnp.arange(1, scores.shape[-1] + 1, dtype=scores.dtype)
  coeff = (n + 1.0 - 2.0 * i)[..., :, None]  # [..., n_rows, 1]
  logits = (coeff * s[..., None, :] - b[..., None, :]) / temperature
  logits = jnp.where(valid[..., None, :], logits, -jnp.inf)
  row_ok = (i <= n)[..., :, None]
  p = jax.nn.softmax(jnp.where(row_ok, logits, 0.0), axis=-1)
  return jnp.where(row_ok & valid[..., None, :], p, 0.0)


@_low_precision_in_float32
def sinkhorn_normalize(p: chex.Array, *, num_iters: int = 50, eps: float = 1e-10) -> jax.Array:
  """Alternately normalise the columns and rows of non-negative ``[..., n, n]`` matrices (rows last), making
  them approximately doubly stochastic. All-zero rows/columns (masked items) stay zero.

  References:
    Sinkhorn, A Relationship Between Arbitrary Positive Matrices and Doubly Stochastic Matrices, 1964; used
    as in Pobrotyn & Bialobrzeski (2021), allRank default 50 iterations.
  """
  def body(_, p):
    p = p / jnp.maximum(jnp.sum(p, axis=-2, keepdims=True), eps)
    return p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), eps)

  return jax.lax.fori_loop(0, num_iters, body, p)


def _discounts(n: int, k, dtype):
  d = 1.0 / jnp.log2(jnp.arange(2, n + 2, dtype=dtype))
  if k is not None:
    d = jnp.where(jnp.arange(n) < k, d, 0.0)
  return d


@_low_precision_in_float32
def neural_ndcg_loss(scores: chex.Array, relevance: chex.Array, *, temperature: float = 1.0,
                     sinkhorn_iters: int = 50, k: int | None = None, transposed: bool = False,
                     where: chex.Array | None = None) -> jax.Array:
  r"""Negative NeuralNDCG, a differentiable relaxation of NDCG@k, one value per list.

  .. math:: \mathrm{NeuralNDCG@k} = \frac{1}{\mathrm{maxDCG@k}} \sum_{j \le k} (\hat P\, g(y))_j\, d(j),
            \quad g(y) = 2^y - 1,\ d(j) = 1/\log_2(j + 1)

  with :math:`\hat P` the Sinkhorn-normalised :func:`neural_sort` matrix. ``transposed=True`` uses
  :math:`\sum_i g(y_i) (\hat P^\top d)_i` (each item's expected discount). As ``temperature -> 0`` with distinct
  scores this tends to the exact NDCG@k. Lists with no relevant item give 0.

  Args:
    scores: ``[..., list_size]`` predicted scores.
    relevance: graded relevance labels with the same shape (>= 0).
    temperature: NeuralSort temperature (paper: 1).
    sinkhorn_iters: Sinkhorn iterations (allRank default: 50).
    k: truncation (``None``: whole list).
    where: optional ``[..., list_size]`` mask of valid items (padding = False).

  References:
    Pobrotyn & Bialobrzeski, `NeuralNDCG: Direct Optimisation of a Ranking Metric via Differentiable
    Relaxation of Sorting <https://arxiv.org/abs/2102.07831>`_, 2021.
  """
  scores = _check_logits(scores, "scores")
  relevance = jnp.asarray(relevance, scores.dtype)
  if relevance.shape != scores.shape:
    raise ValueError(f"relevance must have the shape of scores {scores.shape}, got {relevance.shape}.")
  if not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 0:
    raise ValueError(f"sinkhorn_iters must be a non-negative integer, got {sinkhorn_iters!r}.")
  if k is not None and (not isinstance(k, int) or k < 1):
    raise ValueError(f"k must be None or a positive integer, got {k!r}.")
  valid = _item_mask(where, scores.shape)
  n = scores.shape[-1]
  p = sinkhorn_normalize(neural_sort(scores, temperature=temperature, where=where), num_iters=sinkhorn_iters)
  gains = jnp.where(valid, jnp.exp2(relevance) - 1.0, 0.0)
  d = _discounts(n, k, scores.dtype)
  if transposed:
    dcg = jnp.sum(gains * jnp.einsum("...ij,i->...j", p, d), axis=-1)
  else:
    dcg = jnp.sum(jnp.einsum("...ij,...j->...i", p, gains) * d, axis=-1)
  ideal = jnp.sum(-jnp.sort(-gains, axis=-1) * d, axis=-1)
  return -jnp.where(ideal > 0, dcg / jnp.where(ideal > 0, ideal, 1.0), 0.0)
