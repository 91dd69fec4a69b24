"""Round-to-nearest (RTN) integer weight quantization, per output channel or per group of input rows.

The uniform grid is the one of GPTQ's official ``quant.py`` (IST-DASLab/gptq, ``Quantizer.find_params`` and
``quantize``; Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
arXiv:2210.17323), which qwix's ``gptq_core`` reproduces too. For a slab ``x`` that shares one scale:

* asymmetric (default): ``xmin = min(min x, 0)``, ``xmax = max(max x, 0)``, ``scale = (xmax - xmin) / (2^b - 1)``,
  ``zero = round(-xmin / scale)``;
* symmetric: ``xmax = max|x|``, ``xmin = -xmax``, ``scale = 2 xmax / (2^b - 1)``, ``zero = 2^(b-1)``, i.e. the
  signed levels ``scale * {-2^(b-1), ..., 2^(b-1) - 1}`` (qwix's ``absmax / (2^(b-1) - 0.5)``);
* an all-zero slab uses ``xmin, xmax = -1, 1`` (as the official code does) so the scale is never zero;
* codes ``q = clip(round(x / scale) + zero, 0, 2^b - 1)`` (round half to even), ``x_hat = scale * (q - zero)``.

Layout: a Flax kernel is ``(in, out)``; a group is ``group_size`` consecutive *input* rows of one output column
(the reduction axis, as in GPTQ/AWQ ``q_group_size``); ``group_size=None`` is one scale per output channel.
Scales and zero points have shape ``(in // group_size, out)``; codes are ``uint8`` (one per byte here: packing is
done by :mod:`paperlab.quant.packing` when the tensor becomes a ``QArray``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["QuantizedWeight", "SUPPORTED_BITS", "grid_params", "quantize_to_grid", "dequantize_codes",
           "quantize_rtn", "grouped_rtn", "fake_quantize_rtn", "layer_output_error", "to_qarray"]

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8)


class QuantizedWeight(NamedTuple):
  """A quantized Flax kernel ``(in, out)`` on the uniform integer grid.

  Attributes:
    w_hat: the dequantized weight, shape and dtype of the input kernel.
    codes: ``uint8`` codes in ``[0, 2^bits - 1]``, shape ``(in, out)``.
    scale: ``float32`` scales, shape ``(num_groups, out)``.
    zero: ``float32`` integer-valued zero points, shape ``(num_groups, out)``.
    g_idx: ``int32`` group of each input row, shape ``(in,)`` (``arange(in) // group_size`` except after GPTQ's
      act-order without static groups, whose groups follow the permuted order).
  """

  w_hat: jax.Array
  codes: jax.Array
  scale: jax.Array
  zero: jax.Array
  g_idx: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# validation shared by the PTQ modules


def check_bits(bits: Any) -> int:
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in SUPPORTED_BITS:
    raise ValueError(f"bits must be one of {list(SUPPORTED_BITS)}, got {bits!r}.")
  return int(bits)


def check_kernel(name: str, w: Any) -> jax.Array:
  """A 2-D floating kernel ``(in, out)``; finite when concrete (traced values pass through)."""
  if not hasattr(w, "shape") or not hasattr(w, "dtype"):
    raise TypeError(f"{name} must be an array, got {type(w).__name__}.")
  if len(w.shape) != 2:
    raise ValueError(f"{name} must be a 2-D kernel of shape (in, out), got shape {tuple(w.shape)}.")
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype (float32, bfloat16, float16, float64), got {w.dtype}.")
  check_finite(name, w)
  return jnp.asarray(w)


def check_finite(name: str, x: Any) -> None:
  """Raise ``ValueError`` if a concrete array holds NaN/Inf (under ``jit`` the check is skipped)."""
  if isinstance(x, jax.core.Tracer):
    return
  if not bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64)))):
    raise ValueError(f"{name} must be finite, but it holds NaN or Inf values.")


def check_group_size(group_size: Any, rows: int) -> int:
  """``None`` (per channel: one group of all ``rows``) or a positive int that divides ``rows``."""
  if group_size is None or (not isinstance(group_size, bool) and isinstance(group_size, (int, np.integer))
                            and int(group_size) in (-1, rows)):
    return rows
  if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size <= 0:
    raise ValueError(f"group_size must be None (per channel) or a positive int, got {group_size!r}.")
  if rows % int(group_size):
    raise ValueError(f"group_size={group_size} must divide the input axis of the kernel (size {rows}); "
                     f"accepted: None or a divisor of {rows}.")
  return int(group_size)


# ----------------------------------------------------------------------------------------------------------------
# the grid


def grid_params(xmin: jax.Array, xmax: jax.Array, bits: int, symmetric: bool = False
                ) -> tuple[jax.Array, jax.Array]:
  """``(scale, zero)`` of GPTQ's ``Quantizer.find_params`` from a slab's minimum and maximum (see module doc)."""
  maxq = 2.0 ** bits - 1.0
  xmin = jnp.minimum(xmin, 0.0).astype(jnp.float32)
  xmax = jnp.maximum(xmax, 0.0).astype(jnp.float32)
  if symmetric:
    xmax = jnp.maximum(-xmin, xmax)
    xmin = -xmax
  both_zero = (xmin == 0) & (xmax == 0)
  xmin = jnp.where(both_zero, -1.0, xmin)
  xmax = jnp.where(both_zero, 1.0, xmax)
  scale = (xmax - xmin) / maxq
  if symmetric:
    zero = jnp.full_like(scale, (maxq + 1.0) / 2.0)
  else:
    zero = jnp.round(-xmin / scale)
  return scale, zero


def quantize_to_grid(x: jax.Array, scale: jax.Array, zero: jax.Array, bits: int) -> jax.Array:
  """Codes ``clip(round(x / scale) + zero, 0, 2^bits - 1)`` as float32 (broadcasting ``scale``/``zero``)."""
  return jnp.clip(jnp.round(x.astype(jnp.float32) / scale) + zero, 0.0, 2.0 ** bits - 1.0)


def dequantize_codes(codes: jax.Array, scale: jax.Array, zero: jax.Array) -> jax.Array:
  """``scale * (codes - zero)`` in float32."""
  return scale * (codes.astype(jnp.float32) - zero)


def _grouped(w: jax.Array, group_size: int) -> jax.Array:
  """``(in, out) -> (in // g, g, out)``."""
  return w.reshape(w.shape[0] // group_size, group_size, w.shape[1])


def quantize_rtn(w: jax.Array, *, bits: int = 4, group_size: int | None = None, symmetric: bool = False,
                 clip_max: jax.Array | None = None) -> QuantizedWeight:
  """Round-to-nearest quantization of a kernel ``(in, out)`` per output channel or per group of input rows.

  The baseline of GPTQ (Frantar et al., arXiv:2210.17323) and AWQ (Lin et al., arXiv:2306.00978): every weight is
  rounded to the nearest level of its group's min-max grid (module docstring; GPTQ's and AWQ's papers use
  asymmetric 4-bit or 3-bit with ``group_size=128``). Jittable with ``bits``, ``group_size`` and ``symmetric``
  static.

  Args:
    w: kernel ``(in, out)``, floating.
    bits: 2..8.
    group_size: input rows sharing a scale; ``None`` (or ``-1`` / ``in``) means one scale per output channel.
    symmetric: symmetric grid (zero point ``2^(bits-1)``) instead of the asymmetric min-max grid.
    clip_max: optional ``(num_groups, out)`` clipping threshold: the group is clamped to ``[-clip_max, clip_max]``
      before its grid is found (AWQ's clip search).

  Returns:
    :class:`QuantizedWeight` with ``w_hat`` in ``w``'s dtype.

  Raises:
    ValueError: unsupported ``bits``, ``group_size`` that does not divide ``in``, non-finite or non-2-D ``w``.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  g = check_group_size(group_size, w.shape[0])
  if clip_max is not None:
    clip_max = jnp.asarray(clip_max, jnp.float32)
    if clip_max.shape != (w.shape[0] // g, w.shape[1]):
      raise ValueError(f"clip_max must have shape (num_groups, out) = {(w.shape[0] // g, w.shape[1])}, "
                       f"got {clip_max.shape}.")
  return grouped_rtn(w, bits, g, symmetric, clip_max)


def grouped_rtn(w: jax.Array, bits: int | jax.Array, group_size: int, symmetric: bool = False,
                clip_max: jax.Array | None = None) -> QuantizedWeight:
  """:func:`quantize_rtn` without validation, for use inside other jitted solvers: ``bits`` may be a traced
  scalar (so one compiled program serves every bit width), ``group_size`` must divide ``w.shape[0]``."""
  g = group_size
  wg = _grouped(w.astype(jnp.float32), g)
  if clip_max is not None:
    wg = jnp.clip(wg, -clip_max[:, None], clip_max[:, None])
  scale, zero = grid_params(wg.min(axis=1), wg.max(axis=1), bits, symmetric)
  codes = quantize_to_grid(wg, scale[:, None], zero[:, None], bits)
  w_hat = dequantize_codes(codes, scale[:, None], zero[:, None]).reshape(w.shape).astype(w.dtype)
  g_idx = jnp.arange(w.shape[0], dtype=jnp.int32) // g
  return QuantizedWeight(w_hat, codes.reshape(w.shape).astype(jnp.uint8), scale, zero, g_idx)


def fake_quantize_rtn(w: jax.Array, *, bits: int = 4, group_size: int | None = None,
                      symmetric: bool = False) -> jax.Array:
  """The dequantized RTN kernel only (``quantize_rtn(...).w_hat``); see :func:`quantize_rtn`."""
  return quantize_rtn(w, bits=bits, group_size=group_size, symmetric=symmetric).w_hat


def layer_output_error(x: jax.Array, w: jax.Array, w_hat: jax.Array) -> jax.Array:
  """Mean squared layer-output error ``mean((x w - x w_hat)^2)`` over tokens and output channels (float32), the
  objective GPTQ and AWQ minimize; ``x`` is ``(..., in)``."""
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  return jnp.mean(jnp.square(x @ (w.astype(jnp.float32) - w_hat.astype(jnp.float32))))


def to_qarray(qw: QuantizedWeight, bits: int):
  """Pack a :class:`QuantizedWeight` into the formats slice's :class:`paperlab.quant.QArray` (``uint{bits}`` codes
  with zero points, ``axis=0`` groups of the kernel, float32 scales): ``to_qarray(q, b).dequantize()`` equals
  ``q.w_hat`` (bit for bit in float32). A symmetric grid is stored as its unsigned codes with zero ``2^(b-1)``.

  Raises:
    ValueError: irregular groups (GPTQ's act-order without static groups, whose ``g_idx`` is not
      ``arange(in) // group_size``), which a contiguous-group ``QArray`` cannot hold.
  """
  from paperlab.quant import qarray  # pylint: disable=g-import-not-at-top

  bits = check_bits(bits)
  rows = qw.codes.shape[0]
  g = rows // qw.scale.shape[0]
  if not bool(jnp.all(qw.g_idx == jnp.arange(rows) // g)):
    raise ValueError("to_qarray: the groups are not contiguous (act-order without static groups); quantize with "
                     "static_groups=True to store the result as a QArray.")
  return qarray.quantize(qw.w_hat.astype(jnp.float32), f"uint{bits}", axis=0, group_size=g,
                         scale=qw.scale.astype(jnp.float32), zero=qw.zero.astype(jnp.uint8))
