"""BitMoD: a mixture of low-bit datatypes, one chosen per weight group (Chen et al., "BitMoD: Bit-serial
Mixture-of-Datatype LLM Acceleration", HPCA 2025, arXiv:2411.11745).

Low-bit floating point wastes one code on ``-0``. BitMoD gives that code a *special value*: FP3 (the levels
``{0, +-1, +-2, +-4}``) gains one of ``+-3`` ("extra resolution", ER) or ``+-6`` ("extra asymmetry", EA); FP4 E2M1
(``{0, +-0.5, ..., +-6}``) gains one of ``+-5`` (ER) or ``+-8`` (EA). That makes four same-width datatypes per
width, and every group of ``group_size`` weights (128 in the paper) is quantized with each of them and keeps the
one with the smallest mean squared error; a 2-bit type id is stored beside the group's scale (Sec. IV-A, IV-B).

Per datatype with (sorted) values ``v`` and ``qmax = max|v|``, a group ``w`` is quantized as the official code
does (``bitmod_quant/quant_utils/quant_weight.py``, ``quant_datatype`` and ``search_datatype``, repository
abdelfattah-lab/BitMoD-HPCA-25 at commit e445a5f): ``scale = max|w| / qmax``; ``x = w / scale``; ``x`` goes to the
nearest value of ``v``, a tie to the lower one (``x <= mid`` of two neighbours picks the lower); ``w_hat = v[code]
* scale``; the group keeps the datatype of smallest ``mean((w_hat - w)^2)``, the first of the menu on ties. The
value tables below are the official ones (the FP4 tables in units of 0.5, as printed there, i.e. twice
``ml_dtypes.float4_e2m1fn``'s values; a uniform factor of a table changes nothing because the scale divides it
out).

Differences from the official code: everything is computed in float32 (the official casts to float16); the scale
is rounded to ``scale_dtype`` (bfloat16 by default, the 16-bit scale of the paper's hardware, or float32) *before* the codes are computed, so the stored tensor dequantizes to exactly
the values whose error was measured; an all-zero group gets scale 1 (the official clamps the scale to ``[1e-5,
1e4]``, which only differs for groups below ``1e-5`` or above ``1e4`` in magnitude); XLA compiles the divisions by
``qmax`` and by the scale as multiplications by reciprocals, so scales and values may differ from the official
float32 arithmetic by an ulp.

Layout: a Flax kernel ``(in, out)`` grouped along the input (reduction) axis, as :func:`paperlab.quant.quantize_rtn`
(the official PyTorch ``(out, in)`` weight grouped along its last axis is the same grouping).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.quant.packing import pack_bits, unpack_bits
from paperlab.quant.rtn import check_group_size, check_kernel

__all__ = ["BITMOD_DATATYPES", "BITMOD_MENU", "BitMoDTensor", "datatype_grid", "datatype_errors",
           "quantize_datatype", "mixture_of_datatypes"]

# The value tables of the official bitmod_quant/quant_utils/quant_weight.py (abdelfattah-lab/BitMoD-HPCA-25,
# commit e445a5f31100a5057b4c5c4373da223ce95f1c3b), lines "3-bit Datatypes" and "4-bit Datatypes".
BITMOD_DATATYPES: dict[str, tuple[float, ...]] = {
    "int3": (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0),
    "fp3": (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
    "fp3_er_pos": (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0),
    "fp3_er_neg": (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
    "fp3_ea_pos": (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0),
    "fp3_ea_neg": (-6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0),
    "int4": tuple(float(i) for i in range(-7, 8)),
    "flint4": (-16.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0),
    "fp4": (-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
    "fp4_er_pos": (-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0),
    "fp4_er_neg": (-12.0, -10.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
    "fp4_ea_pos": (-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0),
    "fp4_ea_neg": (-16.0, -12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
}
"""Datatype name -> its representable values (ascending) in the official code's units."""

BITMOD_MENU: dict[int, tuple[str, ...]] = {
    3: ("fp3_er_pos", "fp3_er_neg", "fp3_ea_pos", "fp3_ea_neg"),
    4: ("fp4_er_pos", "fp4_er_neg", "fp4_ea_pos", "fp4_ea_neg"),
}
"""The BitMoD menu per bit width (the official ``search_datatype(..., datatype="mixed_bitmod")`` lists)."""


