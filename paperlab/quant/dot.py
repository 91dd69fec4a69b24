"""Quantized matmul: ``x @ W`` with ``W`` a :class:`~paperlab.quant.qarray.QArray` (weight-only quantization).

Under ``jax.jit`` the packed codes and scales are the program's inputs and the unpack / decode / scale steps are
part of the same XLA computation as the matmul (dequantize-in-kernel), so only the packed buffers live in memory
between calls. ``jax.nn.scaled_matmul`` is not used: in jax 0.10.2 it has no XLA:CPU lowering ("MLIR translation
rule for primitive 'scaled_matmul' not found for platform cpu"), its GPU path needs both operands in MX with
cuDNN on Blackwell, and this function quantizes only the weight; MX activations are emulated with ``act_fmt``
(direct-cast, as in Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537, section 4).

A whole quantized NNX model runs the same way: ``graphdef, state = nnx.split(model)``,
``qstate = quantize_params(state, rules)``, then a jitted
``lambda qstate, x: nnx.merge(graphdef, dequantize_params(qstate))(x)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from paperlab.quant import formats as _f
from paperlab.quant.qarray import QArray, quantize

__all__ = ["dot"]


def dot(x: jax.Array, qw: QArray | jax.Array, *, act_fmt: str | None = None, precision: Any = None,
        preferred_element_type: Any = None) -> jax.Array:
  """``x @ W``: contract the last axis of ``x`` with the first axis of ``W`` (a Flax ``kernel`` of shape
  ``(in, out)``), where ``W`` is a :class:`QArray` dequantized inside the (jitted) computation.

  Args:
    x: activations ``(..., in)``.
    qw: quantized weight ``(in, ...)`` (best quantized with ``axis=0``, the reduction axis) or a plain array.
    act_fmt: optional MX format (``"mxfp8_e4m3"``, ``"mxint8"``, ...) to direct-cast ``x`` to, in blocks of 32
      along its last (reduction) axis, before the matmul (emulated MX activations); ``None`` keeps ``x``.
    precision, preferred_element_type: passed to ``jax.lax.dot_general``.

  Returns:
    ``(..., out)`` array in ``preferred_element_type`` (default: ``x``'s dtype).

  Raises:
    ValueError: mismatched contraction sizes, or an ``act_fmt`` that is not an MX format.
  """
  x = jnp.asarray(x)
  w_shape = qw.shape if isinstance(qw, QArray) else jnp.shape(qw)
  if x.ndim < 1 or len(w_shape) < 1 or x.shape[-1] != w_shape[0]:
    raise ValueError(f"dot contracts x's last axis with qw's first axis; got x of shape {x.shape} and qw of shape "
                     f"{tuple(w_shape)}.")
  if act_fmt is not None:
    if _f.get_format(act_fmt).kind not in ("mx", "mxint"):
      raise ValueError(f"act_fmt must be an MX format or None, got {act_fmt!r}.")
    x = quantize(x, act_fmt, axis=-1).dequantize(x.dtype)
  w = qw.dequantize(x.dtype) if isinstance(qw, QArray) else jnp.asarray(qw, x.dtype)
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision,
                             preferred_element_type=preferred_element_type)
