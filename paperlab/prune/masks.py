"""Sparsity masks as pytrees: global and per-layer magnitude masks, N:M structured masks, ERK densities and random
masks, and an optax transform that keeps pruned weights at exactly zero through any optimizer.

A mask is a pytree of ``bool`` arrays with the structure and shapes of the parameters (``True`` = kept). Which
leaves are prunable is a path filter: by default every leaf with ``ndim >= 2`` (kernels; biases and norm scales are
left dense, the convention of Zhu & Gupta and of ``torch.nn.utils.prune`` examples), or a regex ``include`` on the
``/``-joined key path. Non-prunable leaves get all-``True`` masks.

Counts are exact, as in ``torch.nn.utils.prune``: ``L1Unstructured(amount)`` prunes ``round(amount * n)`` entries
(round half to even) with the smallest ``|w|``, per tensor (``scope="layer"``) or over all prunable tensors
concatenated (``scope="global"``, ``prune.global_unstructured``). The ranking is by a stable sort, so ties are
broken by position and the count stays exact. ``sparsity`` may be a traced scalar (the gradual schedules call this
inside ``jit``): the mask is ``rank >= k`` rather than a ``top_k`` of static size.

References:
  Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression",
    arXiv:1710.01878 (magnitude pruning, eq. 1 schedule in :mod:`paperlab.prune.schedules`).
  Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378 (2:4 structured sparsity).
  Evci et al., "Rigging the Lottery: Making All Tickets Winners", arXiv:1911.11134 (ERK densities, Appendix).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab._tree import path_str

PyTree = Any

__all__ = ["SCOPES", "prunable", "magnitude_masks", "nm_masks", "erk_densities", "random_masks", "erk_masks",
           "apply_masks",
           "sparsity", "layer_sparsities", "keep_pruned_zero"]

SCOPES = ("global", "layer")


def _check_sparsity(value) -> Any:
  return _checks.check_range("sparsity", value, 0.0, 1.0, high_inclusive=False)


def prunable(params: PyTree, include: str | None = None, exclude: str | None = None) -> PyTree:
  """Boolean pytree: True on the leaves that pruning touches (``ndim >= 2`` by default, else the regex ``include``
  searched in the ``/``-joined path), minus ``exclude``.

  Raises:
    ValueError: the filter selects no leaf.
  """
  inc, exc = (re.compile(include) if include is not None else None), (re.compile(exclude) if exclude else None)

  def sel(p, x):
    s = path_str(p)
    chosen = inc.search(s) is not None if inc is not None else jnp.ndim(x) >= 2
    return bool(chosen and not (exc is not None and exc.search(s)))

  out = jax.tree_util.tree_map_with_path(sel, params)
  if not any(jax.tree.leaves(out)):
    raise ValueError(f"include={include!r} (exclude={exclude!r}) selects no prunable leaf; paths are "
                     f"{[path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]][:20]}.")
  return out


def _num_pruned(sparsity_value, n: int):
  """``round(sparsity * n)`` like torch's ``_compute_nparams_toprune``: exact Python int when concrete."""
  v = _checks._concrete(sparsity_value)
  if v is not None:
    return round(v * n)
  return jnp.round(jnp.asarray(sparsity_value, jnp.float32) * n).astype(jnp.int32)


def _rank(scores: jax.Array) -> jax.Array:
  """Ascending rank (0 = smallest) of every entry of a flat array; ties broken by position."""
  order = jnp.argsort(scores, stable=True)
  return jnp.zeros(scores.shape, jnp.int32).at[order].set(jnp.arange(scores.size, dtype=jnp.int32))


def _full_masks(params: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)


