"""MoS (mixture of shards): LoRA matrices of every layer assembled from a pool of shards shared across layers.

Wang et al., "MoS: Unleashing Parameter Efficiency of Low-Rank Adaptation with Mixture of Shards",
arXiv:2410.00938 (Sec. 3). Instead of one ``(A, B)`` pair per layer, the rank vectors of all layers are drawn from a
global pool of trainable *shards*, with four nearly free differentiation strategies so that layers still differ:

* **vector sharding** -- each rank vector (a row of ``A (r, in)`` or a column of ``B (out, r)``) is the
  concatenation of ``l = shards_per_vector`` shards of length ``d / l``;
* **subset selection** -- each layer uses a random subset of the pool (a fixed index per slot, drawn at init);
* **pair dissociation** -- ``A`` and ``B`` draw their shards from separate pools with independent indices;
* **shard privatization** -- each layer also owns ``private`` shards (per matrix) that no other layer uses.

A layer's update is LoRA's, ``Delta W = (alpha / r) A^T B^T`` in Flax layout, so :func:`mos_to_lora` gives plain LoRA
adapters that :func:`paperlab.peft.apply_adapters` merges, :func:`paperlab.peft.unmerge_adapters` unmerges and
:func:`paperlab.peft.save_pretrained` exports; gradients flow through the gather into the shared shards (a shard used
by several layers sums their gradients). Pools are grouped by (matrix, shard length), so layers of different widths
share within their own group. No official code was available here; the layout follows the paper's description.

Trainable parameters: ``{"shared": {"A/<len>": (n, len), "B/<len>": (n, len)}, "private": {path: {"A": (p, len_A),
"B": (p, len_B)}}}``. The routing (which shard fills which slot) is static host data, ``{path: {"A": int32 (r l,),
"B": int32 (r l,)}}``, index ``< p`` meaning the layer's private shard and ``>= p`` the shared shard ``index - p``.
``A`` shards start kaiming-uniform (``U(+-1/sqrt(in))``, as peft's ``lora_A``) and ``B`` shards at zero, so the
adapted model starts equal to the base.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.peft._select import check_rank, select_leaves

PyTree = Any

__all__ = ["mos_init", "mos_to_lora", "mos_num_params"]


def _int(name: str, v: Any, low: int) -> int:
  if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
    raise ValueError(f"{name} must be an int >= {low}, got {v!r}.")
  return int(v)


def mos_init(key: jax.Array, params: PyTree, *, include: str, r: int, pool_size: int, shards_per_vector: int = 1,
             private: int = 0, exclude: str | None = None, dtype=None
             ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
  """MoS shard pools and routing (arXiv:2410.00938) for the 2-D kernels selected by ``include``.

  Args:
    key: PRNG key (shards and routing).
    params: parameter pytree (dict or ``nnx.State``) with Flax ``(in, out)`` kernels.
    include: regex on ``/``-joined paths (must select at least one 2-D leaf).
    r: the LoRA rank of every layer, ``1 <= r <= min(in, out)``.
    pool_size: shared shards per pool (one pool per matrix and shard length).
    shards_per_vector: ``l``, shards per rank vector (vector sharding); must divide ``in`` and ``out``.
    private: private shards per layer and matrix (shard privatization), ``private <= r l``.
    exclude: optional regex of paths to leave alone.
    dtype: shard dtype (default float32).

  Returns:
    ``(shards, routing)`` as in the module docstring: ``shards`` is the trainable pytree, ``routing`` static numpy.

  Raises:
    ValueError: ``pool_size + private < r l`` (a layer could not fill its slots with distinct shards), ``l`` not
      dividing a width, or ranks out of range.
  """
  l = _int("shards_per_vector", shards_per_vector, 1)
  p = _int("private", private, 0)
  n = _int("pool_size", pool_size, 0)
  kernels = select_leaves(params, include, exclude, (2,))
  dt = dtype or jnp.float32
  groups: dict[str, int] = {}
  shards: dict[str, Any] = {"shared": {}, "private": {}}
  routing: dict[str, dict[str, np.ndarray]] = {}
  raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  rng = np.random.default_rng(np.asarray(raw).ravel().tolist())  # host-side routing, fixed by the key
  for i, (path, w) in enumerate(sorted(kernels.items())):
    d_in, d_out = w.shape
    check_rank("r", r, min(d_in, d_out), path, w.shape)
    slots = r * l
    if p > slots:
      raise ValueError(f"private={p} exceeds the r * shards_per_vector = {slots} slots of each matrix.")
    if n + p < slots:
      raise ValueError(f"pool_size={n} + private={p} < r * shards_per_vector = {slots}: a layer cannot fill its "
                       "slots with distinct shards.")
    routing[path] = {}
    shards["private"][path] = {}
    for j, (mat, d) in enumerate((("A", d_in), ("B", d_out))):
      if d % l:
        raise ValueError(f"shards_per_vector={l} must divide the width {d} of the kernel {path!r} ({mat}).")
      length = d // l
      group = f"{mat}/{length}"
      if group not in groups:
        groups[group] = len(groups)
        shards["shared"][group] = _draw(jax.random.fold_in(key, 1000 + groups[group]), (n, length), mat, d, dt)
      shards["private"][path][mat] = _draw(jax.random.fold_in(jax.random.fold_in(key, i), j), (p, length), mat, d, dt)
      # every private shard once, the other slots from a random subset of the shared pool, then shuffled
      idx = np.concatenate([np.arange(p), p + rng.choice(n, slots - p, replace=False)])
      routing[path][mat] = rng.permutation(idx).astype(np.int32)
  return shards, routing


def _draw(key: jax.Array, shape: tuple[int, int], mat: str, d: int, dtype) -> jax.Array:
  if mat == "B":
    return jnp.zeros(shape, dtype)
  bound = 1.0 / math.sqrt(d)  # peft lora_A: kaiming_uniform_(a=sqrt(5)) on (r, in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def mos_to_lora(shards: Mapping[str, Any], routing: Mapping[str, Mapping[str, np.ndarray]], r: int
                ) -> dict[str, dict[str, jax.Array]]:
  """Assemble each layer's LoRA pair from its shards (jittable in ``shards``; ``routing`` and ``r`` static).

  Returns:
    ``{path: {"lora_A": (r, in), "lora_B": (out, r)}}`` where row ``k`` of ``A`` is the concatenation of the shards
    in slots ``k l .. k l + l - 1`` of the ``A`` routing, and likewise column ``k`` of ``B``.

  Raises:
    ValueError: a routing whose length is not a multiple of ``r`` or that names a missing layer.
  """
  out = {}
  for path, route in routing.items():
    if path not in shards["private"]:
      raise ValueError(f"routing names {path!r}, which has no private shards entry; layers are "
                       f"{sorted(shards['private'])}.")
    pair = {}
    for mat in ("A", "B"):
      priv = shards["private"][path][mat]
      group = f"{mat}/{priv.shape[1]}"
      pool = jnp.concatenate([priv, shards["shared"][group]], axis=0)
      idx = np.asarray(route[mat])
      if idx.size % r:
        raise ValueError(f"routing[{path!r}][{mat!r}] has {idx.size} slots, not a multiple of r={r}.")
      vectors = pool[idx].reshape(r, -1)  # (r, d): shard k*l .. k*l+l-1 concatenated
      pair["lora_A" if mat == "A" else "lora_B"] = vectors if mat == "A" else vectors.T
    out[path] = pair
  return out


def mos_num_params(shards: Mapping[str, Any]) -> int:
  """Trainable scalars of a MoS shard set (shared pools plus private shards)."""
  return int(sum(np.size(x) for x in jax.tree.leaves(shards)))