def datatype_grid(name: str) -> jax.Array:
  """The representable values of a BitMoD datatype, ascending, as ``float32`` (BitMoD, arXiv:2411.11745, Table II;
  the official tables of :data:`BITMOD_DATATYPES`).

  Args:
    name: a key of :data:`BITMOD_DATATYPES` (``"fp3"``, ``"fp3_er_pos"``, ``"fp4_ea_neg"``, ``"int4"``, ...).

  Returns:
    1-D ``float32`` array of the values (7 or 8 values for 3-bit types, 15 or 16 for 4-bit types).

  Raises:
    ValueError: unknown ``name``.
  """
  return jnp.asarray(_table(name))


def _table(name: Any) -> np.ndarray:
  if not isinstance(name, str) or name not in BITMOD_DATATYPES:
    raise ValueError(f"datatype must be one of {list(BITMOD_DATATYPES)}, got {name!r}.")
  return np.asarray(BITMOD_DATATYPES[name], np.float32)


def _bits_of(name: str) -> int:
  return max(1, math.ceil(math.log2(len(BITMOD_DATATYPES[name]))))


def _check_menu(menu: Any) -> tuple[str, ...]:
  if isinstance(menu, str) or not isinstance(menu, Sequence) or len(menu) == 0:
    raise ValueError(f"menu must be a non-empty sequence of datatype names from {list(BITMOD_DATATYPES)}, "
                     f"got {menu!r}.")
  menu = tuple(menu)
  for name in menu:
    _table(name)
  if len(set(menu)) != len(menu):
    raise ValueError(f"menu must not repeat a datatype, got {menu!r}.")
  widths = {name: _bits_of(name) for name in menu}
  if len(set(widths.values())) > 1:
    raise ValueError(f"menu must hold datatypes of one bit width, got widths {widths}.")
  return menu


def _check_scale_dtype(scale_dtype: Any) -> jnp.dtype:
  try:
    dt = jnp.dtype(scale_dtype)
  except TypeError:
    dt = None
  if dt is None or dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise ValueError(f"scale_dtype must be one of float32, bfloat16, float16, got {scale_dtype!r}.")
  return dt


# ----------------------------------------------------------------------------------------------------------------
# the container


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class BitMoDTensor:
  """A kernel ``(in, out)`` quantized with one datatype of a menu per group of ``group_size`` input rows.

  Attributes:
    values: 1-D ``uint8`` stream of the densely packed element codes (indices into the group's datatype table,
      ``bits`` bits each), the kernel's elements in row-major order.
    scales: per-group scales, shape ``(in // group_size, out)``, in the ``scale_dtype`` they were rounded to.
    type_ids: 1-D ``uint8`` stream of the packed per-group type ids (``ceil(log2(len(datatypes)))`` bits each, at
      least 1), groups in row-major ``(in // group_size, out)`` order.
    datatypes: the menu (static), names of :data:`BITMOD_DATATYPES`.
    shape: ``(in, out)``.
    group_size: input rows per group.
    dtype: name of the dtype :meth:`dequantize` returns by default.
  """

  values: jax.Array
  scales: jax.Array
  type_ids: jax.Array
  datatypes: tuple[str, ...]
  shape: tuple[int, int]
  group_size: int
  dtype: str

  def tree_flatten(self):
    return (self.values, self.scales, self.type_ids), (self.datatypes, self.shape, self.group_size, self.dtype)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(*children, *aux)

  @property
  def bits(self) -> int:
    """Bits per element code."""
    return _bits_of(self.datatypes[0])

  @property
  def id_bits(self) -> int:
    """Bits per stored type id."""
    return max(1, math.ceil(math.log2(len(self.datatypes))))

  @property
  def num_groups(self) -> int:
    return self.shape[0] // self.group_size

  @property
  def nbytes(self) -> int:
    """Bytes of the stored buffers (packed codes + scales + packed type ids), from their shapes and dtypes."""
    return sum(int(np.prod(a.shape, dtype=np.int64)) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(self))

  def codes(self) -> jax.Array:
    """``uint8`` element codes, shape ``(in, out)``."""
    return unpack_bits(self.values, self.bits, self.shape[0] * self.shape[1]).reshape(self.shape)

  def type_id(self) -> jax.Array:
    """``int32`` index into :attr:`datatypes` of each group, shape ``(in // group_size, out)``."""
    n = self.num_groups * self.shape[1]
    return unpack_bits(self.type_ids, self.id_bits, n).reshape(self.num_groups, self.shape[1]).astype(jnp.int32)

  def dequantize(self, dtype: Any = None) -> jax.Array:
    """``table[type_id][code] * scale`` as ``dtype`` (default: the quantized input's dtype). Jittable."""
    dtype = jnp.dtype(self.dtype if dtype is None else dtype)
    tables = _padded_tables(self.datatypes, self.bits)  # (M, 2^bits)
    ids = jnp.repeat(self.type_id(), self.group_size, axis=0)  # (in, out)
    v = jnp.asarray(tables)[ids, self.codes().astype(jnp.int32)]
    s = jnp.repeat(self.scales.astype(jnp.float32), self.group_size, axis=0)
    return (v * s).astype(dtype)


