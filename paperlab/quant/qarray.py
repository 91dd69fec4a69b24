"""``QArray``: a quantized tensor as a registered pytree, and ``quantize`` / ``quantize_params``.

A :class:`QArray` holds the densely packed element codes (``values``, a ``uint8`` stream from
:func:`paperlab.quant.packing.pack_bits`), the ``scales`` and the optional ``zeros`` (zero points) as pytree
children, and the format name, logical shape, grouping axis, group size and original dtype as static aux data. So
``jit``, ``vmap`` and ``jax.tree`` see only the buffers, and ``nbytes`` is the size of what is really stored.

Grouping. ``axis`` is the axis along which values share a scale (for a weight, the dot-product reduction axis:
``0`` for a Flax ``kernel`` of shape ``(in, out)``); ``group_size`` splits it into groups of that many values.
``group_size=None`` gives one scale per slice along ``axis`` (per output channel for ``axis=0`` of a kernel);
``axis=None`` flattens the tensor first (``group_size=None`` is then per tensor). Scales have ``x``'s shape with
``shape[axis]`` replaced by the number of groups (``(n_groups,)`` for ``axis=None``).

Formats (see :mod:`paperlab.quant.formats`):
  - ``int2``..``int8``: symmetric ``q = clip(round(x / s), -2^(b-1), 2^(b-1) - 1)``, ``s = absmax / (2^(b-1) - 1)``;
    ``uint2``..``uint8`` (or ``intK`` with ``symmetric=False``): asymmetric ``q = clip(round(x / s) + z, 0,
    2^b - 1)``, ``s = (max(x, 0) - min(x, 0)) / (2^b - 1)``, ``z = round(-min(x, 0) / s)`` (the min-max grid of
    GPTQ, Frantar et al., arXiv:2210.17323, and of round-to-nearest baselines). ``round`` is half to even.
  - ``fp8_e4m3``, ``fp8_e5m2``, ``fp6_e2m3``, ``fp6_e3m2``, ``fp4_e2m1``: ``x / s`` rounded to the element
    (roundTiesToEven, saturating), ``s = absmax / max_norm`` per group.
  - ``nf4``: QLoRA NormalFloat4 (Dettmers et al., arXiv:2305.14314): nearest code-book value of ``x / absmax``,
    block 64 by default.
  - ``mxfp8_e4m3``, ``mxfp8_e5m2``, ``mxfp6_e2m3``, ``mxfp6_e3m2``, ``mxfp4_e2m1``, ``mxint8``: OCP Microscaling
    v1.0 (Rouhani et al., arXiv:2310.10537): blocks of 32 along ``axis`` share an E8M0 scale
    ``X = 2^(floor(log2(amax)) - emax_elem)``; elements ``V / X`` rounded to nearest even with saturation; MXINT8
    elements are int8 fixed point ``code * 2^-6``. Scales are stored as E8M0 codes (``uint8``, 255 = NaN; view them
    as ``ml_dtypes.float8_e8m0fnu``).

Float scales of the non-MX formats are stored in ``scale_dtype`` (bfloat16 by default, as the 16-bit scales of
GPTQ/AWQ checkpoints; bfloat16 has float32's range, so no scale overflows or underflows). The stored scale is
rounded *up* to ``scale_dtype`` and the codes are computed from the stored scale, so every in-range value is within
half a step of its dequantized value.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.quant import _rules
from paperlab.quant import formats as _f
from paperlab.quant.packing import pack_bits, unpack_bits

__all__ = ["QArray", "quantize", "quantize_dequantize", "quantize_params", "dequantize_params"]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class QArray:
  """A quantized tensor: packed codes + scales (+ zero points) as pytree children, the layout as static aux data.

  Attributes:
    values: 1-D ``uint8`` stream of the element codes, densely packed (``ceil(size * bits / 8)`` bytes), codes
      ordered as ``x`` with ``axis`` moved last, flattened.
    scales: float scales (``scale_dtype``) or, for MX formats, E8M0 codes (``uint8``); ``x``'s shape with
      ``shape[axis]`` replaced by the number of groups.
    zeros: ``uint8`` zero points of asymmetric integer formats (same shape as ``scales``), else ``None``.
    fmt: format name (``"int4"``, ``"uint4"``, ``"mxfp4_e2m1"``, ...).
    shape: logical shape of the tensor.
    axis: grouping axis (non-negative) or ``None`` (flattened).
    group_size: values per scale.
    dtype: name of the dtype ``dequantize`` returns by default (the input's dtype).
  """
  values: jax.Array
  scales: jax.Array
  zeros: jax.Array | None
  fmt: str
  shape: tuple[int, ...]
  axis: int | None
  group_size: int
  dtype: str

  def tree_flatten(self):
    return (self.values, self.scales, self.zeros), (self.fmt, self.shape, self.axis, self.group_size, self.dtype)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  @property
  def format(self) -> _f.Format:
    """The :class:`~paperlab.quant.formats.Format` record."""
    return _f.get_format(self.fmt)

  @property
  def bits(self) -> int:
    """Bits per element code."""
    return self.format.bits

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def nbytes(self) -> int:
    """Bytes of the stored buffers (packed codes + scales + zero points), measured from their shapes/dtypes."""
    return sum(int(np.prod(a.shape, dtype=np.int64)) * jnp.dtype(a.dtype).itemsize
               for a in jax.tree.leaves(self))

  def codes(self) -> jax.Array:
    """The unpacked element codes in ``x``'s layout (``int8`` two's complement for signed integer formats and
    MXINT8, ``uint8`` bit patterns or code-book indices otherwise)."""
    f = self.format
    signed = (f.kind == "int" and not f.unsigned) or f.kind == "mxint"
    c = unpack_bits(self.values, f.bits, self.size, signed=signed)
    return _from_moved(c.reshape(_moved_shape(self.shape, self.axis)), self.shape, self.axis)

  def dequantize(self, dtype: Any = None) -> jax.Array:
    """The real values ``decode(code) * scale`` (minus zero point for asymmetric ints) as ``dtype`` (default:
    the dtype of the quantized input). Jittable."""
    return _dequantize(self, jnp.dtype(self.dtype if dtype is None else dtype))

  def _dequantize(self, dtype):
    f = self.format
    signed = (f.kind == "int" and not f.unsigned) or f.kind == "mxint"
    mshape = _moved_shape(self.shape, self.axis)
    c = unpack_bits(self.values, f.bits, self.size, signed=signed)
    c = c.reshape(mshape[:-1] + (mshape[-1] // self.group_size, self.group_size))
    s = _to_moved_scales(self.scales, self.axis)[..., None]
    if f.kind == "int":
      v = c.astype(jnp.float32)
      if self.zeros is not None:
        v = v - _to_moved_scales(self.zeros, self.axis)[..., None].astype(jnp.float32)
      v = v * s.astype(jnp.float32)
    elif f.kind == "float":
      v = _f.decode_float(c, f) * s.astype(jnp.float32)
    elif f.kind == "nf4":
      v = jnp.asarray(_f.NF4_CODE)[c.astype(jnp.int32)] * s.astype(jnp.float32)
    else:  # mx / mxint: E8M0 scale
      elem = _f.decode_float(c, f) if f.kind == "mx" else c.astype(jnp.float32) * jnp.float32(2.0 ** -6)
      v = jnp.where(s == 255, jnp.float32(jnp.nan), _f.mul_pow2(elem, s.astype(jnp.int32) - 127))
    v = v.reshape(mshape)
    return _from_moved(v, self.shape, self.axis).astype(dtype)

  def __repr__(self) -> str:
    return (f"QArray(fmt={self.fmt!r}, shape={self.shape}, axis={self.axis}, group_size={self.group_size}, "
            f"dtype={self.dtype}, nbytes={self.nbytes})")


@functools.partial(jax.jit, static_argnames="dtype")
def _dequantize(qa: QArray, dtype: Any) -> jax.Array:
  return qa._dequantize(dtype)


def _moved_shape(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
  if axis is None:
    return (int(np.prod(shape, dtype=np.int64)),)
  return tuple(d for i, d in enumerate(shape) if i != axis) + (shape[axis],)


def _to_moved(x: jax.Array, axis: int | None) -> jax.Array:
  return jnp.reshape(x, (-1,)) if axis is None else jnp.moveaxis(x, axis, -1)


def _from_moved(xm: jax.Array, shape: tuple[int, ...], axis: int | None) -> jax.Array:
  return jnp.reshape(xm, shape) if axis is None else jnp.moveaxis(xm, -1, axis)


def _to_moved_scales(s: jax.Array, axis: int | None) -> jax.Array:
  return s if axis is None else jnp.moveaxis(s, axis, -1)


def _store_scale(s: jax.Array, scale_dtype: Any) -> jax.Array:
  """Round a float32 scale up to ``scale_dtype`` so that ``|x| / stored_scale`` never exceeds the grid."""
  sq = s.astype(scale_dtype)
  up = jnp.nextafter(sq, jnp.asarray(jnp.inf, sq.dtype))
  return jnp.where(sq.astype(jnp.float32) < s, up, sq)


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _resolve(x: jax.Array, fmt: str, axis: int | None, group_size: int | None, symmetric: bool | None):
  """Validate the public arguments; return (format, axis, group_size, symmetric)."""
  f = _f.get_format(fmt)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"x must have a floating dtype, got {x.dtype}.")
  if axis is not None:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
      raise ValueError(f"axis must be None or an int in [{-x.ndim}, {x.ndim}) for x of shape {x.shape}, "
                       f"got {axis!r}.")
    axis = int(axis) % x.ndim
  length = int(np.prod(x.shape, dtype=np.int64)) if axis is None else x.shape[axis]
  if f.kind == "int":
    if symmetric is None:
      symmetric = not f.unsigned
    if f.unsigned and symmetric:
      raise ValueError(f"symmetric=True is not accepted for fmt={f.name!r} (unsigned codes are asymmetric); use "
                       f"fmt='int{f.bits}'.")
    if not symmetric and not f.unsigned:
      f = _f.get_format(f"uint{f.bits}")
  elif symmetric is False:
    raise ValueError(f"symmetric=False is only accepted for integer formats, got fmt={f.name!r}.")
  if f.kind in ("mx", "mxint"):
    if group_size not in (None, f.block):
      raise ValueError(f"group_size must be None or {f.block} for fmt={f.name!r} (the MX block size), "
                       f"got {group_size!r}.")
    group_size = f.block
  elif group_size is None:
    group_size = f.block if f.block is not None else length
  if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
    raise ValueError(f"group_size must be a positive int or None, got {group_size!r}.")
  group_size = int(group_size)
  if length % group_size:
    where = "the flattened tensor" if axis is None else f"axis {axis}"
    raise ValueError(f"group_size={group_size} does not divide the length {length} of {where} of x with shape "
                     f"{x.shape} (fmt={f.name!r}); pick a divisor of {length}.")
  return f, axis, group_size, bool(symmetric)


def quantize(x: jax.Array, fmt: str, *, axis: int | None = -1, group_size: int | None = None,
             symmetric: bool | None = None, scale_dtype: Any = jnp.bfloat16, scale: jax.Array | None = None,
             zero: jax.Array | None = None) -> QArray:
  """Quantize ``x`` to the number format ``fmt`` and pack it into a :class:`QArray`.

  Formats, grids and references are listed in the module docstring (:mod:`paperlab.quant.qarray`); MX follows the
  OCP Microscaling v1.0 specification bit for bit (section 6.3), NF4 the QLoRA paper (arXiv:2305.14314).

  Args:
    x: floating array.
    fmt: one of :data:`paperlab.quant.formats.FORMAT_NAMES`: ``"int2"``..``"int8"``, ``"uint2"``..``"uint8"``,
      ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"fp6_e2m3"``, ``"fp6_e3m2"``, ``"fp4_e2m1"``, ``"nf4"``,
      ``"mxfp8_e4m3"``, ``"mxfp8_e5m2"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp4_e2m1"``, ``"mxint8"``.
    axis: axis whose values share a scale (the reduction axis of a matmul), or ``None`` to flatten ``x``.
    group_size: values per scale along ``axis``; ``None``: the whole axis for int/fp formats, 64 for NF4, and
      the MX block of 32 (the only accepted MX value). Must divide the axis length.
    symmetric: integer formats only; ``None`` means symmetric for ``intK`` and asymmetric for ``uintK``;
      ``symmetric=False`` with ``intK`` stores ``uintK`` codes with zero points.
    scale_dtype: dtype of the float scales of int/fp/NF4 formats (default bfloat16; MX scales are E8M0).
    scale, zero: precomputed scales (and zero points, asymmetric ints) in the scale layout, e.g. from GPTQ or a
      clipping search; codes are then ``round(x / scale) (+ zero)`` clipped to the grid.

  Returns:
    :class:`QArray`. Under ``jit`` and ``vmap`` it is an ordinary pytree.

  Raises:
    ValueError: unknown ``fmt`` (the message lists the accepted names), a group size that does not divide the
      axis, a bad ``axis``, inconsistent ``symmetric``/``scale``/``zero``, or non-finite values in a concrete
      ``x`` for a non-MX format (MX blocks with NaN/Inf get the NaN scale, as the spec prescribes; under ``jit``
      a non-finite value makes its group's scale NaN, so it dequantizes to NaN rather than a finite guess).
    TypeError: ``x`` is not floating.
  """
  x = jnp.asarray(x)
  f, axis, g, symmetric = _resolve(x, fmt, axis, group_size, symmetric)
  if f.kind not in ("mx", "mxint") and _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f"x contains NaN or Inf; fmt={f.name!r} needs finite values (the MX formats encode "
                     f"non-finite blocks with a NaN scale).")
  mshape = _moved_shape(x.shape, axis)
  sshape = mshape[:-1] + (mshape[-1] // g,)
  user_sshape = sshape if axis is None else tuple(sshape[:axis]) + (sshape[-1],) + tuple(sshape[axis:-1])
  if scale is not None and (f.kind in ("mx", "mxint")):
    raise ValueError(f"scale is not accepted for fmt={f.name!r}: MX scales are derived from the block maximum.")
  if zero is not None and not (f.kind == "int" and f.unsigned):
    raise ValueError(f"zero is only accepted for asymmetric integer formats, got fmt={f.name!r}.")
  for name, a in (("scale", scale), ("zero", zero)):
    if a is not None and tuple(jnp.shape(a)) != user_sshape:
      raise ValueError(f"{name} must have shape {user_sshape} for x of shape {x.shape}, axis={axis}, "
                       f"group_size={g}; got {tuple(jnp.shape(a))}.")
  if (scale is None) != (zero is None) and f.kind == "int" and f.unsigned:
    raise ValueError("scale and zero must be given together for asymmetric integer formats.")

  codes, s, zeros = _quantize_impl(x, scale, zero, f=f, axis=axis, g=g, scale_dtype=jnp.dtype(scale_dtype))
  # packing is a separate jitted program: fused with the MX encoder into one XLA:CPU program it ran 10-30x slower
  # (measured at 512x512, jax 0.10.2; an optimization_barrier did not help). Under an outer jit both parts fuse.
  values = pack_bits(codes, f.bits)
  return QArray(values=values, scales=s, zeros=zeros, fmt=f.name, shape=tuple(x.shape), axis=axis, group_size=g,
                dtype=jnp.dtype(x.dtype).name)


@functools.partial(jax.jit, static_argnames=("f", "axis", "g", "scale_dtype"))
def _quantize_impl(x, scale, zero, *, f, axis, g, scale_dtype):
  mshape = _moved_shape(x.shape, axis)
  sshape = mshape[:-1] + (mshape[-1] // g,)
  xg = _to_moved(x, axis).astype(jnp.float32).reshape(sshape + (g,))
  amax = jnp.max(jnp.abs(xg), axis=-1)
  s_given = None if scale is None else _to_moved_scales(jnp.asarray(scale), axis)
  zeros = None
  if f.kind == "int" and not f.unsigned:
    qmax = 2 ** (f.bits - 1) - 1
    s = s_given if s_given is not None else _store_scale(jnp.where(amax > 0, amax / qmax, 1.0), scale_dtype)
    codes = jnp.clip(jnp.round(xg / s.astype(jnp.float32)[..., None]), -qmax - 1, qmax).astype(jnp.int32)
  elif f.kind == "int":
    maxq = 2 ** f.bits - 1
    if s_given is None:
      lo = jnp.minimum(jnp.min(xg, axis=-1), 0.0)
      hi = jnp.maximum(jnp.max(xg, axis=-1), 0.0)
      s = _store_scale(jnp.where(hi > lo, (hi - lo) / maxq, 1.0), scale_dtype)
      z = jnp.clip(jnp.round(-lo / s.astype(jnp.float32)), 0, maxq).astype(jnp.uint8)
    else:
      s, z = s_given, _to_moved_scales(jnp.asarray(zero), axis).astype(jnp.uint8)
    codes = jnp.clip(jnp.round(xg / s.astype(jnp.float32)[..., None]) + z[..., None].astype(jnp.float32),
                     0, maxq).astype(jnp.int32)
    zeros = z
  elif f.kind == "float":
    s = s_given if s_given is not None else _store_scale(jnp.where(amax > 0, amax / f.max_norm, 1.0), scale_dtype)
    codes = _f.encode_float(xg / s.astype(jnp.float32)[..., None], f)
  elif f.kind == "nf4":
    s = s_given if s_given is not None else _store_scale(jnp.where(amax > 0, amax, 1.0), scale_dtype)
    codes = _f.encode_nf4(xg / s.astype(jnp.float32)[..., None])
  else:
    s = _f.mx_shared_exponent(amax, f)
    y = _f.mul_pow2(xg, (127 - s.astype(jnp.int32))[..., None])  # V / X, exact power-of-two scaling
    if f.kind == "mx":
      codes = _f.encode_float(y, f)
    else:
      codes = jnp.clip(jnp.round(y * 64.0), -127, 127).astype(jnp.int32)
    codes = jnp.where((s == 255)[..., None], 0, codes)
  if axis is not None:
    s = jnp.moveaxis(s, -1, axis)
    zeros = None if zeros is None else jnp.moveaxis(zeros, -1, axis)
  return codes, s, zeros


def quantize_dequantize(x: jax.Array, fmt: str, **kwargs: Any) -> jax.Array:
  """``quantize(x, fmt, **kwargs).dequantize(x.dtype)``: the value ``x`` takes in ``fmt`` (no gradient rule;
  straight-through estimators belong to QAT)."""
  return quantize(x, fmt, **kwargs).dequantize(jnp.asarray(x).dtype)


Rule = tuple[str, Any]


def _rule_kwargs(pattern: str, spec: Any) -> dict | None:
  if spec is None:
    return None
  if isinstance(spec, str):
    return {"fmt": spec}
  if isinstance(spec, Mapping) and "fmt" in spec:
    return dict(spec)
  raise ValueError(f"rule {pattern!r}: the spec must be a format name, a dict of quantize() arguments with "
                   f"'fmt', or None (keep in float), got {spec!r}.")


def quantize_params(params: Any, rules: Sequence[Rule]) -> Any:
  """Quantize the leaves of a parameter pytree chosen by path-regex rules (first matching rule wins, like qwix's
  ``QuantizationRule(module_path=...)``).

  Args:
    params: pytree of arrays (a dict or ``nnx.State``); paths are ``/``-joined keys, e.g. ``"hidden/0/kernel"``.
    rules: sequence of ``(regex, spec)``; the regex is matched with ``re.fullmatch`` against the path; ``spec`` is a
      format name, a dict of :func:`quantize` keyword arguments including ``"fmt"`` (e.g. ``{"fmt": "int4",
      "axis": 0, "group_size": 128}``), or ``None`` to keep matching leaves in float. Leaves no rule matches and
      non-floating leaves stay as they are.

  Returns:
    The same structure with :class:`QArray` leaves where a rule quantized.

  Raises:
    ValueError: a rule whose regex matches no floating leaf (the message lists the paths), a bad spec, or any
      :func:`quantize` error, prefixed with the leaf's path.
  """
  def one(p, leaf, kw):
    kw = dict(kw)
    return quantize(leaf, kw.pop("fmt"), **kw)

  return _rules.map_rules(params, _rules.compile_rules(rules, _rule_kwargs), one, "quantize_params")


def dequantize_params(params: Any, dtype: Any = None) -> Any:
  """Replace every :class:`QArray` leaf by its dequantized array (``dtype`` default: the original dtype).
  Under ``jit`` the packed buffers are the inputs and the dequantization fuses into the consumer."""
  return jax.tree.map(lambda a: a.dequantize(dtype) if isinstance(a, QArray) else a, params,
                      is_leaf=lambda a: isinstance(a, QArray))
