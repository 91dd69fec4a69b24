"""Robust weight signatures: layer-restricted, quantized weight deltas used as removable patches (Cai, Zhang and
Wang, "Robust Weight Signatures: Gaining Robustness as Easy as Patching Weights?", arXiv:2302.12480, ICML 2023).

A clean model ``theta_c`` and a robust model ``theta_r`` of the same architecture (e.g. ``theta_r`` fine-tuned from
``theta_c`` on corrupted inputs) differ mostly in their shallow layers. The signature is that difference restricted
to the shallow layers (:func:`weight_signature`), optionally stored at low precision (:func:`quantize_delta` /
:func:`dequantize_delta`); patching is ``theta_c + alpha * RWS`` and removing it is ``- alpha * RWS``, which are
:func:`paperlab.merge.apply_task_vector` with ``scale = +-alpha``. :func:`delta_energy_share` measures how much of
``||theta_r - theta_c||^2`` a set of layers holds next to its share of the parameters (the paper's layer-wise
observation). Layers are chosen with the same ``include``/``exclude`` regexes on ``/``-joined key paths as every
other merge, e.g. ``include=r"^hidden/0/"`` for the first Dense layer of :class:`paperlab.models.MLP`.

The paper also projects the difference before analysing it ("projection details" are not needed for patching and
are not implemented here). Everything is jittable (path filters and ``bits`` are static).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from paperlab._tree import check_same_structure, path_mask
from paperlab.merge.averaging import (IntegerLeaves, _compute_dtype, _integer_leaves, _is_float, _put_integer_leaves,
                                     _scalars_as_arrays)

PyTree = Any

__all__ = ["weight_signature", "QuantizedDelta", "quantize_delta", "dequantize_delta", "delta_energy_share"]


def _check_filter(name: str, value) -> None:
  if value is not None and not isinstance(value, str):
    raise TypeError(f"{name} must be a regex string or None, got {type(value).__name__} {value!r}.")


def weight_signature(clean: PyTree, robust: PyTree, *, include: str | None = None,
                     exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Robust weight signature ``RWS = M (theta_r - theta_c)`` (Cai et al., arXiv:2302.12480, Sec. 3, eq. 1):
  the weight difference on the selected (shallow) layers, zero elsewhere.

  Args:
    clean: the clean model's parameters ``theta_c``.
    robust: the robust model's parameters ``theta_r`` (same structure and shapes).
    include, exclude: regexes on ``/``-joined leaf paths choosing the layers ``M`` keeps (the paper keeps the
      shallowest few layers); default keeps every leaf, i.e. the full task vector.
    integer_leaves: integer/bool leaves are not differenced: equal in both models -> the shared value (as
      :func:`paperlab.merge.task_vector` does, so patching keeps it), different -> ``ValueError`` naming the path;
      or ``"first"``/``"base"`` (clean's), ``"last"`` (robust's) or a callable.

  Returns:
    A pytree like ``clean``: ``robust - clean`` on selected floating leaves, zeros on unselected floating leaves,
    and the policy's value on integer/bool leaves.
    Patch with ``apply_task_vector(clean, rws, alpha)`` and remove with ``scale=-alpha``.
  """
  _check_filter("include", include)
  _check_filter("exclude", exclude)
  clean, robust = _scalars_as_arrays(clean), _scalars_as_arrays(robust)
  check_same_structure([clean, robust], ["clean", "robust"])
  ints = _integer_leaves([clean, robust], ["clean", "robust"], integer_leaves, has_base=True)
  mask = path_mask(clean, include, exclude)
  return _put_integer_leaves(
      jax.tree.map(lambda m, c, r: (r - c) if (m and _is_float(c)) else jnp.zeros_like(c), mask, clean, robust), ints)


class QuantizedDelta(NamedTuple):
  """A delta stored as integer codes and per-leaf (or per-slice) float scales: ``delta ~= codes * scales``.

  ``codes``: int8 leaves for ``bits <= 8``, int16 up to 16 bits (non-floating leaves are kept as they are, with
  scale 1); ``scales``: float32 (float64 for float64 leaves), a scalar per leaf or broadcastable along ``axis``.
  A plain pytree of arrays (jit/vmap/safetensors friendly).
  """
  codes: PyTree
  scales: PyTree


def _check_bits(bits) -> int:
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= int(bits) <= 16:
    raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}.")
  return int(bits)