def magnitude_masks(params: PyTree, sparsity: float, *, scope: str = "global", include: str | None = None,
                    exclude: str | None = None) -> PyTree:
  """Keep-masks pruning the ``round(sparsity * n)`` smallest-``|w|`` entries (Zhu & Gupta, arXiv:1710.01878).

  Args:
    params: parameter pytree.
    sparsity: fraction pruned, in ``[0, 1)`` (concrete or traced).
    scope: ``"global"`` (one threshold over all prunable leaves; ``prune.global_unstructured`` with
      ``L1Unstructured``) or ``"layer"`` (each leaf pruned to ``sparsity``; ``prune.l1_unstructured``).
    include, exclude: path filter of prunable leaves (see :func:`prunable`).

  Returns:
    A bool pytree like ``params``.
  """
  _check_sparsity(sparsity)
  _checks.check_choice("scope", scope, SCOPES)
  sel = prunable(params, include, exclude)
  leaves, treedef = jax.tree.flatten(params)
  chosen = treedef.flatten_up_to(sel)
  out = [jnp.ones(jnp.shape(x), bool) for x in leaves]
  idx = [i for i, c in enumerate(chosen) if c]
  if scope == "layer":
    for i in idx:
      x = leaves[i]
      out[i] = (_rank(jnp.abs(x).reshape(-1).astype(jnp.float32)) >= _num_pruned(sparsity, x.size)).reshape(x.shape)
  else:
    flat = jnp.concatenate([jnp.abs(leaves[i]).reshape(-1).astype(jnp.float32) for i in idx])
    keep = _rank(flat) >= _num_pruned(sparsity, flat.size)
    start = 0
    for i in idx:
      n = leaves[i].size
      out[i] = keep[start:start + n].reshape(leaves[i].shape)
      start += n
  return jax.tree.unflatten(treedef, out)


def nm_masks(params: PyTree, n: int = 2, m: int = 4, *, axis: int = 0, include: str | None = None,
             exclude: str | None = None) -> PyTree:
  """N:M structured keep-masks: in every group of ``m`` consecutive entries along ``axis`` keep the ``n`` largest
  ``|w|`` (2:4 is NVIDIA's sparse tensor core pattern, Mishra et al., arXiv:2104.08378). The default ``axis=0``
  is the input dimension of a Flax ``(in, out)`` kernel -- the reduction dimension, as on the hardware.

  Raises:
    ValueError: ``n`` outside ``[0, m]``, ``m < 1``, or a prunable leaf whose ``axis`` length ``m`` does not divide.
  """
  if not isinstance(m, int) or m < 1:
    raise ValueError(f"m must be a positive int, got {m!r}.")
  if not isinstance(n, int) or not 0 <= n <= m:
    raise ValueError(f"n must be an int in [0, m={m}], got {n!r}.")
  sel = prunable(params, include, exclude)

  def one(chosen, x):
    if not chosen:
      return jnp.ones(jnp.shape(x), bool)
    xm = jnp.moveaxis(jnp.abs(x), axis, 0)
    if xm.shape[0] % m:
      raise ValueError(f"m={m} must divide the length {xm.shape[0]} of axis {axis} of a leaf of shape {x.shape}.")
    groups = xm.reshape(xm.shape[0] // m, m, *xm.shape[1:])
    order = jnp.argsort(-groups, axis=1, stable=True)
    ranks = jnp.argsort(order, axis=1)  # 0 = largest within the group
    return jnp.moveaxis((ranks < n).reshape(xm.shape), 0, axis)

  return jax.tree.map(one, sel, params)


def erk_densities(shapes: Mapping[str, tuple[int, ...]], density: float, *, power_scale: float = 1.0
                  ) -> dict[str, float]:
  """Erdos-Renyi-Kernel layer densities (Evci et al., arXiv:1911.11134, Appendix; the RigL / GraNet code's
  ``ERK`` init): density ``eps * (sum(shape) / prod(shape))**power_scale`` per layer, ``eps`` chosen so the kept
  count equals ``density * total``; layers that would exceed density 1 are made dense and ``eps`` is re-solved.
  Host-side (Python floats).

  Raises:
    ValueError: ``density`` outside ``(0, 1]``.
  """
  _checks.check_range("density", density, 0.0, 1.0, low_inclusive=False)
  dense: set[str] = set()
  while True:
    rhs, divisor, raw = 0.0, 0.0, {}
    for name, shape in shapes.items():
      n = math.prod(shape)
      if name in dense:
        rhs -= n * (1 - density)
      else:
        rhs += n * density
        raw[name] = (sum(shape) / n) ** power_scale
        divisor += raw[name] * n
    eps = rhs / divisor
    top = max(raw.values())
    if top * eps > 1:
      dense |= {k for k, v in raw.items() if v == top}
      continue
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def random_masks(key: jax.Array, params: PyTree, densities: Mapping[str, float] | float, *,
                 include: str | None = None, exclude: str | None = None) -> PyTree:
  """Uniformly random keep-masks keeping exactly ``round(density * n)`` entries of each prunable leaf.

  Args:
    key: PRNG key.
    params: parameter pytree.
    densities: one density for every prunable leaf, or ``{path: density}`` (e.g. :func:`erk_densities`).
    include, exclude: path filter (see :func:`prunable`).
  """
  sel = prunable(params, include, exclude)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  chosen = jax.tree.leaves(sel)
  out = []
  for i, ((p, x), c) in enumerate(zip(flat, chosen)):
    if not c:
      out.append(jnp.ones(jnp.shape(x), bool))
      continue
    d = densities if not isinstance(densities, Mapping) else densities[path_str(p)]
    _checks.check_range("density", d, 0.0, 1.0)
    keep = x.size - _num_pruned(1.0 - d, x.size)
    ranks = _rank(jax.random.uniform(jax.random.fold_in(key, i), (x.size,)))
    out.append((ranks < keep).reshape(x.shape))
  return jax.tree.unflatten(jax.tree.structure(params), out)


def erk_masks(key: jax.Array, params: PyTree, sparsity: float, *, power_scale: float = 1.0,
              include: str | None = None, exclude: str | None = None) -> PyTree:
  """Random keep-masks with ERK layer densities (:func:`erk_densities` over the prunable leaves) at total
  ``sparsity``: the sparse-to-sparse initialization of RigL and GraNet (``sparse_init="ERK"``)."""
  _check_sparsity(sparsity)
  sel = prunable(params, include, exclude)
  shapes = {path_str(p): x.shape for (p, x), c in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                                      jax.tree.leaves(sel)) if c}
  return random_masks(key, params, erk_densities(shapes, 1.0 - sparsity, power_scale=power_scale),
                      include=include, exclude=exclude)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """``params * masks`` leaf by leaf (dtype kept)."""
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros((), x.dtype)), params, masks)


