"""Hydra: a parallel and a sequential low-rank branch on one dense layer.

Kim et al., "Hydra: Multi-head Low-rank Adaptation for Parameter Efficient Fine-tuning", arXiv:2309.06922 (eq. 4-6).
A parallel branch (LoRA) reads the layer's input and a sequential branch reads the layer's *output*:

    h = W0 x + b + s_p B_p A_p x + s_s B_s A_s (W0 x + b),

as in the official code (extremebird/Hydra, ``nlu/src/transformers/models/adapter.py`` ``Hydra`` and
``modeling_roberta.py`` ``RobertaOutput.forward``, commit 4138457: ``dense(x) + hydra_par(x) + hydra_seq(dense(x))``).
Both branches are linear, so they merge into the layer (Flax ``(in, out)`` kernel ``W``, bias ``b``):

    W' = W + s_p A_p^T B_p^T + s_s W A_s^T B_s^T,      b' = b + s_s b A_s^T B_s^T,

and unmerge with ``(I + s_s A_s^T B_s^T)^{-1}`` (invertible for small updates). Defaults from the official scripts:
``hydra_par_r = 4``, ``hydra_seq_r = 8``, no scale (``s_p = s_s = 1``); ``A`` kaiming-uniform (``a = sqrt(5)``),
``B`` zero, so the adapted model starts equal to the base.

An adapter set is ``{kernel path: {"hydra_par_A": (r_p, in), "hydra_par_B": (out, r_p), "hydra_seq_A": (r_s, out),
"hydra_seq_B": (out, r_s)}}`` (torch layouts, as ``lora_A`` / ``lora_B``). The bias, when the layer has one, is the
kernel's sibling leaf ``.../bias``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.peft._select import check_paths, check_rank, map_paths, select_leaves, sibling

PyTree = Any
HydraAdapters = dict[str, dict[str, jax.Array]]

__all__ = ["HYDRA_PAR_R", "HYDRA_SEQ_R", "hydra_init", "hydra_linear", "hydra_layer", "apply_hydra", "unmerge_hydra"]

HYDRA_PAR_R = 4  # nlu/hydra_*.sh: --hydra_par_r 4
HYDRA_SEQ_R = 8  # nlu/hydra_*.sh: --hydra_seq_r 8
_NAMES = ("hydra_par_A", "hydra_par_B", "hydra_seq_A", "hydra_seq_B")


def _kaiming_uniform(key: jax.Array, shape: tuple[int, int], dtype) -> jax.Array:
  bound = 1.0 / math.sqrt(shape[1])  # torch kaiming_uniform_(a=sqrt(5)) on a (rows, fan_in) weight
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def hydra_init(key: jax.Array, params: PyTree, *, include: str, r_par: int = HYDRA_PAR_R, r_seq: int = HYDRA_SEQ_R,
               exclude: str | None = None, dtype=None) -> HydraAdapters:
  """Hydra adapters (arXiv:2309.06922) for the 2-D kernels selected by ``include``.

  Args:
    key: PRNG key.
    params: parameter pytree (dict or ``nnx.State``) with Flax ``(in, out)`` kernels.
    include: regex on ``/``-joined paths (must select at least one 2-D leaf).
    r_par: rank of the parallel branch, ``1 <= r_par <= min(in, out)`` (official default 4).
    r_seq: rank of the sequential branch, ``1 <= r_seq <= out`` (official default 8).
    exclude: optional regex of paths to leave alone.
    dtype: adapter dtype (default: the kernel's).
  """
  kernels = select_leaves(params, include, exclude, (2,))
  out = {}
  for i, (path, w) in enumerate(sorted(kernels.items())):
    d_in, d_out = w.shape
    check_rank("r_par", r_par, min(d_in, d_out), path, w.shape)
    check_rank("r_seq", r_seq, d_out, path, w.shape)
    dt = dtype or w.dtype
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    out[path] = {"hydra_par_A": _kaiming_uniform(k1, (r_par, d_in), dt), "hydra_par_B": jnp.zeros((d_out, r_par), dt),
                 "hydra_seq_A": _kaiming_uniform(k2, (r_seq, d_out), dt), "hydra_seq_B": jnp.zeros((d_out, r_seq), dt)}
  return out


def _check(path: str, w: jax.Array, adapter: Mapping[str, jax.Array]) -> None:
  if set(adapter) != set(_NAMES):
    raise ValueError(f"Hydra adapter at {path!r}: names {sorted(adapter)}, expected {sorted(_NAMES)}.")
  d_in, d_out = w.shape
  rp, rs = adapter["hydra_par_A"].shape[0], adapter["hydra_seq_A"].shape[0]
  want = {"hydra_par_A": (rp, d_in), "hydra_par_B": (d_out, rp), "hydra_seq_A": (rs, d_out),
          "hydra_seq_B": (d_out, rs)}
  for name, shape in want.items():
    if tuple(adapter[name].shape) != shape:
      raise ValueError(f"Hydra adapter at {path!r}: {name} has shape {tuple(adapter[name].shape)}, expected {shape} "
                       f"for a kernel of shape {tuple(w.shape)}.")


def _f(x):
  return x.astype(jnp.float32)


def _seq_map(adapter: Mapping[str, jax.Array], s_seq: float) -> jax.Array:
  """``I + s_s A_s^T B_s^T`` (out, out): what the sequential branch does to the layer's output."""
  a, b = _f(adapter["hydra_seq_A"]), _f(adapter["hydra_seq_B"])
  return jnp.eye(b.shape[0], dtype=jnp.float32) + s_seq * (a.T @ b.T)


def hydra_linear(x: jax.Array, w: jax.Array, b: jax.Array | None, adapter: Mapping[str, jax.Array], *,
                 s_par: float = 1.0, s_seq: float = 1.0) -> jax.Array:
  """Unmerged Hydra forward of a dense layer, ``y + s_p (x A_p^T) B_p^T + s_s (y A_s^T) B_s^T`` with
  ``y = x W + b`` (the official ``dense(x) + hydra_par(x) + hydra_seq(dense(x))``), float32."""
  _check("w", w, adapter)
  x32 = _f(x)
  y = x32 @ _f(w) + (0.0 if b is None else _f(b))
  par = (x32 @ _f(adapter["hydra_par_A"]).T) @ _f(adapter["hydra_par_B"]).T
  seq = (y @ _f(adapter["hydra_seq_A"]).T) @ _f(adapter["hydra_seq_B"]).T
  return y + s_par * par + s_seq * seq


def hydra_layer(w: jax.Array, b: jax.Array | None, adapter: Mapping[str, jax.Array], *, s_par: float = 1.0,
                s_seq: float = 1.0) -> tuple[jax.Array, jax.Array | None]:
  """The merged ``(W', b')`` of one dense layer (module docstring), in the input dtypes."""
  _check("w", w, adapter)
  m = _seq_map(adapter, s_seq)
  par = s_par * (_f(adapter["hydra_par_A"]).T @ _f(adapter["hydra_par_B"]).T)
  w_new = (_f(w) @ m + par).astype(w.dtype)
  return w_new, None if b is None else (_f(b) @ m).astype(b.dtype)


def apply_hydra(params: PyTree, adapters: HydraAdapters, *, s_par: float = 1.0, s_seq: float = 1.0) -> PyTree:
  """``params`` with each adapted layer's kernel (and sibling ``bias``, if any) merged (jittable).

  Raises:
    ValueError: an adapter path that is not a 2-D leaf of ``params``, or adapter shapes that do not fit it.
  """
  _checks.check_finite("s_par", s_par)
  _checks.check_finite("s_seq", s_seq)
  flat = check_paths(params, adapters, (2,), "adapters")
  for path, a in adapters.items():
    _check(path, flat[path], a)
  biases = {sibling(p, "bias"): p for p in adapters if sibling(p, "bias") in flat}

  def leaf(path, x):
    if path in adapters:
      return hydra_layer(x, None, adapters[path], s_par=s_par, s_seq=s_seq)[0]
    if path in biases:
      return (_f(x) @ _seq_map(adapters[biases[path]], s_seq)).astype(x.dtype)
    return x

  return map_paths(params, leaf)


def unmerge_hydra(merged: PyTree, adapters: HydraAdapters, *, s_par: float = 1.0, s_seq: float = 1.0) -> PyTree:
  """Inverse of :func:`apply_hydra`: ``W = (W' - s_p A_p^T B_p^T) M^{-1}``, ``b = b' M^{-1}`` with
  ``M = I + s_s A_s^T B_s^T`` (a linear solve; ``M`` is singular only if ``-1/s_s`` is an eigenvalue of the
  sequential update)."""
  flat = check_paths(merged, adapters, (2,), "adapters")
  for path, a in adapters.items():
    _check(path, flat[path], a)
  biases = {sibling(p, "bias"): p for p in adapters if sibling(p, "bias") in flat}

  def undo(x, a, par):
    m = _seq_map(a, s_seq)
    return jnp.linalg.solve(m.T, (_f(x) - par).T).T.astype(x.dtype)

  def leaf(path, x):
    if path in adapters:
      a = adapters[path]
      return undo(x, a, s_par * (_f(a["hydra_par_A"]).T @ _f(a["hydra_par_B"]).T))
    if path in biases:
      return undo(x[None], adapters[biases[path]], 0.0)[0]
    return x

  return map_paths(merged, leaf)
