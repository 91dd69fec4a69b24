"""Import and export parameter pytrees as safetensors files (never pickle), so weights saved elsewhere can be
merged here and merged weights can be loaded elsewhere.

Tensor names are the ``/``-joined key paths of the leaves (``"hidden/0/kernel"``); an ``nnx.State`` is stored
through its pure-dict form, so its names carry no ``/value`` suffix.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paperlab._tree import path_str

PyTree = Any

__all__ = ["flatten_to_dict", "unflatten_from_dict", "save_safetensors", "load_safetensors"]


def _as_pure(tree: PyTree) -> tuple[PyTree, bool]:
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover
    return tree, False
  if isinstance(tree, nnx.State):
    return nnx.to_pure_dict(tree), True
  return tree, False


def flatten_to_dict(tree: PyTree) -> dict[str, jax.Array]:
  """``{"/"-joined key path: leaf}`` for every leaf of ``tree`` (plain nested containers or ``nnx.State``).

  Raises ``ValueError`` when two paths collide (a key containing ``/``) or a leaf is not an array."""
  pure, _ = _as_pure(tree)
  out: dict[str, jax.Array] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
    name = path_str(path)
    if name in out:
      raise ValueError(f"two leaves share the tensor name {name!r}; keys must not contain '/'.")
    if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
      raise TypeError(f"leaf {name!r} must be an array to be saved as a tensor, got {type(leaf).__name__}.")
    out[name] = leaf
  return out


def _nest(flat: Mapping[str, Any]) -> dict:
  root: dict = {}
  for name, value in flat.items():
    parts = [int(p) if p.isdigit() else p for p in name.split("/")]
    node = root
    for p in parts[:-1]:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"tensor name {name!r} nests under a leaf.")
    node[parts[-1]] = value
  return root


def unflatten_from_dict(flat: Mapping[str, Any], like: PyTree | None = None) -> PyTree:
  """Inverse of :func:`flatten_to_dict`.

  With ``like`` (a pytree or ``nnx.State``) the result has exactly its structure; a missing or unexpected name,
  or a shape differing from ``like``'s, raises ``ValueError`` naming it. Without ``like`` the result is a nested
  dict split on ``/`` in which all-digit components become int keys (the layout of ``nnx.to_pure_dict``)."""
  if like is None:
    return _nest(flat)
  pure, is_state = _as_pure(like)
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(pure)
  names = [path_str(p) for p, _ in leaves_with_path]
  missing = [n for n in names if n not in flat]
  extra = [n for n in flat if n not in set(names)]
  if missing or extra:
    raise ValueError(f"tensor names do not match `like`: missing {missing[:5]}, unexpected {extra[:5]}.")
  out = []
  for name, (_, ref) in zip(names, leaves_with_path):
    value = flat[name]
    if tuple(np.shape(value)) != tuple(np.shape(ref)):
      raise ValueError(f"tensor {name!r} has shape {tuple(np.shape(value))}, expected {tuple(np.shape(ref))}.")
    out.append(value)
  result = jax.tree.unflatten(treedef, out)
  if is_state:
    from flax import nnx

    state = jax.tree.map(lambda x: x, like)
    nnx.replace_by_pure_dict(state, result)
    return state
  return result


def save_safetensors(tree: PyTree, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> None:
  """Write ``tree`` to a ``.safetensors`` file, one tensor per leaf named by its ``/``-joined key path.

  Dtypes are kept (bfloat16 and float16 included). ``metadata`` is an optional ``str -> str`` header map."""
  from safetensors.flax import save_file

  flat = {k: jnp.asarray(v) for k, v in flatten_to_dict(tree).items()}
  if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
    raise TypeError("metadata must map str to str.")
  save_file(flat, os.fspath(path), metadata=dict(metadata) if metadata is not None else None)


def load_safetensors(path: str | os.PathLike, like: PyTree | None = None) -> PyTree:
  """Read a ``.safetensors`` file into a pytree (see :func:`unflatten_from_dict` for ``like``). Tensors come
  back as ``jax.Array`` in their stored dtypes. No code is executed while loading (no pickle)."""
  from safetensors.flax import load_file

  return unflatten_from_dict(load_file(os.fspath(path)), like)
