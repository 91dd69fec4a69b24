"""Weight Standardization and Batch-Channel Normalization (Qiao et al., arXiv:1903.10520): closed-form
properties; parity with the official code is in tests/parity/test_param_bcn.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import param


def test_standardized_filters_have_zero_mean_and_unit_variance():
  # inputs drawn with NumPy and one jitted call per dtype: every eager op is its own XLA compile (the CPU budget)
  w = (np.random.default_rng(0).normal(size=(3, 3, 8, 16)) * 0.3 + 2.0).astype(np.float32)
  standardize = jax.jit(param.weight_standardize)
  w_hat = standardize(w)
  flat = np.asarray(w_hat).reshape(-1, 16)
  assert np.abs(flat.mean(0)).max() < 1e-5  # float32 rounding of a kernel centred at 2
  np.testing.assert_allclose(flat.var(0, ddof=1), 1.0, atol=1e-3)  # unbiased, as the official code
  assert w_hat.dtype == w.dtype and standardize(w.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_std_conv_is_invariant_to_affine_kernel_changes():
  conv = param.StdConv(3, 4, (3, 3), rngs=nnx.Rngs(0))
  x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
  apply = nnx.jit(lambda m, x: m(x))  # one program for both kernels (same shapes)
  y = apply(conv, x)
  k = np.asarray(conv.conv.kernel[...])
  conv.conv.kernel[...] = jnp.asarray(3.0 * k + 0.7 * np.ones((1, 1, 1, 4), np.float32))  # W_i -> a W_i + c_i, a > 0
  # exact up to eps = 1e-5 under the square root (relative to a filter variance ~1/27 at LeCun init)
  np.testing.assert_allclose(apply(conv, x), y, rtol=1e-3, atol=1e-4)
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(conv)
  assert np.all(np.isfinite(grads.conv.kernel[...]))


def test_batch_channel_norm_normalizes_each_group_of_each_example():
  bcn = param.BatchChannelNorm(8, num_groups=2, rngs=nnx.Rngs(0))
  x = (np.random.default_rng(2).normal(size=(2, 4, 4, 8)) * 5.0 + 3.0).astype(np.float32)
  y = np.asarray(nnx.jit(lambda m, x: m(x))(bcn, x)).reshape(2, 16, 2, 4)
  np.testing.assert_allclose(y.mean(axis=(1, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 3)), 1.0, atol=1e-3)
  assert np.abs(np.asarray(bcn.bn.mean[...])).max() > 0.1  # the batch norm's running mean moved


@pytest.mark.parametrize("call, match", [
    (lambda: param.weight_standardize(jnp.ones((4,))), "ndim >= 2"),
    (lambda: param.weight_standardize(jnp.ones((1, 4))), "fan-in"),
    (lambda: param.weight_standardize(jnp.ones((3, 4)), eps=0.0), "eps"),
    (lambda: param.BatchChannelNorm(6, num_groups=4, rngs=nnx.Rngs(0)), "divide"),
    (lambda: param.BatchChannelNorm(8, num_groups=2, rngs=nnx.Rngs(0))(jnp.ones((2, 4))), "channels"),
])
def test_errors_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()
