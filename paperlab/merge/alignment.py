"""Subspace alignment between task matrices and a merged matrix (Marczak et al., "No Task Left Behind: Isotropic
Model Merging with Common and Task-Specific Subspaces", arXiv:2502.04959, Sec. 3, eqs. 5-6).

The paper explains merging quality by how much of each task's weight update lies in the dominant subspace of the
merged update: the Subspace Alignment Ratio (SAR). Jittable (the effective rank is applied as a mask).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.merge.averaging import _check_models, _is_float, _selected

PyTree = Any

__all__ = ["subspace_alignment_ratio", "mean_subspace_alignment"]

_LAYOUTS = ("flax", "torch")


def _as_out_in(m: jax.Array, layout: str) -> jax.Array:
  return m.T if layout == "flax" else m


@jax.jit
def _sar(task: jax.Array, merged: jax.Array, norm_threshold: jax.Array) -> jax.Array:
  u, s, _ = jnp.linalg.svd(merged, full_matrices=False)
  energy = jnp.sqrt(jnp.cumsum(s**2) / jnp.maximum(jnp.sum(s**2), jnp.finfo(s.dtype).tiny))
  # k_M = the fewest leading singular directions whose rank-k truncation keeps norm_threshold of ||Delta_M||_F
  k = jnp.sum(energy < norm_threshold) + 1
  keep = jnp.arange(s.shape[0]) < k
  coeffs = (u.T @ task) * keep[:, None]  # U_k^T Delta_t, padded with zero rows beyond k
  return jnp.linalg.norm(coeffs) / jnp.maximum(jnp.linalg.norm(task), jnp.finfo(task.dtype).tiny)


def subspace_alignment_ratio(task_matrix: jax.Array, merged_matrix: jax.Array, *, norm_threshold: float = 0.95,
                             layout: str = "flax") -> jax.Array:
  """Subspace Alignment Ratio (arXiv:2502.04959, eq. 5): the share of a task matrix's Frobenius norm inside the
  dominant left (output-space) singular subspace of the merged matrix,

    ``SAR(Delta_t, Delta_M; k_M) = ||U_k U_k^T Delta_t||_F / ||Delta_t||_F``,

  where ``U_k`` are the top ``k_M`` left singular vectors of ``Delta_M`` (in ``(out, in)`` orientation) and ``k_M``
  (eq. 6) is the smallest ``k`` whose rank-``k`` truncation of ``Delta_M`` keeps ``norm_threshold`` of its Frobenius
  norm (``sqrt(sum_{i<=k} sigma_i^2 / sum_i sigma_i^2) >= norm_threshold``; 0.95 in the authors' code). It lies in
  [0, 1] and is invariant to the scale of ``Delta_M``, so a merge's scaling coefficient does not change it.

  Args:
    task_matrix: a task's 2-D weight update ``Delta_t``; merged_matrix: the merged 2-D update ``Delta_M`` (same
      shape).
    norm_threshold: in (0, 1].
    layout: ``"flax"`` (``(in, out)`` kernels, transposed before the SVD) or ``"torch"`` (``(out, in)``).
  """
  _checks.check_range("norm_threshold", norm_threshold, 0.0, 1.0, low_inclusive=False)
  _checks.check_choice("layout", layout, _LAYOUTS)
  task_matrix, merged_matrix = jnp.asarray(task_matrix), jnp.asarray(merged_matrix)
  if task_matrix.ndim != 2 or task_matrix.shape != merged_matrix.shape:
    raise ValueError(f"task_matrix and merged_matrix must be 2-D of the same shape, got {task_matrix.shape} and "
                     f"{merged_matrix.shape}.")
  dt = jnp.promote_types(jnp.result_type(task_matrix, merged_matrix), jnp.float32)
  return _sar(_as_out_in(task_matrix, layout).astype(dt), _as_out_in(merged_matrix, layout).astype(dt),
              jnp.asarray(norm_threshold, dt))


def mean_subspace_alignment(base: PyTree, finetuned: Sequence[PyTree], merged: PyTree, *,
                            norm_threshold: float = 0.95, layout: str = "flax", include: str | None = None,
                            exclude: str | None = None) -> jax.Array:
  """Per-task Subspace Alignment Ratio averaged over the 2-D leaves (arXiv:2502.04959, eqs. 5-6; Fig. 3 averages it
  over layers): entry ``t`` is ``mean_l SAR(tau_t^l, Delta_M^l)`` with ``tau_t = finetuned[t] - base`` and
  ``Delta_M = merged - base``. Higher means the merged update keeps more of every task's directions (the paper finds
  Iso-C's flat spectrum raises it over task arithmetic's, whose few dominant directions leave tasks behind).

  Args:
    base, finetuned, merged: pytrees of the same structure; only floating 2-D leaves selected by the
      ``include``/``exclude`` path filters count.
    norm_threshold, layout: as in :func:`subspace_alignment_ratio`.

  Returns:
    ``(T,)`` array.
  """
  finetuned = _check_models(finetuned, "finetuned", base=base)
  _check_models([merged], "merged", base=base)
  _checks.check_range("norm_threshold", norm_threshold, 0.0, 1.0, low_inclusive=False)
  _checks.check_choice("layout", layout, _LAYOUTS)
  treedef = jax.tree.structure(base)
  b = treedef.flatten_up_to(base)
  mg = treedef.flatten_up_to(merged)
  ms = [treedef.flatten_up_to(m) for m in finetuned]
  sel = [s and _is_float(x) and jnp.ndim(x) == 2 for s, x in zip(_selected(base, include, exclude), b)]
  if not any(sel):
    raise ValueError("mean_subspace_alignment needs at least one selected floating 2-D leaf, found none.")
  per_leaf = []
  for i, x in enumerate(b):
    if sel[i]:
      delta_m = mg[i] - x
      per_leaf.append(jnp.stack([subspace_alignment_ratio(m[i] - x, delta_m, norm_threshold=norm_threshold,
                                                          layout=layout) for m in ms]))
  return jnp.mean(jnp.stack(per_leaf), axis=0)
