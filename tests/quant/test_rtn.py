"""RTN on GPTQ's min-max integer grid: codes, shapes, dtypes, jit, the half-step bound and the errors."""

from __future__ import annotations

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab.quant import rtn


def _w(shape=(64, 8), seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits,group_size", [(4, None), (3, 16), (8, 32), (2, 64)])
def test_codes_scales_and_zero_points_reconstruct_the_dequantized_kernel(bits, group_size, symmetric):
  w = _w()
  q = rtn.quantize_rtn(w, bits=bits, group_size=group_size, symmetric=symmetric)
  g = group_size or 64
  assert q.codes.dtype == jnp.uint8 and q.codes.shape == w.shape
  assert q.scale.shape == q.zero.shape == (64 // g, 8)
  assert int(q.codes.max()) <= 2 ** bits - 1
  deq = q.scale[q.g_idx] * (q.codes.astype(jnp.float32) - q.zero[q.g_idx])
  np.testing.assert_array_equal(deq, q.w_hat)
  if symmetric:
    np.testing.assert_array_equal(q.zero, 2.0 ** (bits - 1))
  np.testing.assert_array_equal(q.zero, jnp.round(q.zero))


def test_zero_is_exactly_representable_and_an_all_zero_group_stays_zero():
  w = _w().at[:16, 0].set(0.0)
  q = rtn.quantize_rtn(w, bits=3, group_size=16)
  assert np.all(np.asarray(q.w_hat[:16, 0]) == 0)
  assert np.all(np.isfinite(np.asarray(q.scale)))


def test_dtype_is_kept_and_jit_matches_eager():
  w = _w(dtype=jnp.bfloat16)
  eager = rtn.fake_quantize_rtn(w, bits=4, group_size=32)
  jitted = jax.jit(functools.partial(rtn.fake_quantize_rtn, bits=4, group_size=32))(w)
  assert eager.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(eager, np.float32), np.asarray(jitted, np.float32))


def test_vmap_over_a_stack_of_kernels():
  ws = jnp.stack([_w(seed=i) for i in range(3)])
  out = jax.vmap(functools.partial(rtn.fake_quantize_rtn, bits=4, group_size=16))(ws)
  np.testing.assert_array_equal(out[1], rtn.fake_quantize_rtn(ws[1], bits=4, group_size=16))


@hypothesis.given(
    w=hnp.arrays(np.float32, (32, 3), elements=st.floats(-100, 100, width=32)),
    bits=st.integers(2, 8), symmetric=st.booleans(), group_size=st.sampled_from([None, 8, 16]))
def test_rtn_error_is_within_half_a_step(w, bits, symmetric, group_size):
  q = rtn.quantize_rtn(jnp.asarray(w), bits=bits, group_size=group_size, symmetric=symmetric)
  step = np.asarray(q.scale)[np.asarray(q.g_idx)]
  err = np.abs(np.asarray(q.w_hat) - w)
  # every weight lies inside its group's grid range (min-max grid), so rounding is the only error
  assert np.all(err <= 0.5 * step * (1 + 1e-5) + 1e-6)


@pytest.mark.parametrize("bits", [1, 9, 4.0, "int4", True])
def test_unsupported_bits_are_rejected(bits):
  with pytest.raises(ValueError, match="bits must be one of"):
    rtn.quantize_rtn(_w(), bits=bits)


@pytest.mark.parametrize("group_size", [24, 0, -3, 2.5])
def test_group_sizes_that_do_not_divide_the_input_axis_are_rejected(group_size):
  with pytest.raises(ValueError, match="group_size"):
    rtn.quantize_rtn(_w(), bits=4, group_size=group_size)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_weights_are_rejected(bad):
  with pytest.raises(ValueError, match="w must be finite"):
    rtn.quantize_rtn(_w().at[3, 2].set(bad), bits=4)


def test_shape_and_dtype_errors():
  with pytest.raises(ValueError, match="2-D kernel"):
    rtn.quantize_rtn(jnp.ones(8), bits=4)
  with pytest.raises(TypeError, match="floating dtype"):
    rtn.quantize_rtn(jnp.ones((8, 2), jnp.int32), bits=4)
  with pytest.raises(ValueError, match="clip_max must have shape"):
    rtn.quantize_rtn(_w(), bits=4, group_size=16, clip_max=jnp.ones((3, 8)))


@pytest.mark.parametrize("symmetric", [False, True])
def test_to_qarray_packs_the_codes_and_dequantizes_bit_for_bit(symmetric):
  q = rtn.quantize_rtn(_w((128, 8)), bits=3, group_size=32, symmetric=symmetric)
  qa = rtn.to_qarray(q, 3)
  np.testing.assert_array_equal(np.asarray(qa.dequantize(jnp.float32)), np.asarray(q.w_hat))
  assert qa.values.nbytes == 128 * 8 * 3 // 8  # int3 really packed
