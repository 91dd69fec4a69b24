"""PERP: after pruning, retrain only a small expressive subset of the parameters -- biases, normalization scales
and shifts, (optionally) the head, and MaskLoRA adapters whose merge keeps the sparsity pattern.

Zimmer et al., "PERP: Rethinking the Prune-Retrain Paradigm in the Era of LLMs", arXiv:2312.15230, Sec. 2-3:
retraining the biases and LayerNorm parameters (0.27-0.35% of OPT's parameters) already recovers most of the
accuracy lost to magnitude pruning; LoRA adapters add capacity, and **MaskLoRA** keeps the pruned zeros when merged,
``W_eff = M * (W + s B A)``.

Adapters use peft's layout (``lora_A (r, in)``, ``lora_B (out, r)``) on Flax ``(in, out)`` kernels:
``W_eff = M * (W + s A^T B^T)``, ``s = alpha / r``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from paperlab._tree import path_str

PyTree = Any

__all__ = ["PERP_DEFAULT", "perp_trainable", "trainable_fraction", "mask_lora_init", "mask_lora_kernel",
           "merge_mask_lora"]

PERP_DEFAULT = r"bias$|scale$"  # biases and normalization scale/shift (LayerNorm's ``bias`` matches ``bias$``)


def perp_trainable(params: PyTree, include: str = PERP_DEFAULT, exclude: str | None = None) -> PyTree:
  """Bool pytree (an ``optax.masked`` / :func:`paperlab.peft.train_only`-style mask): True on the leaves PERP
  retrains, selected by the regex ``include`` on the ``/``-joined path (default: biases and norm parameters; add
  ``|^head/`` for the head).

  Raises:
    ValueError: the regex selects no leaf.
  """
  inc, exc = re.compile(include), re.compile(exclude) if exclude else None
  out = jax.tree_util.tree_map_with_path(
      lambda p, _: bool(inc.search(path_str(p)) and not (exc is not None and exc.search(path_str(p)))), params)
  if not any(jax.tree.leaves(out)):
    raise ValueError(f"include={include!r} (exclude={exclude!r}) selects no leaf; paths are "
                     f"{[path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]][:20]}.")
  return out


def trainable_fraction(params: PyTree, trainable: PyTree, extra: PyTree = None) -> float:
  """(number of scalars in the leaves marked trainable + in ``extra`` (e.g. adapters)) / (all scalars of
  ``params`` + ``extra``)."""
  total = sum(x.size for x in jax.tree.leaves(params))
  chosen = sum(x.size for x, t in zip(jax.tree.leaves(params), jax.tree.leaves(trainable)) if t)
  add = sum(x.size for x in jax.tree.leaves(extra)) if extra is not None else 0
  return (chosen + add) / (total + add)


def mask_lora_init(key: jax.Array, params: PyTree, *, include: str, r: int, dtype=None
                   ) -> dict[str, dict[str, jax.Array]]:
  """``{kernel path: {"lora_A": (r, in), "lora_B": (out, r)}}`` for the 2-D leaves matching ``include``: A
  kaiming-uniform (peft's ``kaiming_uniform_(a=sqrt(5))``, U(+-1/sqrt(in))), B zero.

  Raises:
    ValueError: no 2-D leaf matches, or ``r`` is not in ``[1, min(in, out)]``.
  """
  inc = re.compile(include)
  kernels = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
             if jnp.ndim(x) == 2 and inc.search(path_str(p))}
  if not kernels:
    raise ValueError(f"include={include!r} matches no 2-D kernel.")
  out = {}
  for i, (path, w) in enumerate(sorted(kernels.items())):
    d_in, d_out = w.shape
    if not isinstance(r, int) or not 1 <= r <= min(d_in, d_out):
      raise ValueError(f"r must be an int in [1, min(in, out)={min(d_in, d_out)}] for {path!r}, got {r!r}.")
    bound = 1.0 / math.sqrt(d_in)
    dt = dtype or w.dtype
    out[path] = {"lora_A": jax.random.uniform(jax.random.fold_in(key, i), (r, d_in), dt, -bound, bound),
                 "lora_B": jnp.zeros((d_out, r), dt)}
  return out


def mask_lora_kernel(w: jax.Array, mask: jax.Array, lora_A: jax.Array, lora_B: jax.Array, alpha: float = 8.0
                     ) -> jax.Array:
  """MaskLoRA (arXiv:2312.15230, Sec. 3): ``M * (W + (alpha / r) A^T B^T)`` in Flax layout, ``w``'s dtype."""
  r = lora_A.shape[0]
  delta = (alpha / r) * (lora_A.astype(jnp.float32).T @ lora_B.astype(jnp.float32).T)
  return jnp.where(mask, w.astype(jnp.float32) + delta, 0.0).astype(w.dtype)


def merge_mask_lora(params: PyTree, masks: PyTree, adapters: Mapping[str, Mapping[str, jax.Array]],
                    alpha: float = 8.0) -> PyTree:
  """``params`` with each adapted kernel replaced by :func:`mask_lora_kernel` (its zero pattern is the mask's);
  other leaves pass unchanged.

  Raises:
    ValueError: an adapter path that is not a leaf of ``params``.
  """
  paths = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing = sorted(set(adapters) - paths)
  if missing:
    raise ValueError(f"adapters name {missing}, which are not leaves of params.")

  def leaf(p, w, m):
    a = adapters.get(path_str(p))
    return w if a is None else mask_lora_kernel(w, m, a["lora_A"], a["lora_B"], alpha)

  return jax.tree_util.tree_map_with_path(leaf, params, masks)
