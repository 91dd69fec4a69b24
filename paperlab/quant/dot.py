"""Quantized matmul: ``x @ W`` with ``W`` a :class:`~paperlab.quant.qarray.QArray` (weight-only quantization).

Under ``jax.jit`` the packed codes and scales are the program's inputs and the unpack / decode / scale steps are
part of the same XLA computation as the matmul (dequantize-in-kernel), so only the packed buffers live in memory
between calls. ``jax.nn.scaled_matmul`` is not used: in jax 0.10.2 it has no XLA:CPU lowering ("MLIR translation
rule for primitive 'scaled_matmul' not found for platform cpu"), its GPU lowering goes to cuDNN (documented for
Blackwell GPUs) with both operands in MX, and this function quantizes only the weight; MX activations are emulated with ``act_fmt``
(direct-cast, as in Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537, section 4).

A whole quantized NNX model runs the same way: ``graphdef, state = nnx.split(model)``,
``qstate = quantize_params(state, rules)``, then a jitted
``lambda qstate, x: nnx.merge(graphdef, dequantize_params(qstate))(x)``.
"""

from __future__ import annotations

from typing import Any

import functools

import jax
import jax.numpy as jnp

from paperlab.quant import formats as _f
from paperlab.quant.qarray import QArray, quantize

__all__ = ["dot", "mx_dot"]


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


def _mx_cast(a: jax.Array, fmt: str, axis: int) -> jax.Array:
  """``a`` direct-cast to MX ``fmt`` in blocks of 32 along ``axis`` (zero-padded to a multiple of 32: padding
  zeros leave every block maximum, and so every scale, unchanged), returned in float32. The same arithmetic as
  ``quantize(a, fmt, axis=axis).dequantize()`` without packing the codes (a fake-quant for training)."""
  f = _f.get_format(fmt)
  n = a.shape[axis]
  pad = -n % 32
  am = jnp.moveaxis(a.astype(jnp.float32), axis, -1)
  am = jnp.pad(am, [(0, 0)] * (am.ndim - 1) + [(0, pad)])
  blocks = am.reshape(am.shape[:-1] + (am.shape[-1] // 32, 32))
  s = _f.mx_shared_exponent(jnp.max(jnp.abs(blocks), axis=-1), f).astype(jnp.int32)[..., None]
  y = _f.mul_pow2(blocks, 127 - s)
  if f.kind == "mx":
    elem = _f.decode_float(_f.encode_float(y, f), f)
  else:
    elem = jnp.clip(jnp.round(y * 64.0), -127, 127) / 64.0
  out = jnp.where(s == 255, jnp.float32(jnp.nan), _f.mul_pow2(elem, s - 127))
  out = out.reshape(am.shape)[..., :n]
  return jnp.moveaxis(out, -1, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _mx_matmul(x, w, fmt_x, fmt_w, fmt_g):
  return _mx_cast(x, fmt_x, 1) @ _mx_cast(w, fmt_w, 0)


def _mx_matmul_fwd(x, w, fmt_x, fmt_w, fmt_g):
  return _mx_matmul(x, w, fmt_x, fmt_w, fmt_g), (x, w)


def _mx_matmul_bwd(fmt_x, fmt_w, fmt_g, res, g):
  x, w = res
  dx = _mx_cast(g, fmt_g, 1) @ _mx_cast(w, fmt_w, 1).T  # reduction over the output features
  dw = _mx_cast(x, fmt_x, 0).T @ _mx_cast(g, fmt_g, 0)  # reduction over the batch
  return dx.astype(x.dtype), dw.astype(w.dtype)


_mx_matmul.defvjp(_mx_matmul_fwd, _mx_matmul_bwd)


def mx_dot(x: jax.Array, w: jax.Array, fmt: str = "mxfp6_e3m2", *, fmt_w: str | None = None,
           fmt_grad: str | None = None) -> jax.Array:
  """``x @ w`` for MX training: the forward and both backward matmuls quantize their operands to MX along their
  own reduction axes (Rouhani et al., "Microscaling Data Formats for Deep Learning", arXiv:2310.10537, section 6:
  weights, activations and gradients in MX; ``W`` and ``W^T`` get different MX copies because their blocks run
  along different axes). Master weights and the optimizer stay in float32.

  Forward ``y = Q(x, K) @ Q(w, K)``; backward ``dx = Q(g, N) @ Q(w, N)^T`` and ``dw = Q(x, M)^T @ Q(g, M)``, where
  ``Q(a, D)`` direct-casts blocks of 32 along the axis of size D (zero-padded when D is not a multiple of 32).

  Args:
    x: ``(..., K)`` activations (leading axes are flattened into the batch ``M``).
    w: ``(K, N)`` weight (a Flax ``kernel``).
    fmt: MX format of the activations (and of ``w`` and the gradients unless given), default MXFP6 E3M2.
    fmt_w, fmt_grad: MX formats of the weight and of the output gradient.

  Returns:
    ``(..., N)`` float32 output.
  """
  fmts = {"fmt": fmt, "fmt_w": fmt if fmt_w is None else fmt_w, "fmt_grad": fmt if fmt_grad is None else fmt_grad}
  for name, f in fmts.items():
    if _f.get_format(f).kind not in ("mx", "mxint"):
      raise ValueError(f"{name} must be an MX format ({[n for n in _f.FORMAT_NAMES if n.startswith('mx')]}), "
                       f"got {f!r}.")
  x, w = jnp.asarray(x), jnp.asarray(w)
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"mx_dot needs x (..., K) and w (K, N); got x of shape {x.shape} and w of shape {w.shape}.")
  y = _mx_matmul(x.reshape(-1, x.shape[-1]), w, fmts["fmt"], fmts["fmt_w"], fmts["fmt_grad"])
  return y.reshape(x.shape[:-1] + (w.shape[1],))
