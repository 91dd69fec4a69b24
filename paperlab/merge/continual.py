"""OPCM: continual (sequential) model merging by orthogonal projection.

Tang et al., "Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable Continual Model
Merging" (NeurIPS 2025, arXiv:2501.09522). Fine-tuned models of one base arrive one at a time; the merged model
is updated from the previous merge and the new model only, so memory does not grow with the number of models.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from paperlab._checks import check_range
from paperlab._tree import check_same_structure, path_str
from paperlab.merge.averaging import (IntegerLeaves, _integer_leaves, _is_float, _put_integer_leaves,
                                     _scalars_as_arrays)

__all__ = ["OPCMState", "opcm_init", "opcm_step", "opcm_params", "project_out_merged"]

PyTree = Any


class OPCMState(NamedTuple):
  """State of continual merging.

  Attributes:
    base: the pretrained parameters ``theta_0``.
    merged: the current merged parameters ``theta^t``.
    count: number of models merged so far.
    lam: the scale ``lambda_t`` of the current merge (``merged - base = (sum of projected task vectors) /
      lambda_t``), ``1`` after the first model.
    norm_sum: sum of the global L2 norms of the task vectors seen so far.
  """

  base: PyTree
  merged: PyTree
  count: jax.Array
  lam: jax.Array
  norm_sum: jax.Array


def opcm_init(base: PyTree) -> OPCMState:
  """Start continual merging from the pretrained ``base``; :func:`opcm_params` returns ``base`` until the first
  :func:`opcm_step`."""
  return OPCMState(base, base, jnp.zeros((), jnp.int32), jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32))


def _global_norm(tree: PyTree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def project_out_merged(merged_tv: jax.Array, task_tv: jax.Array, alpha: float = 0.5) -> jax.Array:
  """The OPCM projection of a new task vector against the current merged task vector (one 2-D leaf).

  With the full SVD ``merged_tv = U S V^T`` and ``P = U^T task_tv V``, zero ``P``'s diagonal and its top-left
  ``r x r`` block, where ``r`` is the first index at which the cumulative share of singular values exceeds
  ``alpha``, and return ``U P V^T``. The result has no component along any singular pair ``(u_i, v_i)`` of the
  merge and none in the span of its dominant ``r`` singular directions. Jittable.
  """
  u, s, vh = jnp.linalg.svd(merged_tv.astype(jnp.float32), full_matrices=True)
  total = jnp.sum(s)
  r = jnp.where(total > 0, jnp.argmax(jnp.cumsum(s) / jnp.where(total > 0, total, 1.0) > alpha), 0)
  p = u.T @ task_tv.astype(jnp.float32) @ vh.T
  rows = jnp.arange(p.shape[0])[:, None]
  cols = jnp.arange(p.shape[1])[None, :]
  keep = (rows != cols) & ~((rows < r) & (cols < r))
  return u @ jnp.where(keep, p, 0.0) @ vh


def opcm_step(state: OPCMState, finetuned: PyTree, *, alpha: float = 0.5, matrices: str | None = None,
              integer_leaves: IntegerLeaves = "error") -> OPCMState:
  """Merge one more fine-tuned model (OPCM, arXiv:2501.09522, Sec. 4; FusionBench ``opcm``).

  For the ``t``-th model (``t >= 2``) with task vector ``tau_t = theta_t - theta_0`` and the current merged task
  vector ``tau^{t-1} = theta^{t-1} - theta_0``:

  * each selected 2-D leaf: ``tau~_t = U P V^T`` (:func:`project_out_merged`, threshold ``alpha``), other
    leaves: ``tau~_t = tau_t``;
  * ``v = lambda_{t-1} tau^{t-1} + tau~_t``; ``lambda_t = ||v|| / mean_{i<=t} ||tau_i||`` (global L2 norms), so
    the merged task vector keeps the average task-vector norm;
  * ``theta^t = theta_0 + v / lambda_t``.

  The first model is taken as is (``lambda_1 = 1``).

  Args:
    state: from :func:`opcm_init` or a previous step.
    finetuned: the new model (same structure as the base).
    alpha: cumulative singular-value share protected from the new model, in ``[0, 1]`` (paper: 0.5).
    matrices: regex (searched) on leaf paths choosing the 2-D leaves that are projected; default every 2-D leaf.
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tune -> kept, different ->
      ``ValueError`` naming the path (at run time under ``jit``); or ``"first"``, ``"last"``, ``"base"`` or a
      callable (see :mod:`paperlab.merge.averaging`).

  Returns:
    The new state. Jittable (``matrices`` static); memory O(base + merged) whatever the number of models.
  """
  finetuned = _scalars_as_arrays(finetuned)
  check_same_structure([state.base, finetuned], ["state.base", "finetuned"])
  check_range("alpha", alpha, 0.0, 1.0)
  ints = _integer_leaves([state.base, finetuned], ["state.base", "finetuned"], integer_leaves, has_base=True)
  rx = re.compile(matrices) if matrices is not None else None
  base, merged = state.base, state.merged
  # integer/bool leaves (resolved by the policy) take no part in the task vectors or their norms
  diff = lambda f, b: (f.astype(jnp.float32) - b.astype(jnp.float32) if _is_float(b)
                       else jnp.zeros(jnp.shape(b), jnp.float32))
  task_tv = jax.tree.map(diff, finetuned, base)
  merged_tv = jax.tree.map(diff, merged, base)
  new_norm = _global_norm(task_tv)
  norm_sum = state.norm_sum + new_norm
  avg = norm_sum / (state.count + 1).astype(jnp.float32)

  def combine(path, m, t):
    if m.ndim == 2 and (rx is None or rx.search(path_str(path))):
      t = project_out_merged(m, t, alpha)
    return state.lam * m + t

  v = jax.tree_util.tree_map_with_path(combine, merged_tv, task_tv)
  lam = _global_norm(v) / jnp.maximum(avg, 1e-30)
  first = state.count == 0
  lam = jnp.where(first, 1.0, lam)
  new_merged = jax.tree.map(
      lambda b, f, vv: jnp.where(first, f, (b.astype(jnp.float32) + vv / jnp.maximum(lam, 1e-30)).astype(b.dtype)),
      base, finetuned, v)
  return OPCMState(base, _put_integer_leaves(new_merged, ints), state.count + 1, lam.astype(jnp.float32), norm_sum)


def opcm_params(state: OPCMState) -> PyTree:
  """The merged parameters after the models seen so far (OPCM, "Merging Models on the Fly Without Retraining: A
  Sequential Approach to Scalable Continual Model Merging", arXiv:2501.09522)."""
  return state.merged
