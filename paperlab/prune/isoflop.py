"""Sparse iso-FLOP transformations: a wider sparse layer at the FLOPs of the dense one.

Saxena et al., "Sparse Iso-FLOP Transformations for Maximizing Training Efficiency", arXiv:2303.11525, Sec. 3.1
(Sparse Wide): hidden widths grow by ``k = 1 / sqrt(1 - s)``, so a hidden-to-hidden kernel at density ``1 - s``
costs ``k^2 (1 - s) = 1`` times the dense FLOPs; the first and last kernels grow on one side only and get density
``1 / k`` (the explicit correction), i.e. each kernel keeps ``min(1, n_dense / n_wide)`` of its entries. The masks
are then trained with dynamic sparsity (RigL-style drop and regrow, :func:`paperlab.prune.drop_and_regrow`).
Host-side helpers over shapes and parameter pytrees.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab._tree import path_str

PyTree = Any

__all__ = ["sparse_wide_width", "iso_flop_densities", "matmul_flops"]


def sparse_wide_width(width: int, sparsity: float) -> int:
  """Sparse Wide's hidden width ``round(width / sqrt(1 - sparsity))``."""
  _checks.check_range("sparsity", sparsity, 0.0, 1.0, high_inclusive=False)
  if not isinstance(width, int) or width < 1:
    raise ValueError(f"width must be a positive int, got {width!r}.")
  return round(width / math.sqrt(1.0 - sparsity))


def iso_flop_densities(dense_params: PyTree, wide_params: PyTree) -> dict[str, float]:
  """``{path: min(1, n_dense / n_wide)}`` for every 2-D kernel (same paths in both pytrees): the density at which
  each wide kernel costs the dense kernel's FLOPs.

  Raises:
    ValueError: the two pytrees do not hold the same 2-D kernel paths.
  """
  dense = {path_str(p): x.size for p, x in jax.tree_util.tree_flatten_with_path(dense_params)[0] if jnp.ndim(x) == 2}
  wide = {path_str(p): x.size for p, x in jax.tree_util.tree_flatten_with_path(wide_params)[0] if jnp.ndim(x) == 2}
  if set(dense) != set(wide):
    raise ValueError(f"dense and wide params differ in their kernels: {sorted(set(dense) ^ set(wide))}.")
  return {k: min(1.0, dense[k] / wide[k]) for k in dense}


def matmul_flops(params: PyTree, masks: PyTree | None = None) -> int:
  """Multiply-add FLOPs per example of the 2-D kernels, ``2 x`` the kept entries (all entries without masks)."""
  leaves = jax.tree.leaves(params)
  kept = jax.tree.leaves(masks) if masks is not None else [None] * len(leaves)
  return int(sum(2 * (int(jnp.sum(m)) if m is not None else x.size) for x, m in zip(leaves, kept) if jnp.ndim(x) == 2))
