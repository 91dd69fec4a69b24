"""Hypothesis properties of paperlab.quant: packing round-trips for every width 1..8 and odd lengths; round-to-
nearest integer quantization is within half a step of the input elementwise (the step being the stored scale);
OCP MX elements stay within +-max_normal, scales are powers of two, and values in the element's normal range keep a
relative error <= 2^-(m+1) (half an ulp of an m-bit mantissa)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from paperlab import quant
from paperlab.quant import formats

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(bits=st.integers(1, 8), n=st.sampled_from([1, 2, 3, 5, 7, 8, 9, 13, 31, 33, 67]), seed=st.integers(0, 2 ** 16),
       signed=st.booleans())
def test_pack_unpack_round_trip_for_every_width_and_length(bits, n, seed, signed):
  rng = np.random.default_rng(seed)
  if signed:
    codes = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), n).astype(np.int8)
  else:
    codes = rng.integers(0, 2 ** bits, n).astype(np.uint8)
  packed = quant.pack_bits(jnp.asarray(codes), bits)
  assert packed.shape == (-(-n * bits // 8),)
  np.testing.assert_array_equal(np.asarray(quant.unpack_bits(packed, bits, n, signed=signed)), codes)


def _wide(draw, shape, lo=-12, hi=12):
  mant = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32, allow_subnormal=False)))
  exps = draw(hnp.arrays(np.int32, shape, elements=st.integers(lo, hi)))
  return (mant * np.exp2(exps)).astype(np.float32)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(data=st.data(), bits=st.integers(2, 8), symmetric=st.booleans(), group=st.sampled_from([8, 32]),
       scale_dtype=st.sampled_from([jnp.bfloat16, jnp.float32]))
def test_rtn_error_is_within_half_a_step_elementwise(data, bits, symmetric, group, scale_dtype):
  x = _wide(data.draw, (4, 32), -6, 6)
  qa = quant.quantize(jnp.asarray(x), f"int{bits}", axis=-1, group_size=group, symmetric=symmetric,
                      scale_dtype=scale_dtype)
  step = np.repeat(np.asarray(qa.scales, np.float32), group, axis=-1)
  err = np.abs(np.asarray(qa.dequantize(jnp.float32)) - x)
  # half a step, plus float32 rounding of x / step and of code * step (a few ulps of |x|)
  assert np.all(err <= 0.5 * step * (1 + 1e-6) + 4 * np.finfo(np.float32).eps * np.abs(x)), err.max()


MX_FLOAT = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1"]


@SETTINGS
@given(data=st.data(), fmt=st.sampled_from(MX_FLOAT))
def test_mx_elements_bounded_scales_power_of_two_and_relative_error_in_normal_range(data, fmt):
  f = formats.get_format(fmt)
  x = _wide(data.draw, (2, 64), -30, 30)
  qa = quant.quantize(jnp.asarray(x), fmt)
  elems = np.asarray(formats.decode_float(qa.codes(), fmt))
  assert np.all(np.abs(elems) <= f.max_norm)
  scale = np.asarray(qa.scales).view(ml_dtypes.float8_e8m0fnu).astype(np.float64)  # E8M0: 2^(code - 127)
  np.testing.assert_array_equal(np.log2(scale), np.round(np.log2(scale)))
  v = x / np.repeat(scale, 32, axis=-1)  # exact: power-of-two scaling in float64
  normal = (np.abs(v) >= 2.0 ** (1 - f.bias)) & (np.abs(v) <= f.max_norm)
  d = np.asarray(qa.dequantize(jnp.float32), np.float64)
  rel = np.abs(d - x)[normal] / np.abs(x)[normal]
  assert np.all(rel <= 2.0 ** -(f.mbits + 1)), rel.max()
