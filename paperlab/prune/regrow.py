"""GraNet's prune-and-regrow (zero-cost neuroregeneration) on parameter pytrees.

At every mask update (Liu et al., arXiv:2106.10404, Alg. 1; official code VITA-Group/GraNet at commit f338a24,
``CIFAR/sparselearning/core.py``, ``pruning`` then ``truncate_weights``):

1. gradual magnitude pruning to the schedule's sparsity ``s_t`` (global magnitude over the prunable leaves);
2. per layer, drop ``ceil(r_t * active)`` more of the active weights with the smallest ``|w|`` (``magnitude_death``)
   and regrow as many at the inactive positions -- including the ones just dropped -- with the largest ``|g|`` of the
   dense gradient (``gradient_growth``), so the layer's count and the total sparsity stay at ``s_t``.

Weights outside the new mask are zeroed; a weight regrown at a previously pruned position is therefore 0, and one
dropped and regrown in the same update keeps its value (as the official code's ``apply_mask``). Jittable with traced
``sparsity`` and ``death_rate`` (ranks instead of ``top_k``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.prune.masks import _rank, apply_masks, magnitude_masks, prunable

PyTree = Any

__all__ = ["drop_and_regrow", "granet_update"]


def _drop_regrow_leaf(w: jax.Array, m: jax.Array, g: jax.Array, death_rate) -> jax.Array:
  flat_w, flat_m, flat_g = jnp.abs(w).reshape(-1), m.reshape(-1), jnp.abs(g).reshape(-1)
  active = jnp.sum(flat_m)
  n_drop = jnp.ceil(jnp.asarray(death_rate, jnp.float32) * active).astype(jnp.int32)
  drop_rank = _rank(jnp.where(flat_m, flat_w.astype(jnp.float32), jnp.inf))  # active first, smallest first
  after_drop = flat_m & (drop_rank >= n_drop)
  grow_rank = _rank(jnp.where(after_drop, jnp.inf, -flat_g.astype(jnp.float32)))  # inactive, largest |g| first
  return (after_drop | (grow_rank < n_drop)).reshape(m.shape)


def drop_and_regrow(params: PyTree, masks: PyTree, grads: PyTree, death_rate, *, include: str | None = None,
                    exclude: str | None = None) -> PyTree:
  """Per prunable leaf, drop the ``ceil(death_rate * active)`` smallest-``|w|`` active weights and regrow as many
  inactive positions with the largest ``|grad|`` (RigL-style, GraNet's zero-cost neuroregeneration). Returns the
  new masks; every leaf keeps its number of active weights.

  Args:
    params: parameters (the magnitudes rank the drops).
    masks: current bool keep-masks.
    grads: dense gradients (computed with the masked weights, not masked themselves).
    death_rate: fraction of the active weights exchanged, in ``[0, 1]`` (concrete or traced).
    include, exclude: path filter of prunable leaves.
  """
  _checks.check_range("death_rate", death_rate, 0.0, 1.0)
  sel = prunable(params, include, exclude)
  return jax.tree.map(lambda s, w, m, g: _drop_regrow_leaf(w, m, g, death_rate) if s else m,
                      sel, params, masks, grads)


def granet_update(params: PyTree, masks: PyTree, grads: PyTree, *, sparsity, death_rate, scope: str = "global",
                  include: str | None = None, exclude: str | None = None) -> tuple[PyTree, PyTree]:
  """One GraNet mask update (arXiv:2106.10404, Alg. 1): gradual magnitude pruning of the masked weights to
  ``sparsity`` (never re-activating pruned weights), then :func:`drop_and_regrow` with ``death_rate``.

  Returns ``(params * new_masks, new_masks)``. Schedules: :func:`paperlab.prune.gmp_sparsity` (``s_t``) and
  :func:`paperlab.prune.cosine_death_rate` (``r_t``, default ``r0 = 0.5``).
  """
  masked = apply_masks(params, masks)
  pruned = magnitude_masks(masked, sparsity, scope=scope, include=include, exclude=exclude)
  pruned = jax.tree.map(jnp.logical_and, pruned, masks)
  new = drop_and_regrow(masked, pruned, grads, death_rate, include=include, exclude=exclude)
  return apply_masks(params, new), new