def quantize_delta(delta: PyTree, bits: int = 8, *, axis: int | None = None) -> QuantizedDelta:
  """Symmetric uniform quantization of a weight delta, the compression of robust weight signatures (Cai et al.,
  arXiv:2302.12480, Sec. 4.2 "lightweight": RWSs "can be painlessly quantized"; 8 bits by default).

  Per leaf (or per slice along ``axis``, e.g. ``-1`` = per output unit of a Flax kernel)::

      s = max |d| / (2^(bits-1) - 1),    code = round(d / s)  in [-(2^(bits-1) - 1), 2^(bits-1) - 1]

  with ``round`` half-to-even (as ``torch.quantize_per_tensor`` with zero point 0); an all-zero slice gets
  ``s = 1`` and codes 0. The round-trip error is at most ``s / 2`` per entry.

  Args:
    delta: a pytree of weight differences (e.g. from :func:`weight_signature`).
    bits: code width in [2, 16]; static under jit.
    axis: ``None`` for one scale per leaf, or the axis that keeps one scale per index (only on leaves with
      ``ndim >= 2``; vectors and scalars use one scale).

  Returns:
    :class:`QuantizedDelta`; :func:`dequantize_delta` rebuilds the (lossy) delta.
  """
  bits = _check_bits(bits)
  if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
    raise TypeError(f"axis must be an int or None, got {axis!r}.")
  qmax = 2 ** (bits - 1) - 1
  code_dtype = jnp.int8 if bits <= 8 else jnp.int16

  def leaf(d):
    if not _is_float(d):
      return d, jnp.ones((), jnp.float32)
    x = d.astype(_compute_dtype(d.dtype))
    if axis is None or x.ndim < 2:
      amax = jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)
    else:
      red = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
      amax = jnp.max(jnp.abs(x), axis=red, keepdims=True)
    scale = jnp.where(amax > 0, amax / qmax, jnp.ones((), x.dtype))
    codes = jnp.clip(jnp.round(x / scale), -qmax, qmax).astype(code_dtype)
    return codes, scale

  leaves, treedef = jax.tree.flatten(delta)
  pairs = [leaf(d) for d in leaves]
  return QuantizedDelta(jax.tree.unflatten(treedef, [c for c, _ in pairs]),
                        jax.tree.unflatten(treedef, [s for _, s in pairs]))


def dequantize_delta(q: QuantizedDelta, like: PyTree | None = None) -> PyTree:
  """``codes * scales`` (inverse of :func:`quantize_delta` up to rounding; Cai et al., arXiv:2302.12480, Sec. 4.2).

  Leaves come back in the scale's dtype (float32, or float64), or in the dtype of the matching leaf of ``like``
  (e.g. the original delta or the clean model) when given; non-floating leaves of ``like`` get the stored leaf.
  """
  if not isinstance(q, QuantizedDelta):
    raise TypeError(f"q must be a QuantizedDelta from quantize_delta, got {type(q).__name__}.")
  codes, treedef = jax.tree.flatten(q.codes)
  scales = treedef.flatten_up_to(q.scales)
  if like is None:
    return jax.tree.unflatten(treedef, [c.astype(s.dtype) * s for c, s in zip(codes, scales)])
  check_same_structure([q.codes, like], ["q.codes", "like"])
  out = []
  for c, s, ref in zip(codes, scales, treedef.flatten_up_to(like)):
    out.append((c.astype(s.dtype) * s).astype(ref.dtype) if _is_float(ref) else c)
  return jax.tree.unflatten(treedef, out)


def delta_energy_share(delta: PyTree, *, include: str | None = None, exclude: str | None = None
                       ) -> tuple[jax.Array, jax.Array]:
  """``(energy_share, param_share)`` of the selected leaves: ``sum_sel ||d||^2 / sum_all ||d||^2`` and
  ``n_sel / n_all`` over floating leaves (the layer-wise concentration of ``theta_r - theta_c`` that motivates
  shallow-layer signatures, Cai et al., arXiv:2302.12480, Sec. 3, Fig. 2).

  ``energy_share > param_share`` means the selected layers change more per parameter than the rest. A zero
  delta gives ``energy_share = 0``. Jittable; float32 (or wider) scalars.
  """
  _check_filter("include", include)
  _check_filter("exclude", exclude)
  mask = jax.tree.leaves(path_mask(delta, include, exclude))
  leaves = jax.tree.leaves(delta)
  sel_e, all_e, sel_n, all_n = jnp.zeros(()), jnp.zeros(()), 0, 0
  for m, d in zip(mask, leaves):
    if not _is_float(d):
      continue
    e = jnp.sum(jnp.square(d.astype(_compute_dtype(d.dtype))))
    all_e, all_n = all_e + e, all_n + d.size
    if m:
      sel_e, sel_n = sel_e + e, sel_n + d.size
  if all_n == 0:
    raise ValueError("delta has no floating leaves.")
  energy = sel_e / jnp.where(all_e > 0, all_e, 1.0)
  return energy, jnp.asarray(sel_n / all_n, energy.dtype)
