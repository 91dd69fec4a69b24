"""Linear mode connectivity: interpolation paths, loss barriers and the star-domain check.

Frankle et al., "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (arXiv:1912.05671) define the
barrier along the linear path ``theta(alpha) = (1-alpha) theta_a + alpha theta_b`` as
``max_alpha L(theta(alpha)) - [(1-alpha) L(theta_a) + alpha L(theta_b)]``. Sonthalia et al., "Do Deep Neural
Network Solutions Form a Star Domain?" (arXiv:2403.07968) ask for a single "star" model linearly connected (modulo
permutation) to many solutions and train it with the Starlight objective (:func:`starlight_loss`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from paperlab._tree import check_same_structure, path_str
from paperlab.merge.averaging import (IntegerLeaves, _check_integer_rule, _integer_leaves, _is_float,
                                     _put_integer_leaves, _resolve_integer_leaf, _scalars_as_arrays)

__all__ = ["interpolation_curve", "loss_barrier", "starlight_loss", "star_barriers"]

PyTree = Any


def _lerp(params_a: PyTree, params_b: PyTree, alpha: float | jax.Array, names=("params_a", "params_b"),
          integer_leaves: IntegerLeaves = "error") -> PyTree:
  """``(1 - alpha) * params_a + alpha * params_b`` leaf by leaf, in each leaf's dtype; vmappable over ``alpha``
  (the public form is :func:`paperlab.merge.interpolate`). Integer/bool leaves follow the shared policy of
  :mod:`paperlab.merge.averaging` (equal -> kept, different -> ``ValueError`` naming the path)."""
  params_a, params_b = _scalars_as_arrays(params_a), _scalars_as_arrays(params_b)
  check_same_structure([params_a, params_b], list(names))
  ints = _integer_leaves([params_a, params_b], list(names), integer_leaves, has_base=False)

  def mix(a, b):
    a, b = jnp.asarray(a), jnp.asarray(b)
    if not _is_float(a):
      return a
    return ((1 - alpha) * a.astype(jnp.float32) + alpha * b.astype(jnp.float32)).astype(a.dtype)

  return _put_integer_leaves(jax.tree.map(mix, params_a, params_b), ints)


def loss_barrier(losses: jax.Array, alphas: jax.Array) -> jax.Array:
  """``max_alpha [L(alpha) - ((1-alpha) L(0) + alpha L(1))]`` from losses on a grid that starts at 0 and ends
  at 1 (Frankle et al., arXiv:1912.05671, Def. 1)."""
  losses, alphas = jnp.asarray(losses), jnp.asarray(alphas)
  if losses.shape != alphas.shape or losses.ndim != 1 or losses.shape[0] < 2:
    raise ValueError(f"losses and alphas must be 1-D of the same length >= 2, got {losses.shape} and {alphas.shape}.")
  line = (1 - alphas) * losses[0] + alphas * losses[-1]
  return jnp.max(losses - line)


def interpolation_curve(loss_fn: Callable[[PyTree], jax.Array], params_a: PyTree, params_b: PyTree,
                        alphas: jax.Array | Sequence[float] | None = None, *,
                        integer_leaves: IntegerLeaves = "error") -> tuple[jax.Array, jax.Array]:
  """Loss along the linear path and its barrier.

  Args:
    loss_fn: ``loss_fn(params) -> scalar`` (jittable; close over the evaluation data).
    params_a, params_b: the endpoints (align B first for a re-basin barrier).
    alphas: grid in ``[0, 1]`` that starts at 0 and ends at 1; default 11 points.
    integer_leaves: integer/bool leaves are never interpolated: equal -> kept, different -> ``ValueError`` naming
      the path; or ``"first"`` (``params_a``'s), ``"last"`` or a callable (see :mod:`paperlab.merge.averaging`).

  Returns:
    ``(losses, barrier)``: losses at every alpha (``jax.vmap`` over alpha) and :func:`loss_barrier`.
  """
  alphas = jnp.linspace(0.0, 1.0, 11) if alphas is None else jnp.asarray(alphas, jnp.float32)
  if alphas.ndim != 1 or alphas.shape[0] < 2:
    raise ValueError(f"alphas must be a 1-D grid of at least 2 points, got shape {alphas.shape}.")
  check_same_structure([params_a, params_b], ["params_a", "params_b"])
  # integer leaves are checked once, outside the vmap
  _integer_leaves([_scalars_as_arrays(params_a), _scalars_as_arrays(params_b)], ["params_a", "params_b"],
                  integer_leaves, has_base=False)
  losses = jax.vmap(lambda t: loss_fn(_lerp(params_a, params_b, t, integer_leaves=integer_leaves)))(alphas)
  return losses, loss_barrier(losses, alphas)


def starlight_loss(loss_fn: Callable[[PyTree, Any], jax.Array], star: PyTree, sources: PyTree, rng: jax.Array,
                   batch: Any, *, integer_leaves: IntegerLeaves = "error") -> jax.Array:
  """The Starlight objective of Sonthalia et al. (arXiv:2403.07968), Algorithm 1, one sample.

  Draws a source ``i`` uniformly and ``alpha ~ U[0, 1]`` and returns
  ``loss_fn((1 - alpha) * star + alpha * sources[i], batch)``; its gradient in ``star`` trains a model that is
  linearly connected to every source.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    star: the star model's parameters (differentiate with respect to these).
    sources: the source models **already aligned** to the star (e.g. by
      :func:`paperlab.merge.weight_matching`), stacked on a leading axis.
    rng: key for ``i`` and ``alpha``.
    batch: passed to ``loss_fn``.
    integer_leaves: integer/bool leaves of ``star`` and the drawn source follow the shared policy (equal -> kept,
      different -> an error naming the path, at run time under ``jit``; see :mod:`paperlab.merge.averaging`).

  Jittable and differentiable in ``star``.
  """
  n = jax.tree.leaves(sources)[0].shape[0]
  star = _scalars_as_arrays(star)
  # the star's integer/bool leaves must agree with every source's, not just the drawn one's
  treedef = jax.tree.structure(star)
  src_leaves = treedef.flatten_up_to(sources)
  names = ["star"] + [f"sources[{k}]" for k in range(n)]
  rule = _check_integer_rule(integer_leaves, False)
  fixed = {}
  for j, (p, s) in enumerate(jax.tree_util.tree_flatten_with_path(star)[0]):
    if not _is_float(s):
      fixed[path_str(p)] = _resolve_integer_leaf(path_str(p), [s] + [src_leaves[j][k] for k in range(n)], names,
                                                 rule, False)
  k_i, k_a = jax.random.split(rng)
  i = jax.random.randint(k_i, (), 0, n)
  alpha = jax.random.uniform(k_a, ())
  src = jax.tree.map(lambda s: s[i], sources)
  return loss_fn(_lerp(star, src, alpha, ("star", "sources[i]"), lambda path, _: fixed[path]), batch)


def star_barriers(loss_fn: Callable[[PyTree], jax.Array], center: PyTree, models: Sequence[PyTree], *,
                  alphas: jax.Array | Sequence[float] | None = None,
                  integer_leaves: IntegerLeaves = "error") -> jax.Array:
  """Loss barrier between ``center`` and each of ``models``: the star-domain check of Sonthalia et al.
  (arXiv:2403.07968), Def. 3.1. ``center`` is a star point of the set when every barrier is ~0 (align the models
  to ``center`` first; barriers are measured modulo permutation in the paper).

  Integer/bool leaves follow ``integer_leaves`` as in :func:`interpolation_curve`.

  Returns:
    Array of shape ``(len(models),)``.
  """
  models = list(models)
  if len(models) == 0:
    raise ValueError("models must hold at least one model, got an empty sequence.")
  check_same_structure([center] + models, ["center"] + [f"models[{i}]" for i in range(len(models))])
  return jnp.stack([interpolation_curve(loss_fn, center, m, alphas, integer_leaves=integer_leaves)[1]
                    for m in models])
