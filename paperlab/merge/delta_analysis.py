"""Loss change of a delta-parameter edit (Tang et al., "A Unified View of Delta Parameter Editing in Post-Trained
Large-Scale Models", arXiv:2410.13841, Sec. 3).

A post-trained model is ``theta_0 + delta``; an edit (DARE, BitDelta, ExPO, trimming, ...) replaces ``delta`` by
``delta'``. By the fundamental theorem of calculus along the segment between the two models,

    L(theta_0 + delta') - L(theta_0 + delta) = int_0^1 grad L(theta_0 + delta + t (delta' - delta)) . (delta' - delta) dt
                                            ~= sum_k (1/K) grad L(theta_0 + delta + t_k (delta' - delta)) . (delta' - delta),

the paper's Riemann-sum view: the change is the edit direction dotted with the path-averaged gradient. Its sign
sorts edits into "competitive" (~0 in expectation, e.g. DARE with rescale), "decreased" (> 0) and "improved" (< 0,
e.g. extrapolation).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from paperlab._tree import check_same_structure
from paperlab.merge.averaging import IntegerLeaves, _integer_leaves, _is_float, _scalars_as_arrays

PyTree = Any

__all__ = ["riemann_delta_loss"]


def riemann_delta_loss(loss_fn: Callable[[PyTree], jax.Array], base: PyTree, delta: PyTree, delta_edit: PyTree,
                       n_points: int = 8, *, integer_leaves: IntegerLeaves = "error") -> jax.Array:
  """Riemann-sum estimate of the loss change caused by editing a delta (Tang et al., "A Unified View of Delta
  Parameter Editing in Post-Trained Large-Scale Models", arXiv:2410.13841, Sec. 3, eq. 2-3).

  With ``d = delta_edit - delta`` and the midpoints ``t_k = (k + 1/2) / K``, ``k = 0..K-1``::

      dL ~= (1/K) sum_k < grad loss_fn(base + delta + t_k d), d >

  which approximates ``loss_fn(base + delta_edit) - loss_fn(base + delta)`` (exactly the path integral
  ``int_0^1 <grad L(theta(t)), d> dt``). The midpoint rule is exact for any ``K`` when the loss is quadratic along
  the path and its error shrinks as ``O(1/K^2)`` for smooth losses.

  Args:
    loss_fn: ``params -> scalar`` loss (e.g. a mean cross-entropy on held-out data).
    base: the pre-trained parameters ``theta_0``.
    delta: the post-training delta ``theta_ft - theta_0`` (same structure as ``base``).
    delta_edit: the edited delta ``delta'`` (same structure), e.g. ``task_vector(base, dare(key, base, ft))``.
    n_points: number ``K >= 1`` of gradient evaluations along the path (paper's examples use a handful; default 8).
    integer_leaves: integer/bool leaves are not on the path: ``base``, ``delta`` and ``delta_edit`` must agree on
      them (:func:`paperlab.merge.task_vector` stores the shared value), else ``ValueError`` naming the path; or
      ``"base"``, ``"first"``, ``"last"`` or a callable (see :mod:`paperlab.merge.averaging`).

  Returns:
    A scalar, the predicted ``L(base + delta_edit) - L(base + delta)`` in float32 (or the leaves' wider dtype).
    Jittable (``n_points`` static); gradients are accumulated in a ``lax.fori_loop`` so memory stays one gradient.
  """
  if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
    raise ValueError(f"n_points must be an integer >= 1, got {n_points!r}.")
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be a callable params -> scalar loss, got {type(loss_fn).__name__}.")
  base, delta, delta_edit = map(_scalars_as_arrays, (base, delta, delta_edit))
  check_same_structure([base, delta, delta_edit], ["base", "delta", "delta_edit"])
  ints = _integer_leaves([base, delta, delta_edit], ["base", "delta", "delta_edit"], integer_leaves, has_base=True)
  b_leaves, treedef = jax.tree.flatten(base)
  d_leaves, e_leaves = treedef.flatten_up_to(delta), treedef.flatten_up_to(delta_edit)
  is_f = [_is_float(x) for x in b_leaves]
  start = [b + d for b, d, f in zip(b_leaves, d_leaves, is_f) if f]
  direction = [e - d for e, d, f in zip(e_leaves, d_leaves, is_f) if f]

  def assemble(floats):  # the full parameter tree: floating leaves on the path, integer leaves fixed
    it = iter(floats)
    return jax.tree.unflatten(treedef, [next(it) if f else ints[j] for j, f in enumerate(is_f)])

  grad_fn = jax.grad(lambda p: jnp.asarray(loss_fn(assemble(p))).reshape(()))
  k = int(n_points)

  def body(i, acc):
    t = (i.astype(jnp.float32) + 0.5) / k
    point = [s + t.astype(s.dtype) * d for s, d in zip(start, direction)]
    g = grad_fn(point)
    dots = [jnp.vdot(a, b).real for a, b in zip(g, direction)]
    return acc + sum(dots, jnp.zeros((), acc.dtype))

  leaves = direction
  dtype = jnp.result_type(jnp.float32, *[x.dtype for x in leaves]) if leaves else jnp.float32
  total = jax.lax.fori_loop(0, k, body, jnp.zeros((), dtype))
  return total / k
