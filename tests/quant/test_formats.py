"""Element and MX encodings against bit patterns worked out by hand from the specifications (not from our code):
OFP8 v1.0 (E4M3: bias 7, S.1111.111 is NaN, max normal S.1111.110 = 448; E5M2: bias 15, max normal S.11110.11 =
57344), OCP MX v1.0 section 5.3 (FP6 E2M3: bias 1, max 7.5; FP6 E3M2: bias 3, max 28; FP4 E2M1: bias 1, max 6;
MXINT8: 2's complement int8 with implicit scale 2^-6) and section 6.3 (shared scale ``floor(log2(amax)) -
emax_elem``, E8M0 bias 127, 0xFF = NaN; elements rounded to nearest even, saturating to max normal), and the QLoRA
NF4 code book (bitsandbytes ``create_normal_map``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import quant
from paperlab.quant import formats

# (format, value, code) with the code derived as sign | biased exponent | mantissa, by hand.
HAND_CASES = [
    ("fp8_e4m3", 1.0, 0b0_0111_000), ("fp8_e4m3", -2.0, 0b1_1000_000), ("fp8_e4m3", 448.0, 0b0_1111_110),
    ("fp8_e4m3", 1e6, 0b0_1111_110),  # saturation to max normal, never the NaN code 0x7f
    ("fp8_e4m3", 2.0 ** -9, 0b0_0000_001),  # smallest subnormal: 2^(1-7) * 1/8
    ("fp8_e4m3", 2.0 ** -10, 0b0_0000_000),  # half the smallest subnormal: tie -> even (0)
    ("fp8_e4m3", 3 * 2.0 ** -10, 0b0_0000_010),  # 1.5 subnormal steps: tie -> even mantissa 2
    ("fp8_e4m3", 7 * 2.0 ** -9, 0b0_0000_111),  # largest subnormal
    ("fp8_e4m3", 2.0 ** -6, 0b0_0001_000),  # smallest normal
    ("fp8_e4m3", 1.0625, 0b0_0111_000),  # 1 + 1/16: tie between 1 and 1.125 -> even (1)
    ("fp8_e4m3", 1.1875, 0b0_0111_010),  # 1 + 3/16: tie between 1.125 and 1.25 -> even (1.25)
    ("fp8_e4m3", -0.0, 0b1_0000_000),
    ("fp8_e5m2", 1.0, 0b0_01111_00), ("fp8_e5m2", 57344.0, 0b0_11110_11), ("fp8_e5m2", 1e9, 0b0_11110_11),
    ("fp8_e5m2", 2.0 ** -16, 0b0_00000_01), ("fp8_e5m2", 2.0 ** -14, 0b0_00001_00),
    ("fp6_e2m3", 1.0, 0b0_01_000), ("fp6_e2m3", 7.5, 0b0_11_111), ("fp6_e2m3", 100.0, 0b0_11_111),
    ("fp6_e2m3", 0.125, 0b0_00_001), ("fp6_e2m3", 0.0625, 0b0_00_000), ("fp6_e2m3", 0.875, 0b0_00_111),
    ("fp6_e2m3", -3.25, 0b1_10_101),
    ("fp6_e3m2", 1.0, 0b0_011_00), ("fp6_e3m2", 28.0, 0b0_111_11), ("fp6_e3m2", 0.0625, 0b0_000_01),
    ("fp6_e3m2", 0.25, 0b0_001_00), ("fp6_e3m2", 30.0, 0b0_111_11),
    ("fp4_e2m1", 0.5, 0b0_00_1), ("fp4_e2m1", 0.25, 0b0_00_0), ("fp4_e2m1", 0.75, 0b0_01_0),
    ("fp4_e2m1", 2.5, 0b0_10_0), ("fp4_e2m1", 5.0, 0b0_11_0), ("fp4_e2m1", 6.0, 0b0_11_1),
    ("fp4_e2m1", 7.0, 0b0_11_1), ("fp4_e2m1", -1.5, 0b1_01_1), ("fp4_e2m1", -0.0, 0b1_00_0),
]


@pytest.mark.parametrize("fmt,value,code", HAND_CASES)
def test_element_encoding_matches_the_hand_worked_bits(fmt, value, code):
  assert int(formats.encode_float(jnp.float32(value), fmt)) == code


def _block(values, fill=0.0):
  b = np.full(32, fill, np.float32)
  b[:len(values)] = values
  return jnp.asarray(b)


def test_mxfp4_block_scale_is_floor_log2_amax_minus_emax():
  # amax 3 -> floor(log2 3) = 1, emax(E2M1) = 2 -> X = 2^-1 (E8M0 code 126); 3/X = 6 -> 0b0111;
  # 0.1/X = 0.2 rounds to 0; 0.2/X = 0.4 rounds to the subnormal 0.5 -> 0b0001; -1.25/X = -2.5 ties to -2 -> 0b1100
  qa = quant.quantize(_block([3.0, 0.1, 0.2, -1.25]), "mxfp4_e2m1")
  assert int(qa.scales[0]) == 126
  np.testing.assert_array_equal(np.asarray(qa.codes())[:4], [0b0111, 0b0000, 0b0001, 0b1100])
  np.testing.assert_array_equal(np.asarray(qa.dequantize())[:4], [3.0, 0.0, 0.25, -1.0])


def test_mx_elements_saturate_to_max_normal():
  # amax 7.9: floor(log2) = 2, X = 2^(2-2) = 1; 7.9 exceeds E2M1's max normal 6 -> saturates (0b0111)
  qa = quant.quantize(_block([7.9, -7.0]), "mxfp4_e2m1")
  assert int(qa.scales[0]) == 127
  np.testing.assert_array_equal(np.asarray(qa.codes())[:2], [0b0111, 0b1111])
  # MXFP8 E4M3: amax 500 -> X = 2^(8-8) = 1; 500 saturates to 448 (S.1111.110), not NaN
  qa = quant.quantize(_block([500.0]), "mxfp8_e4m3")
  assert int(qa.scales[0]) == 127 and int(qa.codes()[0]) == 0b0_1111_110


def test_mx_subnormal_elements():
  # amax 448 -> X = 1: 2^-9 is E4M3's smallest subnormal, 2^-10 ties to zero
  qa = quant.quantize(_block([448.0, 2.0 ** -9, 2.0 ** -10, -(2.0 ** -9)]), "mxfp8_e4m3")
  np.testing.assert_array_equal(np.asarray(qa.codes())[:4], [0b0_1111_110, 0b0_0000_001, 0, 0b1_0000_001])


def test_mx_scale_clamps_to_the_e8m0_range():
  # amax 2^-120 in E4M3: -120 - 8 = -128 clamps to -127 (code 0); the element is 2^-120 / 2^-127 = 128 = S.1110.000
  qa = quant.quantize(_block([2.0 ** -120]), "mxfp8_e4m3")
  assert int(qa.scales[0]) == 0 and int(qa.codes()[0]) == 0b0_1110_000
  # amax 1.5 * 2^127 in MXINT8 (emax 0): shared exponent 127 -> code 254; the element is 1.5 * 64 = 96
  qa = quant.quantize(_block([1.5 * 2.0 ** 127]), "mxint8")
  assert int(qa.scales[0]) == 254 and int(qa.codes()[0]) == 96


def test_all_zero_block_has_the_smallest_scale_and_zero_elements():
  qa = quant.quantize(jnp.zeros(64), "mxfp6_e3m2")
  np.testing.assert_array_equal(np.asarray(qa.scales), [0, 0])
  np.testing.assert_array_equal(np.asarray(qa.codes()), np.zeros(64))
  np.testing.assert_array_equal(np.asarray(qa.dequantize()), np.zeros(64))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp4_e2m1", "mxint8"])
def test_nan_or_inf_block_gets_the_nan_scale_and_dequantizes_to_nan(fmt, bad):
  x = np.ones(64, np.float32)
  x[40] = bad  # second block only
  qa = quant.quantize(jnp.asarray(x), fmt)
  np.testing.assert_array_equal(np.asarray(qa.scales), [127 - qa.format.emax, 0xFF])
  d = np.asarray(qa.dequantize())
  assert np.isnan(d[32:]).all() and np.array_equal(d[:32], np.ones(32))


def test_mxint8_is_int8_fixed_point_with_round_half_even_and_saturation():
  # amax 1 -> shared exponent 0 (code 127): V * 64 rounded half to even, saturating at +-127
  qa = quant.quantize(_block([1.0, 1.5 / 64, 2.5 / 64, -1.0 / 128, 1.999]), "mxint8")
  assert int(qa.scales[0]) == 127
  np.testing.assert_array_equal(np.asarray(qa.codes())[:5], [64, 2, 2, 0, 127])
  qa = quant.quantize(_block([-1.999]), "mxint8")
  assert int(qa.codes()[0]) == -127  # -1.999 * 64 = -127.9 saturates to -127 (never -128)


def test_nf4_code_book_is_bitsandbytes_create_normal_map():
  # Transcription of bitsandbytes/functional.py create_normal_map(offset=0.9677083, use_extra_value=True)
  # (bitsandbytes-foundation/bitsandbytes), computed with scipy's normal quantiles.
  from scipy.stats import norm

  offset = 0.9677083
  v1 = norm.ppf(np.linspace(offset, 0.5, 9)[:-1]).tolist()
  v3 = (-norm.ppf(np.linspace(offset, 0.5, 8)[:-1])).tolist()
  v = np.sort(np.array(v1 + [0.0] + v3))
  # bitsandbytes normalizes a float32 tensor: agreement to a few float32 ulps (3e-7 absolute).
  np.testing.assert_allclose(formats.NF4_CODE, v / np.abs(v).max(), rtol=0, atol=3e-7)


def test_nf4_picks_the_nearest_code_of_x_over_the_block_absmax():
  x = np.linspace(-1, 1, 64).astype(np.float32) * 3
  qa = quant.quantize(jnp.asarray(x), "nf4", scale_dtype=jnp.float32)
  assert float(qa.scales[0]) == 3.0
  expect = np.abs(x[:, None] / 3.0 - formats.NF4_CODE[None, :]).argmin(1)
  np.testing.assert_array_equal(np.asarray(qa.codes()), expect)


def test_unknown_format_lists_the_accepted_names():
  with pytest.raises(ValueError, match=r"fmt must be one of .*'int4'.*'mxfp4_e2m1'.*got 'int9'"):
    formats.get_format("int9")
  with pytest.raises(ValueError, match="got 'int1'"):
    quant.quantize(jnp.ones(8), "int1")
