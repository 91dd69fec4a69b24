"""Logit Attenuating Weight Normalization (LAWN): after a free phase, the weight norms of the final layers are frozen
and every step is taken on the sphere of the frozen norm, so the logits can no longer grow by scaling.

Gupta, Ramanath, Shi, Ramachandran, Zhou, Zhou & Keerthi, "Logit Attenuating Weight Normalization",
arXiv:2108.05839, Sec. 3 (Algorithm 1). ``lawn(base, free_steps=..., mask=...)`` wraps any optax optimizer::

    tx = lawn(optax.adam(1e-3), free_steps=100, mask=r"head/kernel$")
    updates, state = tx.update(grads, state, params)   # params are required
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_choice, check_positive
from paperlab._tree import path_mask

PyTree = Any

__all__ = ["LawnState", "lawn"]

_GRANULARITIES = ("layer", "neuron")


class LawnState(NamedTuple):
  """``count``: updates taken; ``norms``: the frozen norm of every constrained leaf (a scalar per layer or one per
  output unit; zeros until step ``free_steps``); ``base_state``: the wrapped optimizer's state."""

  count: jax.Array
  norms: PyTree
  base_state: optax.OptState


def lawn(base: optax.GradientTransformation, *, free_steps: int, mask: str | PyTree | Callable[[PyTree], PyTree],
         granularity: str = "layer", eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """LAWN stacked onto ``base`` (Gupta et al., arXiv:2108.05839, Algorithm 1).

  Phase 1 (the first ``free_steps`` updates): ``base`` unchanged. At update ``free_steps`` the norm ``c`` of every
  constrained weight ``w`` is frozen at its current value, and from then on each step is, for those weights:

  1. the radial component of the gradient is removed, ``g <- g - (<g, w> / ||w||^2) w`` (the gradient on the
     sphere ``||w|| = c``), and ``base`` maps it to its update ``u``;
  2. the step is taken and projected back onto the sphere, ``w <- c (w + u) / ||w + u||``.

  Unconstrained leaves receive ``base``'s update unchanged (for an elementwise ``base`` such as Adam, exactly what
  ``base`` alone gives them). The paper constrains the final homogeneous sub-network (e.g. the last linear layers)
  and reports per-layer norms; ``granularity="neuron"`` freezes one norm per output unit (Flax kernels: last axis)
  instead. Any warm-up of the learning rate after the free phase is a schedule of ``base``.

  ``lawn`` must be the last transform of the chain: its update is the whole step (``w_new - w``), so it must be
  applied as it is (``optax.apply_updates``), with the learning rate inside ``base``.

  Args:
    base: the optimizer, learning rate included (e.g. ``optax.adam(1e-3)``).
    free_steps: the length of the free phase (>= 0; ``0`` freezes the initial norms); a Python int, static under
      ``optax.inject_hyperparams`` (list it in ``static_args``).
    mask: which leaves are constrained: a regex searched in the ``/``-joined key path, a pytree of bools like the
      params, or a callable ``params -> such a pytree``.
    granularity: ``"layer"`` (one norm per leaf, the paper's) or ``"neuron"`` (one per output unit).
    eps: floor of norms in the projections.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires ``params``; extra arguments are passed
    to ``base``. Jittable; the state is a :class:`LawnState`.

  Raises:
    ValueError: ``free_steps`` negative or not an integer, an unknown ``granularity``, ``eps <= 0``; at ``update``,
      missing ``params``, a mask that selects nothing, or a ``"neuron"`` leaf with fewer than 2 axes.
  """
  if isinstance(free_steps, bool) or not isinstance(free_steps, int) or free_steps < 0:
    raise ValueError(f"free_steps must be a non-negative integer, got {free_steps!r}.")
  check_choice("granularity", granularity, _GRANULARITIES)
  check_positive("eps", eps)
  base = optax.with_extra_args_support(base)

  def mask_of(params):
    if isinstance(mask, str):
      out = path_mask(params, mask)
    elif callable(mask):
      out = mask(params)
    else:
      out = mask
    if not any(bool(m) for m in jax.tree.leaves(out)):
      raise ValueError(f"mask={mask!r} selects no parameter to constrain.")
    return out

  def norm(x):
    x = x.astype(jnp.float32)
    if granularity == "layer":
      return jnp.sqrt(jnp.sum(jnp.square(x)))
    if x.ndim < 2:
      raise ValueError(f"granularity='neuron' needs kernels with ndim >= 2 (last axis = output units), got shape "
                       f"{x.shape}.")
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1))))

  def init_fn(params):
    m = mask_of(params)
    norms = jax.tree.map(lambda keep, p: jnp.zeros_like(norm(p)) if keep else None, m, params)
    return LawnState(jnp.zeros([], jnp.int32), norms, base.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("lawn needs params in update(updates, state, params): the projections use the weights.")
    m = mask_of(params)
    constrained = state.count >= free_steps
    norms = jax.tree.map(lambda keep, n, p: jnp.where(state.count == free_steps, norm(p), n) if keep else None,
                         m, state.norms, params, is_leaf=lambda x: x is None)

    def tangent(keep, g, p):
      if not keep:
        return g
      g32, p32 = g.astype(jnp.float32), p.astype(jnp.float32)
      if granularity == "layer":
        radial = jnp.sum(g32 * p32) / jnp.maximum(jnp.sum(jnp.square(p32)), eps * eps) * p32
      else:
        axes = tuple(range(p.ndim - 1))
        radial = jnp.sum(g32 * p32, axes) / jnp.maximum(jnp.sum(jnp.square(p32), axes), eps * eps) * p32
      return jnp.where(constrained, g32 - radial, g32).astype(g.dtype)

    grads = jax.tree.map(tangent, m, updates, params)
    steps, base_state = base.update(grads, state.base_state, params, **extra_args)

    def project(keep, u, p, c):
      if not keep:
        return u
      moved = p.astype(jnp.float32) + u.astype(jnp.float32)
      on_sphere = moved * (c / jnp.maximum(norm(moved), eps))
      return jnp.where(constrained, on_sphere - p.astype(jnp.float32), u).astype(u.dtype)

    out = jax.tree.map(project, m, steps, params, norms, is_leaf=lambda x: x is None)
    return out, LawnState(state.count + 1, norms, base_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
