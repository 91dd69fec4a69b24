"""Low-rank and structured adapters as pytree transforms: LoRA, DoRA, LoHa / FedPara and Bone.

An adapter set is a plain dict ``{kernel path: {peft name: array}}``: the key is the ``/``-joined path of a 2-D
Flax kernel (``"hidden/0/kernel"``, shape ``(in, out)``) and the inner names and layouts are Hugging Face ``peft``'s,
so saving to and loading from ``peft`` is a renaming (see :mod:`paperlab.peft.io`):

=========  ==================================================================  ======================================
kind       arrays (torch layout, ``out`` x ``in`` weights)                      adapted Flax kernel ``W' (in, out)``
=========  ==================================================================  ======================================
LoRA       ``lora_A (r, in)``, ``lora_B (out, r)``                              ``W + s A^T B^T``, ``s = alpha / r``
DoRA       LoRA + ``lora_magnitude_vector (out,)``                              ``m * V / ||V||_col``, ``V`` = LoRA's
AdaLoRA    LoRA + ``lora_E (r, 1)`` (see :mod:`paperlab.peft.adalora`)        ``W + a/(r+1e-5) (A*E)^T B^T``
LoHa       ``hada_w1_a (out, r)``, ``hada_w1_b (r, in)``, ``hada_w2_*``        ``W + s ((w1a w1b) * (w2a w2b))^T``
Bone       ``miss_block (r, out)``                                              ``W + tile_in(b)`` (blocks of ``r``)
Bat        ``miss_block (out/r, r, r)``                                         ``W + W_blk b + b`` per ``r x r`` block
=========  ==================================================================  ======================================

The kind is read from the inner names (and the rank of ``miss_block``), so one ``apply_adapters`` serves every kind
and mixes them across layers. Everything is jittable; ranks are static (array shapes).

References:
  LoRA: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685 (eq. 3).
  DoRA: Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv:2402.09353 (eq. 5).
  FedPara / LoHa: Hyeon-Woo et al., "FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated
    Learning", arXiv:2108.06098 (Prop. 1, eq. 2).
  Bone: Kang, "Bone: Block Affine Transformation as Parameter Efficient Fine-tuning Methods for Large Language
    Models", arXiv:2409.15371 (peft's ``MissConfig`` is its maintained successor).
  Asymmetric LoRA: Zhu et al., "Asymmetry in Low-Rank Adapters of Foundation Models", arXiv:2402.16842.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab._tree import path_str

PyTree = Any
Adapters = dict[str, dict[str, jax.Array]]

__all__ = [
    "DEFAULT_ALPHA", "A_INITS", "select_kernels", "adapter_kind", "lora_init", "dora_init", "loha_init",
    "bone_init", "lora_delta", "dora_kernel", "hadamard_lowrank", "loha_delta", "pfedpara", "bone_kernel",
    "adalora_delta", "adapted_kernel", "apply_adapters", "merge_adapters", "unmerge_adapters", "count_params",
]

DEFAULT_ALPHA = 8.0  # peft's LoraConfig.lora_alpha and LoHaConfig.alpha default
A_INITS = ("kaiming_uniform", "gaussian", "orthogonal")

_LORA = frozenset({"lora_A", "lora_B"})
_DORA = _LORA | {"lora_magnitude_vector"}
_ADALORA = _LORA | {"lora_E"}
_LOHA = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"})
_BONE = frozenset({"miss_block"})


# ----------------------------------------------------------------------------------------------------------------
# selection and validation


def select_kernels(params: PyTree, include: str, exclude: str | None = None) -> dict[str, jax.Array]:
  """``{path: kernel}`` for every 2-D leaf whose ``/``-joined path matches the regex ``include`` (searched) and
  not ``exclude``.

  Raises:
    ValueError: ``include`` selects no 2-D leaf (the message lists the 2-D paths there are).
  """
  if not isinstance(include, str):
    raise TypeError(f"include must be a regex string, got {include!r}.")
  inc, exc = re.compile(include), re.compile(exclude) if exclude is not None else None
  flat = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  two_d = {k: v for k, v in flat.items() if jnp.ndim(v) == 2}
  chosen = {k: v for k, v in two_d.items() if inc.search(k) and not (exc is not None and exc.search(k))}
  if not chosen:
    raise ValueError(f"include={include!r} (exclude={exclude!r}) matches no 2-D kernel; the 2-D leaves are "
                     f"{sorted(two_d)}.")
  return chosen


def _check_rank(r: int, path: str, shape: tuple[int, ...]) -> int:
  if not isinstance(r, int) or isinstance(r, bool) or r < 1:
    raise ValueError(f"r must be a positive int, got {r!r}.")
  if r > min(shape):
    raise ValueError(f"r={r} exceeds min(in, out)={min(shape)} of the kernel {path!r} with shape {tuple(shape)}.")
  return r


def adapter_kind(adapter: Mapping[str, jax.Array]) -> str:
  """``"lora"``, ``"dora"``, ``"adalora"``, ``"loha"``, ``"bone"`` or ``"bat"``, read from the adapter's peft
  names."""
  names = frozenset(adapter)
  if names == _LORA:
    return "lora"
  if names == _DORA:
    return "dora"
  if names == _ADALORA:
    return "adalora"
  if names == _LOHA:
    return "loha"
  if names == _BONE:
    return "bat" if jnp.ndim(adapter["miss_block"]) == 3 else "bone"
  raise ValueError(f"adapter names {sorted(names)} are none of LoRA {sorted(_LORA)}, DoRA {sorted(_DORA)}, "
                   f"AdaLoRA {sorted(_ADALORA)}, "
                   f"LoHa {sorted(_LOHA)} or Bone {sorted(_BONE)}.")


def _kaiming_uniform(key: jax.Array, shape: tuple[int, int], dtype) -> jax.Array:
  """torch's ``kaiming_uniform_(w, a=sqrt(5))`` on a ``(rows, fan_in)`` weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _init_a(key: jax.Array, shape: tuple[int, int], a_init: str, dtype) -> jax.Array:
  _checks.check_choice("a_init", a_init, A_INITS)
  if a_init == "kaiming_uniform":
    return _kaiming_uniform(key, shape, dtype)
  if a_init == "gaussian":  # peft init_lora_weights="gaussian": N(0, 1/r)
    return (jax.random.normal(key, shape, jnp.float32) / shape[0]).astype(dtype)
  return jax.nn.initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)  # rows orthonormal (r <= in)


