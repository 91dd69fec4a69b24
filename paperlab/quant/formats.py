"""Number formats: integer grids, OCP FP8/FP6/FP4 element formats, OCP Microscaling (MX) and NF4.

Each format is a static :class:`Format` record looked up by name with :func:`get_format`. The element encoders
here turn float32 values into integer *codes* (the format's bit pattern, one per ``uint8``/``int8``); packing the
codes densely is :mod:`paperlab.quant.packing`'s job and pairing them with scales is :mod:`paperlab.quant.qarray`'s.

References:
  - OCP Microscaling Formats (MX) Specification v1.0 (2023), sections 5 (element formats, E8M0 scale) and 6.3
    (conversion: ``X = 2^(floor(log2(max|V_i|)) - emax_elem)``, ``P_i = quantize(V_i / X)`` with roundTiesToEven
    and saturation to the element format's max normal). Rouhani et al., "Microscaling Data Formats for Deep
    Learning", arXiv:2310.10537.
  - OCP 8-bit Floating Point Specification (OFP8) v1.0 (E4M3 and E5M2 encodings).
  - Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314 (NF4 code book, block 64).

Element codes are computed arithmetically (exact power-of-two scalings and ``jnp.round``, which rounds half to
even), so every format works under ``jax.jit`` on every backend, including the FP6 types that XLA's CPU backend
cannot convert to; decoding looks the code up in a table built from the ``ml_dtypes`` type of the format. Tests
check the encoders bit for bit against ``ml_dtypes`` casts and ``torchao``'s MX reference.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

__all__ = [
    "Format",
    "FORMAT_NAMES",
    "NF4_CODE",
    "get_format",
    "encode_float",
    "decode_float",
    "encode_nf4",
    "mx_shared_exponent",
    "mul_pow2",
]


@dataclasses.dataclass(frozen=True)
class Format:
  """A static description of a number format.

  Attributes:
    name: the format name accepted by :func:`paperlab.quant.quantize`.
    kind: ``"int"`` (uniform integer grid with a float scale), ``"float"`` (a scaled FP8/FP6/FP4 element),
      ``"nf4"`` (the QLoRA code book with a block absmax), ``"mx"`` (an FP element with an E8M0 block scale) or
      ``"mxint"`` (MXINT8: int8 fixed point ``code * 2^-6`` with an E8M0 block scale).
    bits: bits per stored element code.
    ebits, mbits: exponent and explicit mantissa bits of a float element (0 for integer formats).
    bias: exponent bias of a float element.
    max_norm: largest finite magnitude of the element (``127/64`` for MXINT8, ``qmax`` for integers).
    emax: exponent of the largest power of two of the element (``floor(log2(max_norm))``), used by the MX scale.
    block: fixed block size (32 for MX, 64 for NF4 by default), ``None`` for free grouping.
    ml_dtype: name of the ``ml_dtypes`` type of the element, ``None`` for integers and NF4.
    unsigned: integer codes are unsigned (asymmetric ``uint`` formats).
  """
  name: str
  kind: str
  bits: int
  ebits: int = 0
  mbits: int = 0
  bias: int = 0
  max_norm: float = 0.0
  emax: int = 0
  block: int | None = None
  ml_dtype: str | None = None
  unsigned: bool = False


def _fp(name: str, kind: str, ebits: int, mbits: int, bias: int, max_norm: float, ml_dtype: str,
        block: int | None) -> Format:
  return Format(name=name, kind=kind, bits=1 + ebits + mbits, ebits=ebits, mbits=mbits, bias=bias,
                max_norm=max_norm, emax=int(np.floor(np.log2(max_norm))), block=block, ml_dtype=ml_dtype)


# Element parameters from the OCP MX v1.0 spec, tables 2-6 (and OFP8 v1.0 for the FP8 elements).
_ELEMENTS = {
    "e4m3": (4, 3, 7, 448.0, "float8_e4m3fn"),
    "e5m2": (5, 2, 15, 57344.0, "float8_e5m2"),
    "e2m3": (2, 3, 1, 7.5, "float6_e2m3fn"),
    "e3m2": (3, 2, 3, 28.0, "float6_e3m2fn"),
    "e2m1": (2, 1, 1, 6.0, "float4_e2m1fn"),
}

_FORMATS: dict[str, Format] = {}
for _b in range(2, 9):
  _FORMATS[f"int{_b}"] = Format(name=f"int{_b}", kind="int", bits=_b, max_norm=float(2 ** (_b - 1) - 1))
  _FORMATS[f"uint{_b}"] = Format(name=f"uint{_b}", kind="int", bits=_b, max_norm=float(2 ** _b - 1), unsigned=True)
for _p, _e in (("fp8", "e4m3"), ("fp8", "e5m2"), ("fp6", "e2m3"), ("fp6", "e3m2"), ("fp4", "e2m1")):
  _FORMATS[f"{_p}_{_e}"] = _fp(f"{_p}_{_e}", "float", *_ELEMENTS[_e], block=None)
  _FORMATS[f"mx{_p}_{_e}"] = _fp(f"mx{_p}_{_e}", "mx", *_ELEMENTS[_e], block=32)
_FORMATS["mxint8"] = Format(name="mxint8", kind="mxint", bits=8, max_norm=127 / 64, emax=0, block=32)
_FORMATS["nf4"] = Format(name="nf4", kind="nf4", bits=4, max_norm=1.0, block=64)

FORMAT_NAMES: tuple[str, ...] = tuple(_FORMATS)
"""Every format name accepted by :func:`get_format` and :func:`paperlab.quant.quantize`."""

# QLoRA's NormalFloat4 code book: bitsandbytes/functional.py ``create_normal_map(offset=0.9677083)``
# (Dettmers et al., arXiv:2305.14314, appendix E), as printed in the QLoRA paper and bitsandbytes' NF4 kernels.
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


def get_format(fmt: str | Format) -> Format:
  """The :class:`Format` called ``fmt``; ``ValueError`` listing the accepted names otherwise."""
  if isinstance(fmt, Format):
    return fmt
  if not isinstance(fmt, str) or fmt not in _FORMATS:
    raise ValueError(f"fmt must be one of {list(FORMAT_NAMES)}, got {fmt!r}.")
  return _FORMATS[fmt]


def _pow2(k: jax.Array) -> jax.Array:
  """Exact float32 ``2**k`` for integer ``k`` in [-126, 127], built from its bits (``jnp.ldexp`` is ~10x slower)."""
  return jax.lax.bitcast_convert_type((jnp.asarray(k, jnp.int32) + 127) << 23, jnp.float32)


def mul_pow2(x: jax.Array, k: jax.Array) -> jax.Array:
  """``x * 2**k`` exactly for integer ``k`` in [-127, 127] (two normal power-of-two factors, so ``2^-127`` needs
  no subnormal constant)."""
  k = jnp.asarray(k, jnp.int32)
  a = k >> 1  # floor(k / 2)
  return x * _pow2(a) * _pow2(k - a)


def _floor_log2(a: jax.Array) -> jax.Array:
  """``floor(log2(a))`` of non-negative finite float32 ``a`` from its exponent bits; -127 for 0 and subnormals."""
  return ((jax.lax.bitcast_convert_type(a, jnp.int32) >> 23) & 0xFF) - 127


@functools.partial(jax.jit, static_argnames="fmt")
def encode_float(y: jax.Array, fmt: str | Format) -> jax.Array:
  """Round ``y`` to the float element of ``fmt`` and return its bit pattern as ``uint8``.

  Rounding is roundTiesToEven with saturation: magnitudes above the element's max normal become max normal (MX
  spec v1.0 section 6.3, "clamping normal numbers to max normal"; no overflow to Inf/NaN). Subnormals are
  produced; the sign of zero is kept, as IEEE conversion does. NaN maps to the format's NaN code where the format
  has one (``0x7f`` for E4M3, ``0x7e`` for E5M2, sign kept) and to ``+0`` otherwise (FP6/FP4 have no NaN; MX
  blocks that contain NaN carry it in their scale instead).

  Args:
    y: float array (any float dtype; computed in float32).
    fmt: a float or MX format name (``"fp8_e4m3"``, ``"mxfp6_e2m3"``, ...) or :class:`Format`.

  Returns:
    ``uint8`` array of ``y``'s shape with the ``1 + ebits + mbits``-bit code in its low bits.
  """
  f = get_format(fmt)
  if f.kind not in ("float", "mx"):
    raise ValueError(f"fmt must be a float element format, got {f.name!r} (kind {f.kind!r}).")
  y = jnp.asarray(y).astype(jnp.float32)
  sign = jnp.signbit(y).astype(jnp.uint32)
  a = jnp.minimum(jnp.abs(y), jnp.float32(f.max_norm))
  a = jnp.where(jnp.isnan(y), 0.0, a)
  emin = 1 - f.bias
  e = jnp.maximum(_floor_log2(a), emin)  # subnormal elements share the exponent emin
  q = jnp.round(a * _pow2(f.mbits - e))  # exact scaling, then round half to even
  carry = q >= 2 ** (f.mbits + 1)
  e = jnp.where(carry, e + 1, e)
  q = jnp.where(carry, q / 2, q).astype(jnp.uint32)
  normal = q >= 2 ** f.mbits
  biased = jnp.where(normal, (e + f.bias).astype(jnp.uint32), jnp.uint32(0))
  mant = jnp.where(normal, q - jnp.uint32(2 ** f.mbits), q)
  code = (sign << (f.ebits + f.mbits)) | (biased << f.mbits) | mant
  if f.ml_dtype == "float8_e4m3fn":
    code = jnp.where(jnp.isnan(y), (sign << 7) | jnp.uint32(0x7F), code)
  elif f.ml_dtype == "float8_e5m2":
    code = jnp.where(jnp.isnan(y), (sign << 7) | jnp.uint32(0x7E), code)
  else:
    code = jnp.where(jnp.isnan(y), jnp.uint32(0), code)
  return code.astype(jnp.uint8)


def _decode_table(f: Format) -> np.ndarray:
  dt = getattr(ml_dtypes, f.ml_dtype)
  return np.arange(2 ** f.bits, dtype=np.uint8).view(dt).astype(np.float32)


@functools.partial(jax.jit, static_argnames="fmt")
def decode_float(codes: jax.Array, fmt: str | Format) -> jax.Array:
  """float32 value of float element ``codes`` (``uint8`` bit patterns), read from the ``ml_dtypes`` type."""
  f = get_format(fmt)
  if f.kind not in ("float", "mx"):
    raise ValueError(f"fmt must be a float element format, got {f.name!r} (kind {f.kind!r}).")
  return jnp.asarray(_decode_table(f))[jnp.asarray(codes).astype(jnp.int32)]


@jax.jit
def encode_nf4(y: jax.Array) -> jax.Array:
  """Index (``uint8`` in [0, 15]) of the nearest NF4 code-book value to each ``y`` (already divided by the block
  absmax, so in [-1, 1]); QLoRA, arXiv:2305.14314, section 3 (NormalFloat quantization)."""
  mid = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2
  return jnp.searchsorted(jnp.asarray(mid), jnp.asarray(y, jnp.float32), side="left").astype(jnp.uint8)


def mx_shared_exponent(amax: jax.Array, fmt: str | Format) -> jax.Array:
  """E8M0 scale code (biased exponent, ``uint8``) of MX blocks whose absolute maximum is ``amax``.

  OCP MX v1.0 section 6.3: ``shared_exp = floor(log2(amax)) - emax_elem``, clamped to the E8M0 range
  [-127, 127] and biased by 127. An all-zero block gets the smallest scale (code 0, ``2^-127``; microxcaling
  replaces a zero max by the smallest normal, which clamps to the same code). A block whose max is NaN or Inf gets
  the NaN scale 0xFF (microxcaling ``_quantize_mx``: ``floor(log2(inf))`` exceeds 127 and becomes NaN; spec
  section 5.3: a NaN scale makes the whole block NaN).
  """
  f = get_format(fmt)
  if f.kind not in ("mx", "mxint"):
    raise ValueError(f"fmt must be an MX format, got {f.name!r}.")
  amax = jnp.asarray(amax, jnp.float32)
  # floor(log2) from the exponent bits (as torchao does); zero and float32 subnormals give -127, which clamps to
  # the same code as their exact floor(log2) would
  e = _floor_log2(jnp.where(jnp.isfinite(amax), amax, 0.0)) - f.emax
  code = jnp.clip(e, -127, 127) + 127
  return jnp.where(jnp.isfinite(amax), code, 255).astype(jnp.uint8)
