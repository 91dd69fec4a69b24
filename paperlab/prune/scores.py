"""Mask search by scores on frozen weights (edge-popup with a straight-through estimator), as in lottery jackpots.

Zhang et al., "Lottery Jackpots Exist in Pre-trained Models", arXiv:2104.08700, Sec. 3 (following Ramanujan et al.,
"What's Hidden in a Randomly Weighted Neural Network?", arXiv:1911.13299, eq. 2-3): the forward pass uses
``W * m`` with ``m`` the top ``(1 - sparsity)`` fraction of the scores ``S`` (per tensor, exact count), and the
scores get the straight-through gradient ``dL/dS = dL/d(W * m) * W``. Lottery jackpots initialize ``S = |W|``, so
with no search step the mask is the magnitude mask. The weights themselves receive no gradient here (they are
frozen). Jittable (``sparsity`` concrete or traced).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.prune.masks import _num_pruned, _rank

__all__ = ["score_mask", "score_mask_forward"]


def score_mask(scores: jax.Array, sparsity) -> jax.Array:
  """Keep-mask of the largest ``n - round(sparsity * n)`` scores (ties by position), shaped like ``scores``."""
  _checks.check_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
  flat = scores.reshape(-1).astype(jnp.float32)
  return (_rank(flat) >= _num_pruned(sparsity, flat.size)).reshape(scores.shape)


def score_mask_forward(w: jax.Array, scores: jax.Array, sparsity) -> jax.Array:
  """``W * top_k(S)`` with the straight-through estimator: the value is ``W * m``, the gradient with respect to the
  scores is ``upstream * W`` and the weights get none (``stop_gradient``)."""
  if w.shape != scores.shape:
    raise ValueError(f"scores must have the weight's shape {w.shape}, got {scores.shape}.")
  m = score_mask(jax.lax.stop_gradient(scores), sparsity).astype(scores.dtype)
  ste = m + (scores - jax.lax.stop_gradient(scores))  # exactly m in value
  return jax.lax.stop_gradient(w) * ste.astype(w.dtype)
