"""Path-regex rules over parameter pytrees, shared by ``quantize_params``, the QAT helpers and
``quantize_checkpoint``: ``(regex, spec)`` pairs matched with ``re.fullmatch`` against ``/``-joined paths, the
first matching rule wins, a rule that matches no floating leaf is an error."""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from paperlab._tree import path_str

Compiled = list[tuple[re.Pattern, str, Any]]


def compile_rules(rules: Sequence[tuple[str, Any]], spec_fn: Callable[[str, Any], Any]) -> Compiled:
  """``[(compiled regex, pattern, spec_fn(pattern, spec))]``; ValueError for anything but a sequence of
  ``(str, spec)`` pairs (``spec_fn`` validates the spec and returns ``None`` for "keep in float")."""
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise ValueError(f"rules must be a sequence of (regex, spec) pairs, got {rules!r}.")
  compiled = []
  for i, rule in enumerate(rules):
    if not (isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)):
      raise ValueError(f"rules[{i}] must be a (regex, spec) pair, got {rule!r}.")
    compiled.append((re.compile(rule[0]), rule[0], spec_fn(rule[0], rule[1])))
  return compiled


def map_rules(params: Any, compiled: Compiled, fn: Callable[[str, Any, Any], Any], what: str) -> Any:
  """Apply ``fn(path, leaf, spec)`` to every floating leaf whose path a rule matches first (``spec`` not None);
  errors of ``fn`` are prefixed with ``what``, the path and the rule; unused rules are a ValueError listing the
  floating paths."""
  used = [False] * len(compiled)
  paths = []

  def one(path, leaf):
    p = path_str(path)
    if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)):
      return leaf
    paths.append(p)
    for i, (rx, pattern, spec) in enumerate(compiled):
      if rx.fullmatch(p):
        used[i] = True
        if spec is None:
          return leaf
        try:
          return fn(p, leaf, spec)
        except (ValueError, TypeError) as e:
          raise type(e)(f"{what} at {p!r} (rule {pattern!r}): {e}") from None
    return leaf

  out = jax.tree_util.tree_map_with_path(one, params)
  unused = [pattern for (_, pattern, _), u in zip(compiled, used) if not u]
  if unused:
    raise ValueError(f"rules {unused} matched no floating leaf (or only leaves an earlier rule took: the first "
                     f"match wins); the floating leaf paths are {paths}.")
  return out
