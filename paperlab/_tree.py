"""Pytree helpers shared by the weight-space families: key paths as strings, regex path filters, structure
checks that name the first differing path."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax


def path_str(path: tuple) -> str:
  """``/``-joined key path, e.g. ``"hidden/0/kernel"`` (dict keys, sequence indices and attributes).

  The trailing ``.value`` attribute of an ``nnx.State`` Variable is dropped, so a plain dict of parameters and the
  ``nnx.State`` it came from give the same paths (and path filters match both).
  """
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def leaf_paths(tree: Any) -> list[str]:
  """The ``/``-joined path of every leaf, in ``jax.tree.leaves`` order."""
  return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def path_mask(tree: Any, include: str | None = None, exclude: str | None = None) -> Any:
  """Boolean pytree (same structure) that is True where the leaf's path matches ``include`` (regex, searched)
  and does not match ``exclude``. Usable as an optax ``mask``. ``include=None`` selects every leaf."""
  inc = re.compile(include) if include is not None else None
  exc = re.compile(exclude) if exclude is not None else None

  def keep(path, _):
    s = path_str(path)
    return (inc is None or inc.search(s) is not None) and (exc is None or exc.search(s) is None)

  return jax.tree_util.tree_map_with_path(keep, tree)


def map_selected(fn: Callable, tree: Any, *rest: Any, include: str | None = None, exclude: str | None = None) -> Any:
  """``jax.tree.map(fn, tree, *rest)`` on leaves selected by the path filter; other leaves of ``tree`` pass through."""
  mask = path_mask(tree, include, exclude)
  return jax.tree.map(lambda m, x, *r: fn(x, *r) if m else x, mask, tree, *rest)


def check_same_structure(trees: Sequence[Any], names: Sequence[str] | str = "trees", *, check_shapes: bool = True) -> None:
  """Raise ``ValueError`` naming the first path where ``trees`` differ in structure, shape (or are empty)."""
  if isinstance(names, str):
    names = [f"{names}[{i}]" for i in range(len(trees))]
  if len(trees) == 0:
    raise ValueError(f"expected at least one pytree, got an empty sequence for {names!r}.")
  ref_paths = dict(jax.tree_util.tree_flatten_with_path(trees[0])[0])
  ref_keys = [path_str(p) for p in ref_paths]
  for name, tree in zip(names[1:], trees[1:]):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    keys = [path_str(p) for p, _ in leaves]
    if keys != ref_keys:
      missing = [k for k in ref_keys if k not in keys]
      extra = [k for k in keys if k not in ref_keys]
      first = (missing or extra or [next(a for a, b in zip(ref_keys, keys) if a != b)])[0]
      raise ValueError(f"{name} does not match {names[0]} in structure: first differing path {first!r} "
                       f"(missing {missing[:3]}, unexpected {extra[:3]}).")
    if check_shapes:
      for (p, leaf), (_, ref) in zip(leaves, ref_paths.items()):
        if jax.numpy.shape(leaf) != jax.numpy.shape(ref):
          raise ValueError(f"{name} does not match {names[0]} at path {path_str(p)!r}: shape "
                           f"{jax.numpy.shape(leaf)} vs {jax.numpy.shape(ref)}.")
