"""Private helpers of the adapter modules that are not LoRA-named (FLoRA, Hydra, MoS, PELA): leaf selection by
path regex for any rank of kernel, rank checks, and a per-path map over a parameter pytree."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from paperlab._tree import path_str

PyTree = Any


def select_leaves(params: PyTree, include: str, exclude: str | None, ndims: tuple[int, ...]) -> dict[str, jax.Array]:
  """``{path: leaf}`` for leaves with ``ndim in ndims`` whose path matches ``include`` and not ``exclude``."""
  if not isinstance(include, str):
    raise TypeError(f"include must be a regex string, got {include!r}.")
  inc, exc = re.compile(include), re.compile(exclude) if exclude is not None else None
  flat = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  ok = {k: v for k, v in flat.items() if jnp.ndim(v) in ndims}
  chosen = {k: v for k, v in ok.items() if inc.search(k) and not (exc is not None and exc.search(k))}
  if not chosen:
    raise ValueError(f"include={include!r} (exclude={exclude!r}) matches no kernel with ndim in {ndims}; those "
                     f"leaves are {sorted(ok)}.")
  return chosen


def check_rank(name: str, r: Any, limit: int, path: str, shape: tuple[int, ...]) -> int:
  if not isinstance(r, int) or isinstance(r, bool) or r < 1:
    raise ValueError(f"{name} must be a positive int, got {r!r}.")
  if r > limit:
    raise ValueError(f"{name}={r} exceeds {limit}, the largest rank the kernel {path!r} with shape {tuple(shape)} "
                     "allows.")
  return r


def flat_leaves(params: PyTree) -> dict[str, jax.Array]:
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def check_paths(params: PyTree, adapters: Mapping[str, Any], ndims: tuple[int, ...], what: str) -> dict[str, jax.Array]:
  """The leaves named by ``adapters``; a name that is not a leaf of ``params`` with ``ndim in ndims`` is an error."""
  flat = flat_leaves(params)
  for path in adapters:
    if path not in flat or jnp.ndim(flat[path]) not in ndims:
      raise ValueError(f"{what} names the kernel {path!r}, which is not a leaf of params with ndim in {ndims}; those "
                       f"are {sorted(k for k, v in flat.items() if jnp.ndim(v) in ndims)}.")
  return flat


def map_paths(params: PyTree, fn: Callable[[str, jax.Array], jax.Array]) -> PyTree:
  """``tree_map_with_path`` with the ``/``-joined path string."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), params)


def sibling(path: str, name: str) -> str:
  """``"hidden/0/kernel"`` -> ``"hidden/0/<name>"``."""
  return "/".join(path.split("/")[:-1] + [name])
