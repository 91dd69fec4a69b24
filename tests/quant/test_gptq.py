"""GPTQ (arXiv:2210.17323): reductions, layout, jit, the never-worse-than-RTN property and the errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab.quant import awq, gptq, rtn


def _layer(seed: int, n_in: int = 64, n_out: int = 16, tokens: int = 256, outliers: bool = False):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  mix = jax.random.normal(k1, (n_in, n_in)) / np.sqrt(n_in) + jnp.eye(n_in)
  x = jax.random.normal(k2, (tokens, n_in)) @ mix
  if outliers:
    x = x * jnp.where(jnp.arange(n_in) % 16 == 3, 10.0, 1.0)
  return 0.1 * jax.random.normal(k3, (n_in, n_out)), x


def test_uncorrelated_inputs_make_gptq_round_to_nearest():
  # H proportional to I: the inverse Hessian is diagonal, no error is moved, GPTQ is RTN
  w, _ = _layer(0)
  q = gptq.gptq_layer(w, 3.0 * jnp.eye(64), bits=3, group_size=16)
  np.testing.assert_array_equal(q.w_hat, rtn.quantize_rtn(w, bits=3, group_size=16).w_hat)


def test_result_layout_and_codes_reconstruct_the_kernel():
  w, x = _layer(1)
  for act_order, static in ((False, False), (True, False), (True, True)):
    q = gptq.gptq_from_inputs(w, x, bits=4, group_size=16, act_order=act_order, static_groups=static)
    assert q.w_hat.shape == w.shape and q.codes.dtype == jnp.uint8 and q.scale.shape == (4, 16)
    deq = q.scale[q.g_idx] * (q.codes.astype(jnp.float32) - q.zero[q.g_idx])
    np.testing.assert_allclose(deq, q.w_hat, atol=1e-6)
    assert np.bincount(np.asarray(q.g_idx)).tolist() == [16] * 4  # each group holds group_size inputs
    if not act_order or static:
      np.testing.assert_array_equal(q.g_idx, jnp.arange(64) // 16)
      rtn.to_qarray(q, 4)  # contiguous groups pack
    else:
      with pytest.raises(ValueError, match="not contiguous"):
        rtn.to_qarray(q, 4)


def test_dead_inputs_get_zero_weight():
  w, x = _layer(2)
  x = x.at[:, 7].set(0.0)
  q = gptq.gptq_from_inputs(w, x, bits=4)
  assert np.all(np.asarray(q.w_hat[7]) == 0)


def test_jit_with_traced_weight_hessian_and_damping_matches_eager():
  w, x = _layer(3)
  h = gptq.hessian(x)
  f = jax.jit(functools.partial(gptq.gptq_layer, bits=4, group_size=32, act_order=True))
  np.testing.assert_allclose(f(w, h, percdamp=jnp.float32(0.01)).w_hat,
                             gptq.gptq_layer(w, h, bits=4, group_size=32, act_order=True).w_hat, atol=1e-6)


def test_streaming_hessian_equals_the_hessian_of_all_inputs():
  _, x = _layer(4)
  h, n = jnp.zeros((64, 64)), 0.0
  for chunk in jnp.split(x, 4):
    h, n = gptq.accumulate_hessian(h, n, chunk)
  np.testing.assert_allclose(h, gptq.hessian(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed,n_in,n_out,bits,group_size", [
    (1, 64, 32, 3, 16), (2, 128, 8, 2, 32)])
def test_gptq_and_awq_layer_output_error_is_never_above_rtn(seed, n_in, n_out, bits, group_size):
  w, x = _layer(seed, n_in, n_out, outliers=seed % 2 == 1)
  e_rtn = rtn.layer_output_error(x, w, rtn.quantize_rtn(w, bits=bits, group_size=group_size).w_hat)
  for act_order in (False, True):
    q = gptq.gptq_from_inputs(w, x, bits=bits, group_size=group_size, act_order=act_order)
    assert rtn.layer_output_error(x, w, q.w_hat) <= e_rtn
  a = awq.awq_layer(w, x, bits=bits, group_size=group_size)
  assert rtn.layer_output_error(x, w, a.w_hat) <= e_rtn


def test_errors_name_the_argument():
  w, x = _layer(5)
  h = gptq.hessian(x)
  with pytest.raises(ValueError, match=r"h must be the \(64, 64\) Hessian"):
    gptq.gptq_layer(w, h[:32, :32])
  with pytest.raises(ValueError, match="h must be finite"):
    gptq.gptq_layer(w, h.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="w must be finite"):
    gptq.gptq_layer(w.at[0, 0].set(jnp.inf), h)
  with pytest.raises(ValueError, match="x must be finite"):
    gptq.gptq_from_inputs(w, x.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="bits must be one of"):
    gptq.gptq_layer(w, h, bits=1)
  with pytest.raises(ValueError, match="group_size=24 must divide"):
    gptq.gptq_layer(w, h, group_size=24)
  with pytest.raises(ValueError, match="percdamp"):
    gptq.gptq_layer(w, h, percdamp=-0.1)
  with pytest.raises(ValueError, match="blocksize"):
    gptq.gptq_layer(w, h, blocksize=0)
