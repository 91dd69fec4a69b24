"""Parity of paperlab.quant's OCP MX formats with torchao's MX reference (``torchao.prototype.mx_formats.mx_tensor
.to_mx``, torchao 0.18, ``ScaleCalculationMode.FLOOR``: the spec's ``floor(log2(amax)) - emax_elem`` scale, pure torch,
run here on CPU).

Same float32 inputs over a wide dynamic range (magnitudes 2^-30 .. 2^30, a different range per block, plus exact
ties and saturating values); tolerance: **bit-exact** E8M0 scale codes and element codes (FP4 also byte-exact in
torchao's packed layout, low nibble first). Known deliberate differences, excluded from the data: torchao divides
by ``max(X, 2^-126)`` when the scale code is 0 (blocks with amax below 2^(emax_elem - 126)), and maps an Inf block
to a huge finite scale, where the spec / microxcaling give a NaN scale (checked against the spec in
tests/quant/test_formats.py). MXINT8 is not in torchao (checked against hand-worked spec cases there).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import quant

torch = pytest.importorskip("torch")
mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
constants = pytest.importorskip("torchao.prototype.mx_formats.constants")

FORMATS = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4_e2m1"]


@functools.lru_cache(maxsize=None)
def _elem_dtype(fmt: str):
  return {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2,
          "mxfp6_e2m3": constants.DTYPE_FP6_E2M3, "mxfp6_e3m2": constants.DTYPE_FP6_E3M2,
          "mxfp4_e2m1": torch.float4_e2m1fn_x2}[fmt]


def _wide_range_data(seed: int, rows: int = 16, cols: int = 256) -> np.ndarray:
  rng = np.random.default_rng(seed)
  block_exp = rng.integers(-30, 31, size=(rows, cols // 32, 1))
  spread = np.exp2(rng.uniform(-6, 0, (rows, cols // 32, 32)))
  x = rng.standard_normal((rows, cols // 32, 32)) * np.exp2(block_exp) * spread
  x = x.reshape(rows, cols).astype(np.float32)
  x[0, :32] = 0.0  # an all-zero block
  x[1, :32] = np.float32(2.0 ** -3) * np.arange(32)  # exact grid points and ties
  x[2, 5] = -2.0 * np.abs(x[2, :32]).max()  # a negative block maximum
  return x


def _torchao_codes(x: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
  scale, data = mx_tensor.to_mx(torch.from_numpy(x), _elem_dtype(fmt), 32,
                                mx_tensor.ScaleCalculationMode.FLOOR)
  scale = scale.view(torch.uint8).numpy()
  if fmt.startswith("mxfp8"):
    data = data.view(torch.uint8)
  return scale, data.numpy()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("seed", [0, 1])
def test_mx_scales_and_elements_match_torchao_bit_exactly(fmt, seed):
  x = _wide_range_data(seed)
  ref_scale, ref_data = _torchao_codes(x, fmt)
  qa = quant.quantize(jnp.asarray(x), fmt, axis=-1)
  np.testing.assert_array_equal(np.asarray(qa.scales), ref_scale)
  codes = np.asarray(qa.codes())
  if fmt == "mxfp4_e2m1":
    np.testing.assert_array_equal(np.asarray(qa.values).reshape(ref_data.shape), ref_data)  # same packed bytes
    ref_codes = np.stack([ref_data & 0xF, ref_data >> 4], axis=-1).reshape(codes.shape)
  else:
    ref_codes = ref_data
  np.testing.assert_array_equal(codes, ref_codes)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mx_dequantized_values_match_torchao(fmt):
  x = _wide_range_data(2)
  mx = mx_tensor.MXTensor.to_mx(torch.from_numpy(x), _elem_dtype(fmt), 32)
  ref = mx.dequantize(torch.float32).numpy()
  got = np.asarray(quant.quantize(jnp.asarray(x), fmt).dequantize(jnp.float32))
  np.testing.assert_array_equal(got, ref)


def test_mx_blocks_run_along_the_requested_axis():
  x = _wide_range_data(3, rows=64, cols=32)  # blocks along axis 0 of x are the rows of x.T
  ref_scale, ref_data = _torchao_codes(np.ascontiguousarray(x.T), "mxfp8_e4m3")
  qa = quant.quantize(jnp.asarray(x), "mxfp8_e4m3", axis=0)
  np.testing.assert_array_equal(np.asarray(qa.scales).T, ref_scale)
  np.testing.assert_array_equal(np.asarray(qa.codes()).T, ref_data)