# ----------------------------------------------------------------------------------------------------------------
# initialization


def lora_init(key: jax.Array, params: PyTree, *, include: str, r: int, exclude: str | None = None,
              a_init: str = "kaiming_uniform", dtype=None) -> Adapters:
  """LoRA adapters for the kernels selected by ``include`` (Hu et al., arXiv:2106.09685, Sec. 4.1).

  ``lora_A (r, in)`` is drawn as peft does (``kaiming_uniform``: torch's ``kaiming_uniform_(a=sqrt(5))``, i.e.
  U(+-1/sqrt(in)); ``gaussian``: N(0, 1/r); ``orthogonal``: orthonormal rows, the frozen random A of asymmetric
  LoRA, Zhu et al., arXiv:2402.16842) and ``lora_B (out, r)`` is zero, so the adapted model starts equal to the base.

  Args:
    key: PRNG key.
    params: parameter pytree (dict or ``nnx.State``) with Flax ``(in, out)`` kernels.
    include: regex on ``/``-joined paths selecting the kernels (must select at least one 2-D leaf).
    r: rank, ``1 <= r <= min(in, out)`` for every selected kernel.
    exclude: optional regex of paths to leave alone.
    a_init: one of :data:`A_INITS`.
    dtype: adapter dtype (default: the kernel's).

  Returns:
    ``{path: {"lora_A": (r, in), "lora_B": (out, r)}}``.
  """
  kernels = select_kernels(params, include, exclude)
  out = {}
  for i, (path, w) in enumerate(sorted(kernels.items())):
    d_in, d_out = w.shape
    _check_rank(r, path, w.shape)
    dt = dtype or w.dtype
    out[path] = {"lora_A": _init_a(jax.random.fold_in(key, i), (r, d_in), a_init, dt),
                 "lora_B": jnp.zeros((d_out, r), dt)}
  return out


