"""FLoRA: a Tucker-form low-rank update for kernels of any rank (linear, convolution, ...).

Si et al., "FLoRA: Low-Rank Core Space for N-dimension", arXiv:2405.14739 (eq. 5-6). (This is the N-dimensional
FLoRA, not "FLoRA: Federated Fine-Tuning ..." of federated LoRA; the issue asks for low-rank adapters on N-d weights.)
For a frozen kernel ``W`` with ``N`` axes of sizes ``d_0 .. d_{N-1}`` the update is a Tucker product of a small core
``G (r_0, ..., r_{N-1})`` with one factor ``A_i (d_i, r_i)`` per axis,

    Delta W = s * G x_0 A_0 x_1 A_1 ... x_{N-1} A_{N-1},   W' = W + Delta W,

so a convolution kernel keeps its spatial structure instead of being flattened into a matrix (LoRA is the ``N = 2``
case with a dense ``r_0 x r_1`` core). As in the official code (SJTU-DeepVisionLab/FLoRA, ``flora/layers.py``,
commit d424560), the core starts at zero and every factor ``kaiming_normal_(a=sqrt(3))`` (N(0, 1/(2 r_i))), so the
adapted model starts equal to the base; ``s`` is ``FLoRALayer``'s ``scale`` (default 1.0; the repository's example
uses 4.0 for a ConvNeXt).

An adapter set is ``{kernel path: {"flora_core": G, "flora_factor_0": A_0, ...}}`` with factor ``i`` on axis ``i``
of the *Flax* kernel (``(in, out)`` for ``nnx.Linear``, ``(kh, kw, in, out)`` for ``nnx.Conv``). Everything is
jittable; ranks are static (array shapes).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.peft._select import check_paths, check_rank, map_paths, select_leaves

PyTree = Any
FLoRAAdapters = dict[str, dict[str, jax.Array]]

__all__ = ["FLORA_SCALE", "flora_init", "flora_delta", "flora_kernel", "flora_linear", "apply_flora",
           "unmerge_flora"]

FLORA_SCALE = 1.0  # FLoRALayer(scale=1.0) in the official code
_NDIMS = (2, 3, 4, 5)


def _factor_names(n: int) -> list[str]:
  return [f"flora_factor_{i}" for i in range(n)]


def _ranks(r: int | Sequence[int], path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  ranks = (r,) * len(shape) if isinstance(r, int) and not isinstance(r, bool) else tuple(r)
  if len(ranks) != len(shape):
    raise ValueError(f"r={r!r} must be an int or one rank per axis of the kernel {path!r} with shape {shape}.")
  return tuple(check_rank(f"r[{i}]", ri, d, path, shape) for i, (ri, d) in enumerate(zip(ranks, shape)))


def flora_init(key: jax.Array, params: PyTree, *, include: str, r: int | Sequence[int],
               exclude: str | None = None, dtype=None) -> FLoRAAdapters:
  """FLoRA adapters (arXiv:2405.14739) for the 2-D to 5-D kernels selected by ``include``.

  Args:
    key: PRNG key.
    params: parameter pytree (dict or ``nnx.State``).
    include: regex on ``/``-joined paths selecting the kernels (must select at least one 2-5-D leaf).
    r: one rank for every axis or a rank per axis, each ``1 <= r_i <= d_i``.
    exclude: optional regex of paths to leave alone.
    dtype: adapter dtype (default: the kernel's).

  Returns:
    ``{path: {"flora_core": zeros(r_0, ..), "flora_factor_i": (d_i, r_i) ~ N(0, 1 / (2 r_i))}}``: the official
    ``init_parameters`` (``kaiming_normal_(a=sqrt(3))`` factors, zero core).
  """
  kernels = select_leaves(params, include, exclude, _NDIMS)
  out = {}
  for i, (path, w) in enumerate(sorted(kernels.items())):
    ranks = _ranks(r, path, tuple(w.shape))
    dt = dtype or w.dtype
    keys = jax.random.split(jax.random.fold_in(key, i), len(ranks))
    adapter = {"flora_core": jnp.zeros(ranks, dt)}
    for j, (k, d, rj) in enumerate(zip(keys, w.shape, ranks)):
      std = math.sqrt(2.0 / (1.0 + 3.0)) / math.sqrt(rj)  # kaiming_normal_, a=sqrt(3), fan_in = r_j
      adapter[f"flora_factor_{j}"] = (std * jax.random.normal(k, (d, rj), jnp.float32)).astype(dt)
    out[path] = adapter
  return out


def flora_delta(core: jax.Array, factors: Sequence[jax.Array], scale: float = FLORA_SCALE) -> jax.Array:
  """``s * G x_0 A_0 ... x_{N-1} A_{N-1}`` (eq. 5 of arXiv:2405.14739), float32, shape ``(d_0, ..., d_{N-1})``.

  Raises:
    ValueError: the number of factors differs from ``core.ndim`` or a factor's rank from the core's axis.
  """
  if len(factors) != core.ndim:
    raise ValueError(f"factors: expected {core.ndim} factors for a core of shape {core.shape}, got {len(factors)}.")
  for i, f in enumerate(factors):
    if f.ndim != 2 or f.shape[1] != core.shape[i]:
      raise ValueError(f"factors[{i}] has shape {f.shape}, expected (d_{i}, {core.shape[i]}) for a core of shape "
                       f"{core.shape}.")
  out = core.astype(jnp.float32)
  for f in factors:  # contracting the leading core axis each time leaves the axes in order d_0 .. d_{N-1}
    out = jnp.tensordot(out, f.astype(jnp.float32), axes=[[0], [1]])
  return scale * out


def _factors(adapter: Mapping[str, jax.Array]) -> list[jax.Array]:
  n = jnp.ndim(adapter["flora_core"])
  names = set(adapter) - {"flora_core"}
  if names != set(_factor_names(n)):
    raise ValueError(f"a FLoRA adapter with a {n}-D core needs {['flora_core'] + _factor_names(n)}, got "
                     f"{sorted(adapter)}.")
  return [adapter[k] for k in _factor_names(n)]


def flora_kernel(w: jax.Array, adapter: Mapping[str, jax.Array], scale: float = FLORA_SCALE) -> jax.Array:
  """``W + flora_delta`` in ``w``'s dtype (the merged kernel).

  Raises:
    ValueError: adapter names or shapes that do not fit ``w``.
  """
  delta = flora_delta(adapter["flora_core"], _factors(adapter), scale)
  if delta.shape != tuple(w.shape):
    raise ValueError(f"FLoRA adapter gives an update of shape {delta.shape} for a kernel of shape {tuple(w.shape)}.")
  return (w.astype(jnp.float32) + delta).astype(w.dtype)


def flora_linear(x: jax.Array, w: jax.Array, adapter: Mapping[str, jax.Array], scale: float = FLORA_SCALE
                 ) -> jax.Array:
  """Unmerged FLoRA forward of a dense layer, ``x W + s ((x A_0) G) A_1^T`` (never forms the ``(in, out)`` update),
  float32, for a 2-D Flax kernel ``w (in, out)``."""
  if jnp.ndim(w) != 2:
    raise ValueError(f"flora_linear needs a 2-D kernel, got shape {jnp.shape(w)}.")
  a0, a1 = (f.astype(jnp.float32) for f in _factors(adapter))
  g = adapter["flora_core"].astype(jnp.float32)
  x32 = x.astype(jnp.float32)
  return x32 @ w.astype(jnp.float32) + scale * (((x32 @ a0) @ g) @ a1.T)


def apply_flora(params: PyTree, adapters: FLoRAAdapters, *, scale: float = FLORA_SCALE) -> PyTree:
  """``params`` with every kernel named in ``adapters`` replaced by ``W + Delta W`` (merge; jittable).

  Raises:
    ValueError: an adapter path that is not a 2-5-D leaf of ``params``, or shapes that do not fit it.
  """
  _checks.check_finite("scale", scale)
  check_paths(params, adapters, _NDIMS, "adapters")
  return map_paths(params, lambda p, x: flora_kernel(x, adapters[p], scale) if p in adapters else x)


def unmerge_flora(merged: PyTree, adapters: FLoRAAdapters, *, scale: float = FLORA_SCALE) -> PyTree:
  """Inverse of :func:`apply_flora`: ``W = W' - Delta W``."""
  _checks.check_finite("scale", scale)
  check_paths(merged, adapters, _NDIMS, "adapters")
  return map_paths(merged, lambda p, x: flora_kernel(x, adapters[p], -scale) if p in adapters else x)
