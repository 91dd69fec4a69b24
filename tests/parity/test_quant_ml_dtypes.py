"""Parity of paperlab.quant's float element encoders and scaled FP formats with ``ml_dtypes`` 0.7 casts
(``np.asarray(x, np.float32).astype(ml_dtypes.<type>)``, roundTiesToEven; sub-byte types stored one per byte).

Inputs: every representable value, every midpoint between neighbours (the ties), the floats just above and below
each midpoint, and random values over 2^-40 .. 2^20, all within +-max_normal (above it paperlab saturates as
the MX spec requires, while an ml_dtypes cast overflows to Inf/NaN for the FP8 types). Tolerance: bit-exact codes.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from paperlab import quant
from paperlab.quant import formats

ELEMENTS = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2,
            "fp6_e2m3": ml_dtypes.float6_e2m3fn, "fp6_e3m2": ml_dtypes.float6_e3m2fn,
            "fp4_e2m1": ml_dtypes.float4_e2m1fn}


def _probe_values(dt, bits: int, max_norm: float, seed: int = 0) -> np.ndarray:
  table = np.arange(2 ** bits, dtype=np.uint8).view(dt).astype(np.float32)
  grid = np.unique(table[np.isfinite(table)])
  mids = ((grid[1:].astype(np.float64) + grid[:-1]) / 2).astype(np.float32)
  rng = np.random.default_rng(seed)
  rand = (rng.standard_normal(20000) * np.exp2(rng.uniform(-40, 20, 20000))).astype(np.float32)
  x = np.concatenate([grid, mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf)),
                      rand, np.float32([0.0, -0.0])]).astype(np.float32)
  return x[np.abs(x) <= max_norm]


@pytest.mark.parametrize("name", list(ELEMENTS))
def test_element_codes_match_ml_dtypes_casts(name):
  dt = ELEMENTS[name]
  f = formats.get_format(name)
  x = _probe_values(dt, f.bits, f.max_norm)
  ref = x.astype(dt).view(np.uint8) & np.uint8(2 ** f.bits - 1)
  got = np.asarray(formats.encode_float(jnp.asarray(x), name))
  np.testing.assert_array_equal(got, ref)
  decoded = np.asarray(formats.decode_float(jnp.asarray(got), name))
  np.testing.assert_array_equal(decoded, x.astype(dt).astype(np.float32))


@pytest.mark.parametrize("name", list(ELEMENTS))
def test_scaled_fp_quantize_is_the_ml_dtypes_cast_of_x_over_its_scale(name):
  dt = ELEMENTS[name]
  rng = np.random.default_rng(1)
  x = (rng.standard_normal((8, 64)) * np.exp2(rng.integers(-8, 8, (8, 1)))).astype(np.float32)
  qa = quant.quantize(jnp.asarray(x), name, axis=-1, group_size=32, scale_dtype=jnp.float32)
  s = np.repeat(np.asarray(qa.scales, np.float32), 32, axis=-1)
  ref = (x / s).astype(dt)
  np.testing.assert_array_equal(np.asarray(qa.codes()), ref.view(np.uint8) & np.uint8(2 ** qa.bits - 1))
  np.testing.assert_array_equal(np.asarray(qa.dequantize()), ref.astype(np.float32) * s)


def test_nan_codes_match_ml_dtypes_where_the_format_has_nan():
  for name in ("fp8_e4m3", "fp8_e5m2"):
    x = np.float32([np.nan, -np.nan])
    ref = x.astype(ELEMENTS[name]).view(np.uint8)
    got = np.asarray(formats.encode_float(jnp.asarray(x), name))
    assert np.isnan(np.asarray(formats.decode_float(jnp.asarray(got), name))).all()
    np.testing.assert_array_equal(got & 0x7F, ref & 0x7F)


def test_mx_scale_codes_are_ml_dtypes_e8m0_powers_of_two():
  rng = np.random.default_rng(2)
  x = (rng.standard_normal((4, 128)) * np.exp2(rng.integers(-60, 60, (4, 1)))).astype(np.float32)
  qa = quant.quantize(jnp.asarray(x), "mxfp6_e3m2")
  scale = np.asarray(qa.scales).view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
  amax = np.abs(x.reshape(4, 4, 32)).max(-1)
  np.testing.assert_array_equal(scale, np.exp2(np.floor(np.log2(amax.astype(np.float64))) - 4))