def dora_init(key: jax.Array, params: PyTree, *, include: str, r: int, exclude: str | None = None,
              a_init: str = "kaiming_uniform", dtype=None) -> Adapters:
  """DoRA adapters (Liu et al., arXiv:2402.09353, eq. 5): LoRA's plus ``lora_magnitude_vector (out,)``
  initialized to the column norms ``||W[:, j]||`` (peft's per-output-row weight norm), so ``W' = W`` at init."""
  adapters = lora_init(key, params, include=include, r=r, exclude=exclude, a_init=a_init, dtype=dtype)
  kernels = select_kernels(params, include, exclude)
  for path, a in adapters.items():
    w = kernels[path].astype(jnp.float32)
    a["lora_magnitude_vector"] = jnp.linalg.norm(w, axis=0).astype(a["lora_A"].dtype)
  return adapters


def loha_init(key: jax.Array, params: PyTree, *, include: str, r: int, exclude: str | None = None,
              dtype=None) -> Adapters:
  """LoHa / FedPara factors (Hyeon-Woo et al., arXiv:2108.06098, eq. 2), initialized as peft's LoHa: ``hada_w1_a
  (out, r)``, ``hada_w1_b (r, in)``, ``hada_w2_a (out, r)`` kaiming-uniform (a=sqrt(5)) and ``hada_w2_b (r, in)``
  zero, so the Hadamard product starts at zero."""
  kernels = select_kernels(params, include, exclude)
  out = {}
  for i, (path, w) in enumerate(sorted(kernels.items())):
    d_in, d_out = w.shape
    _check_rank(r, path, w.shape)
    dt = dtype or w.dtype
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, i), 3)
    out[path] = {"hada_w1_a": _kaiming_uniform(k1, (d_out, r), dt), "hada_w1_b": _kaiming_uniform(k2, (r, d_in), dt),
                 "hada_w2_a": _kaiming_uniform(k3, (d_out, r), dt), "hada_w2_b": jnp.zeros((r, d_in), dt)}
  return out