def sparsity(masks: PyTree, prunable_only: PyTree | None = None) -> jax.Array:
  """Fraction of pruned entries over all leaves (or over the leaves where ``prunable_only`` is True)."""
  leaves = jax.tree.leaves(masks)
  chosen = jax.tree.leaves(prunable_only) if prunable_only is not None else [True] * len(leaves)
  pruned = sum(jnp.sum(~m) for m, c in zip(leaves, chosen) if c)
  total = sum(m.size for m, c in zip(leaves, chosen) if c)
  return pruned / total


def layer_sparsities(masks: PyTree) -> dict[str, float]:
  """``{path: fraction pruned}`` of every leaf."""
  return {path_str(p): float(jnp.mean(~m)) for p, m in jax.tree_util.tree_flatten_with_path(masks)[0]}


class KeepPrunedZeroState(NamedTuple):
  """No state: the masks are fixed at construction or passed per call."""


def keep_pruned_zero(masks: PyTree | None = None) -> optax.GradientTransformationExtraArgs:
  """An optax transform, chained last, that keeps pruned weights at exactly zero through any optimizer.

  Where the mask is False the update becomes ``-params`` (so ``params + update`` is exactly ``0``, whatever the
  optimizer, momentum or weight decay before it produced); elsewhere the update passes unchanged. Without
  ``params`` the update is simply masked. Masks are fixed here or passed per call as ``update(..., masks=m)`` (mask
  schedules such as GraNet's change them during training).

  Example: ``optax.chain(optax.adamw(1e-3, weight_decay=1e-4), keep_pruned_zero(masks))``.
  """

  fixed = masks

  def init_fn(params):
    del params
    return KeepPrunedZeroState()

  def update_fn(updates, state, params=None, *, masks: PyTree | None = None, **extra):
    del extra
    m = fixed if masks is None else masks
    if m is None:
      raise ValueError("keep_pruned_zero needs masks: at construction or as update(..., masks=...).")
    if params is None:
      return jax.tree.map(lambda u, k: jnp.where(k, u, jnp.zeros((), u.dtype)), updates, m), state
    return jax.tree.map(lambda u, k, p: jnp.where(k, u, -p.astype(u.dtype)), updates, m, params), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