@functools.lru_cache(maxsize=None)
def _padded_tables(menu: tuple[str, ...], bits: int) -> np.ndarray:
  out = np.zeros((len(menu), 2 ** bits), np.float32)
  for i, name in enumerate(menu):
    t = _table(name)
    out[i, :t.size] = t
  return out


# ----------------------------------------------------------------------------------------------------------------
# quantization


def _one_datatype(wg: jax.Array, name: str, scale_dtype) -> tuple[jax.Array, ...]:
  """Groups ``wg`` ``(G, g, out)`` onto datatype ``name``: ``(codes, w_hat, scale (G, out), mse (G, out))``.

  XLA compiles ``a / b`` with a broadcast or constant ``b`` as ``a * (1 / b)``, so the scale and ``x`` may differ
  from the official divisions by an ulp (the parity test's tolerance)."""
  v = _table(name)
  mids = jnp.asarray((v[1:] + v[:-1]) / 2)
  rmax = jnp.max(jnp.abs(wg), axis=1)
  scale = rmax / np.float32(np.max(np.abs(v)))
  scale = jnp.where(rmax > 0, scale, 1.0).astype(scale_dtype).astype(jnp.float32)
  x = wg / scale[:, None]
  codes = jnp.searchsorted(mids, x, side="left")  # #mids strictly below x: a tie goes to the lower value
  w_hat = jnp.asarray(v)[codes] * scale[:, None]
  return codes, w_hat, scale, jnp.mean(jnp.square(w_hat - wg), axis=1)