def bone_init(params: PyTree, *, include: str, r: int, exclude: str | None = None, variant: str = "bone",
              dtype=None) -> Adapters:
  """Zero Bone blocks (Kang, arXiv:2409.15371): ``variant="bone"`` gives ``miss_block (r, out)`` (peft
  ``MissConfig(init_weights=True)``; requires ``in % r == 0``), ``variant="bat"`` the block-affine ``miss_block
  (out/r, r, r)`` (``init_weights="bat"``; requires ``in % r == out % r == 0``). Zero blocks leave ``W`` unchanged."""
  _checks.check_choice("variant", variant, ("bone", "bat"))
  kernels = select_kernels(params, include, exclude)
  out = {}
  for path, w in sorted(kernels.items()):
    d_in, d_out = w.shape
    _check_rank(r, path, w.shape)
    if d_in % r or (variant == "bat" and d_out % r):
      raise ValueError(f"r={r} must divide in={d_in}" + (f" and out={d_out}" if variant == "bat" else "")
                       + f" of the kernel {path!r} for Bone variant {variant!r}.")
    dt = dtype or w.dtype
    out[path] = {"miss_block": jnp.zeros((r, d_out) if variant == "bone" else (d_out // r, r, r), dt)}
  return out


# ----------------------------------------------------------------------------------------------------------------
# per-kernel transforms (Flax (in, out) layout for W; peft layout for the adapter arrays)


def lora_delta(lora_A: jax.Array, lora_B: jax.Array, alpha: float = DEFAULT_ALPHA) -> jax.Array:
  """LoRA's update in Flax layout, ``(alpha / r) A^T B^T`` of shape ``(in, out)`` (eq. 3 of arXiv:2106.09685,
  ``h = W0 x + (alpha / r) B A x``), float32."""
  r = lora_A.shape[0]
  return (alpha / r) * (lora_A.astype(jnp.float32).T @ lora_B.astype(jnp.float32).T)


def dora_kernel(w: jax.Array, lora_A: jax.Array, lora_B: jax.Array, magnitude: jax.Array,
                alpha: float = DEFAULT_ALPHA) -> jax.Array:
  """DoRA (arXiv:2402.09353, eq. 5): ``W' = m * V / ||V||_c`` with ``V = W + lora_delta`` and ``||.||_c`` the
  norm of each output column (peft's ``||W + sBA||`` over ``dim=1`` of the torch weight). As in the paper (Sec. 4.3)
  and peft, the norm is treated as a constant in the backward pass (``stop_gradient``)."""
  v = w.astype(jnp.float32) + lora_delta(lora_A, lora_B, alpha)
  norm = jax.lax.stop_gradient(jnp.linalg.norm(v, axis=0))
  return v * (magnitude.astype(jnp.float32) / norm)[None, :]


def hadamard_lowrank(x1: jax.Array, y1: jax.Array, x2: jax.Array, y2: jax.Array) -> jax.Array:
  """FedPara's low-rank Hadamard weight (arXiv:2108.06098, eq. 2): ``(X1 Y1^T) * (X2 Y2^T)`` with ``X_i (m, r_i)``
  and ``Y_i (n, r_i)``; its rank is at most ``r1 r2`` (Prop. 1) with ``(r1 + r2)(m + n)`` parameters."""
  return (x1 @ y1.T) * (x2 @ y2.T)


def loha_delta(hada_w1_a: jax.Array, hada_w1_b: jax.Array, hada_w2_a: jax.Array, hada_w2_b: jax.Array,
               alpha: float = DEFAULT_ALPHA) -> jax.Array:
  """peft's LoHa update ``(alpha / r) (w1a w1b) * (w2a w2b)`` (torch ``(out, in)``), returned in Flax layout."""
  r = hada_w1_b.shape[0]
  f = lambda a: a.astype(jnp.float32)
  return ((alpha / r) * hadamard_lowrank(f(hada_w1_a), f(hada_w1_b).T, f(hada_w2_a), f(hada_w2_b).T)).T


def pfedpara(w1: jax.Array, w2: jax.Array) -> jax.Array:
  """pFedPara's personalized weight ``W1 * (W2 + 1)`` (arXiv:2108.06098, Sec. 3.2): ``W1`` global, ``W2`` local."""
  return w1 * (w2 + 1.0)


def bone_kernel(w: jax.Array, miss_block: jax.Array) -> jax.Array:
  """Bone (arXiv:2409.15371) in Flax layout, float32.

  ``miss_block (r, out)`` (Bone): ``W' = W + b`` added to every ``r``-row block of ``W (in, out)`` (peft
  ``MiSS``: ``W_blocks + b``). ``miss_block (out/r, r, r)`` (Bat, block affine): each ``r x r`` block ``W_ij`` of
  the torch weight becomes ``W_ij + W_ij b_i + b_i`` (peft ``MissLinear.get_delta_weight``).
  """
  w32, b = w.astype(jnp.float32), miss_block.astype(jnp.float32)
  d_in, d_out = w.shape
  if b.ndim == 2:
    r = b.shape[0]
    return (w32.reshape(d_in // r, r, d_out) + b[None]).reshape(d_in, d_out)
  r = b.shape[-1]
  # torch block [p, a | q, c] is kernel[q r + c, p r + a];
  # delta_torch[p, a, q, d] = sum_c W[p, a, q, c] b[p, c, d] + b[p, a, d]
  blocks = w32.reshape(d_in // r, r, d_out // r, r)  # [q, c, p, a]
  delta = jnp.einsum("qcpa,pcd->qdpa", blocks, b) + jnp.transpose(b, (2, 0, 1))[None]
  return w32 + delta.reshape(d_in, d_out)


def adalora_delta(lora_A: jax.Array, lora_B: jax.Array, lora_E: jax.Array, alpha: float) -> jax.Array:
  """AdaLoRA's update in Flax layout: ``(B (A * E))^T * alpha / (r + 1e-5)`` (peft's ``get_delta_weight``), float32."""
  r = lora_A.shape[0]
  f = lambda a: a.astype(jnp.float32)
  return (f(lora_B) @ (f(lora_A) * f(lora_E))).T * (alpha / (r + 1e-5))


def adapted_kernel(w: jax.Array, adapter: Mapping[str, jax.Array], alpha: float = DEFAULT_ALPHA) -> jax.Array:
  """The kernel ``w (in, out)`` with one adapter applied (any kind, see the module table), in ``w``'s dtype."""
  kind = adapter_kind(adapter)
  a = adapter
  if kind == "lora":
    new = w.astype(jnp.float32) + lora_delta(a["lora_A"], a["lora_B"], alpha)
  elif kind == "dora":
    new = dora_kernel(w, a["lora_A"], a["lora_B"], a["lora_magnitude_vector"], alpha)
  elif kind == "adalora":
    new = w.astype(jnp.float32) + adalora_delta(a["lora_A"], a["lora_B"], a["lora_E"], alpha)
  elif kind == "loha":
    new = w.astype(jnp.float32) + loha_delta(a["hada_w1_a"], a["hada_w1_b"], a["hada_w2_a"], a["hada_w2_b"], alpha)
  else:
    new = bone_kernel(w, a["miss_block"])
  return new.astype(w.dtype)


def _check_shapes(path: str, w: jax.Array, adapter: Mapping[str, jax.Array]) -> None:
  d_in, d_out = w.shape
  kind = adapter_kind(adapter)
  if kind in ("lora", "dora", "adalora"):
    r = adapter["lora_A"].shape[0]
    want = {"lora_A": (r, d_in), "lora_B": (d_out, r), "lora_magnitude_vector": (d_out,), "lora_E": (r, 1)}
  elif kind == "loha":
    r = adapter["hada_w1_b"].shape[0]
    want = {"hada_w1_a": (d_out, r), "hada_w1_b": (r, d_in), "hada_w2_a": (d_out, r), "hada_w2_b": (r, d_in)}
  elif kind == "bone":
    r = adapter["miss_block"].shape[0]
    want = {"miss_block": (r, d_out)} if d_in % r == 0 else {}
  else:
    r = adapter["miss_block"].shape[-1]
    want = {"miss_block": (d_out // r, r, r)} if d_in % r == 0 and d_out % r == 0 else {}
  if not want:
    raise ValueError(f"adapter {kind!r} at {path!r}: block size r={r} does not divide the kernel shape {w.shape}.")
  for name, arr in adapter.items():
    if tuple(arr.shape) != want[name]:
      raise ValueError(f"adapter {kind!r} at {path!r}: {name} has shape {tuple(arr.shape)}, expected {want[name]} "
                       f"for a kernel of shape {tuple(w.shape)}.")


# ----------------------------------------------------------------------------------------------------------------
# whole pytrees


def apply_adapters(params: PyTree, adapters: Adapters, *, alpha: float = DEFAULT_ALPHA) -> PyTree:
  """``params`` with every kernel named in ``adapters`` replaced by its adapted kernel (merge; jittable).

  Args:
    params: parameter pytree (dict or ``nnx.State``) with Flax ``(in, out)`` kernels.
    adapters: ``{kernel path: adapter}`` (from :func:`lora_init` and friends, or :func:`paperlab.peft.load_adapters`).
    alpha: the LoRA / LoHa scale numerator (``scale = alpha / r``, peft's ``lora_alpha`` / ``alpha``; default 8).

  Raises:
    ValueError: an adapter path that is not a 2-D leaf of ``params``, or adapter shapes that do not fit it.
  """
  _checks.check_non_negative("alpha", alpha)
  paths = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, adapter in adapters.items():
    if path not in paths or jnp.ndim(paths[path]) != 2:
      raise ValueError(f"adapters name the kernel {path!r}, which is not a 2-D leaf of params; 2-D leaves are "
                       f"{sorted(k for k, v in paths.items() if jnp.ndim(v) == 2)}.")
    _check_shapes(path, paths[path], adapter)

  def leaf(p, x):
    a = adapters.get(path_str(p))
    return x if a is None else adapted_kernel(x, a, alpha)

  return jax.tree_util.tree_map_with_path(leaf, params)


merge_adapters = apply_adapters


def unmerge_adapters(merged: PyTree, adapters: Adapters, *, alpha: float = DEFAULT_ALPHA) -> PyTree:
  """Inverse of :func:`apply_adapters`: subtract LoRA / LoHa / Bone updates; undo Bat with ``(W' - b)(I + b)^-1``
  per block (peft's unmerge).

  Raises:
    ValueError: a DoRA adapter -- ``m V / ||V||`` forgets ``||V||`` per column, so ``W`` cannot be recovered from the
      merged kernel (peft keeps a cache from merge time); keep the base weights instead.
  """
  for path, adapter in adapters.items():
    if adapter_kind(adapter) == "dora":
      raise ValueError(f"unmerge_adapters: the DoRA adapter at {path!r} cannot be unmerged (the column norms of "
                       "W + sBA are lost by the merge); keep the base params.")

  def leaf(p, x):
    a = adapters.get(path_str(p))
    if a is None:
      return x
    kind, x32 = adapter_kind(a), x.astype(jnp.float32)
    if kind == "lora":
      new = x32 - lora_delta(a["lora_A"], a["lora_B"], alpha)
    elif kind == "adalora":
      new = x32 - adalora_delta(a["lora_A"], a["lora_B"], a["lora_E"], alpha)
    elif kind == "loha":
      new = x32 - loha_delta(a["hada_w1_a"], a["hada_w1_b"], a["hada_w2_a"], a["hada_w2_b"], alpha)
    elif kind == "bone":
      new = 2.0 * x32 - bone_kernel(x, a["miss_block"])
    else:  # Bat: W'_blk = W_blk (I + b) + b  =>  W_blk = (W'_blk - b)(I + b)^-1, in the torch block layout
      b = a["miss_block"].astype(jnp.float32)
      r = b.shape[-1]
      d_in, d_out = x.shape
      blocks = jnp.transpose(x32.reshape(d_in // r, r, d_out // r, r), (2, 3, 0, 1))  # [p, a, q, c]
      inv = jnp.linalg.inv(jnp.eye(r, dtype=jnp.float32) + b)  # [p, c, d]
      orig = jnp.einsum("paqc,pcd->paqd", blocks - b[:, :, None, :], inv)
      new = jnp.transpose(orig, (2, 3, 0, 1)).reshape(d_in, d_out)
    return new.astype(x.dtype)

  return jax.tree_util.tree_map_with_path(leaf, merged)


def count_params(tree: PyTree) -> int:
  """Number of scalars in a pytree (e.g. trainable adapter parameters vs the base model's)."""
  return int(sum(jnp.size(x) for x in jax.tree.leaves(tree)))