@functools.partial(jax.jit, static_argnames=("menu", "group_size", "scale_dtype"))
def _mixture(w: jax.Array, menu: tuple[str, ...], group_size: int, scale_dtype) -> tuple:
  wg = w.astype(jnp.float32).reshape(w.shape[0] // group_size, group_size, w.shape[1])
  per_type = [_one_datatype(wg, name, scale_dtype) for name in menu]
  codes, w_hat, scale, err = (jnp.stack(t) for t in zip(*per_type))  # leading axis: the menu
  best = jnp.argmin(err, axis=0)  # (G, out): the first of the menu on ties, as the official strict "<" update
  pick = lambda a: jnp.take_along_axis(a, best[None, :, None, :] if a.ndim == 4 else best[None], axis=0)[0]
  return pick(codes), pick(w_hat).reshape(w.shape), pick(scale), best, err


def datatype_errors(w: jax.Array, menu: Sequence[str], *, group_size: int | None = 128,
                    scale_dtype: Any = jnp.bfloat16) -> jax.Array:
  """Per-group mean squared quantization error of each datatype of ``menu`` (BitMoD, arXiv:2411.11745, Sec. IV-B,
  the error the per-group selection minimizes: ``mean_group (Q_d(w) - w)^2``).

  Args:
    w: kernel ``(in, out)``, floating, finite.
    menu: datatype names of one bit width (keys of :data:`BITMOD_DATATYPES`).
    group_size: input rows per group (paper: 128); ``None`` for one group per output channel.
    scale_dtype: dtype the per-group scale is rounded to before the codes are computed.

  Returns:
    ``float32`` array ``(len(menu), in // group_size, out)``. Jittable with the keyword arguments static.
  """
  w = check_kernel("w", w)
  menu = _check_menu(menu)
  g = check_group_size(group_size, w.shape[0])
  return _mixture(w, menu, g, _check_scale_dtype(scale_dtype))[-1]


def mixture_of_datatypes(w: jax.Array, *, bits: int = 4, group_size: int | None = 128,
                         menu: Sequence[str] | None = None, scale_dtype: Any = jnp.bfloat16) -> BitMoDTensor:
  """Quantize a kernel with BitMoD's mixture of datatypes (Chen et al., arXiv:2411.11745, Sec. IV).

  Every group of ``group_size`` input rows of one output column is quantized with each datatype of ``menu``
  (absmax scale ``max|w| / max|v|``, nearest value) and keeps the one with the smallest mean squared error
  ``mean((w_hat - w)^2)``; see the module docstring for the exact rounding and the official code it follows.

  Args:
    w: kernel ``(in, out)``, floating, finite.
    bits: 3 or 4; selects the default menu :data:`BITMOD_MENU` ``[bits]`` (FP3/FP4 with the ER+/ER-/EA+/EA-
      special values). Ignored when ``menu`` is given (its width must then equal ``bits``).
    group_size: input rows per group (paper: 128); ``None`` (or ``-1`` / ``in``) for one group per output channel.
    menu: datatype names of one bit width (keys of :data:`BITMOD_DATATYPES`); one name quantizes every group with
      that datatype (see :func:`quantize_datatype`).
    scale_dtype: float32, bfloat16 (default) or float16: the stored per-group scale.

  Returns:
    :class:`BitMoDTensor`; ``.dequantize()`` is the quantized kernel. Jittable with the keyword arguments static.

  Raises:
    ValueError: ``bits`` not 3 or 4 (without a menu), a menu of unknown or mixed-width datatypes or of another
      width than ``bits``, a ``group_size`` that does not divide ``in``, non-finite or non-2-D ``w``.
  """
  w = check_kernel("w", w)
  if menu is None:
    if isinstance(bits, bool) or bits not in BITMOD_MENU:
      raise ValueError(f"bits must be one of {sorted(BITMOD_MENU)} (or pass a menu), got {bits!r}.")
    menu = BITMOD_MENU[bits]
  menu = _check_menu(menu)
  if bits is not None and _bits_of(menu[0]) != bits:
    raise ValueError(f"bits={bits!r} does not match the menu's width {_bits_of(menu[0])} ({menu!r}).")
  g = check_group_size(group_size, w.shape[0])
  sdt = _check_scale_dtype(scale_dtype)
  codes, _, scale, best, _ = _mixture(w, menu, g, sdt)
  id_bits = max(1, math.ceil(math.log2(len(menu))))
  return BitMoDTensor(values=pack_bits(codes.reshape(-1), _bits_of(menu[0])), scales=scale.astype(sdt),
                      type_ids=pack_bits(best.reshape(-1), id_bits), datatypes=menu, shape=tuple(w.shape),
                      group_size=g, dtype=jnp.dtype(w.dtype).name)


def quantize_datatype(w: jax.Array, datatype: str, *, group_size: int | None = 128,
                      scale_dtype: Any = jnp.bfloat16) -> BitMoDTensor:
  """Quantize every group of a kernel with one datatype of :data:`BITMOD_DATATYPES` (the single-type baselines of
  BitMoD, arXiv:2411.11745, e.g. FP3, FP4, INT4 with an absmax scale; the official ``quant_datatype``).

  Args:
    w: kernel ``(in, out)``, floating, finite.
    datatype: a key of :data:`BITMOD_DATATYPES`.
    group_size: input rows per group; ``None`` for one group per output channel.
    scale_dtype: float32, bfloat16 (default) or float16.

  Returns:
    :class:`BitMoDTensor` with a one-datatype menu.

  Raises:
    ValueError: as :func:`mixture_of_datatypes`.
  """
  _table(datatype)
  return mixture_of_datatypes(w, bits=_bits_of(datatype), group_size=group_size, menu=(datatype,),
                              scale_dtype=scale_dtype)
