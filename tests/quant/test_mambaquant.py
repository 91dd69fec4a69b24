"""MambaQuant (arXiv:2501.13484): the Hadamard matrix against scipy, the KLT-enhanced rotation against numpy's eigh on
the same second moment (orthogonal, equal rotated channel variances), function preservation of the fused rotation
and of the smooth-fused rotation, jit, errors."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import quant


def _correlated(seed=0, tokens=512, n=32):
  """Non-negative, correlated, heavy-tailed activations (a common mode plus per-channel scales)."""
  rng = np.random.default_rng(seed)
  common = np.abs(rng.standard_t(3, size=(tokens, 1)))
  x = np.abs(rng.standard_t(3, size=(tokens, n))) * np.sqrt(np.logspace(0, 3, n)) + 5.0 * common
  return jnp.asarray(x.astype(np.float32))


@pytest.mark.parametrize("n", [1, 2, 16, 256])
def test_hadamard_is_scipys_normalized_and_orthogonal(n):
  h = np.asarray(quant.hadamard(n), np.float64)
  np.testing.assert_allclose(h, scipy.linalg.hadamard(n) / np.sqrt(n), rtol=1e-6)
  np.testing.assert_allclose(h.T @ h, np.eye(n), atol=1e-5)


def test_klt_rotation_is_orthogonal_and_equalizes_the_rotated_variances():
  x = _correlated()
  r = np.asarray(quant.klt_hadamard_rotation(x), np.float64)
  np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)
  c = np.cov(np.asarray(x, np.float64).T)  # the same covariance (the release's torch.cov), in numpy
  rotated = np.diag(r.T @ c @ r)
  np.testing.assert_allclose(rotated, np.trace(c) / 32, rtol=1e-3)  # every channel: trace(C) / n
  plain = np.diag(scipy.linalg.hadamard(32) @ c @ scipy.linalg.hadamard(32)) / 32
  assert plain.std() / plain.mean() > 0.1  # the plain Hadamard rotation does not equalize these correlated channels
  uncentered = np.asarray(x, np.float64).T @ np.asarray(x, np.float64) / x.shape[0]
  r0 = np.asarray(quant.klt_hadamard_rotation(x, centered=False), np.float64)
  np.testing.assert_allclose(np.diag(r0.T @ uncentered @ r0), np.trace(uncentered) / 32, rtol=1e-3)


def test_klt_rotation_matches_the_release_eigh_of_cov_up_to_eigenvector_signs():
  # xzktx003/mambaquant-master@029fba1 quantize/get_klt_matrix.py: eig_values, K = torch.linalg.eigh(torch.cov(X.T))
  x = _correlated(1)
  _, k = np.linalg.eigh(np.cov(np.asarray(x, np.float64).T))
  h = scipy.linalg.hadamard(32) / np.sqrt(32)
  r = np.asarray(quant.klt_hadamard_rotation(x), np.float64)
  k_ours = r @ h.T  # R = K H, H symmetric orthogonal
  signs = np.sign(np.sum(k_ours * k, axis=0))
  np.testing.assert_allclose((k_ours * signs)[:, -8:], k[:, -8:], atol=2e-3)  # the leading (well separated) ones


def test_klt_rotation_on_a_diagonal_covariance_equalizes_exactly():
  # the catalogue's oracle: a synthetic diagonal covariance (independent channels with variances 1..1e3)
  rng = np.random.default_rng(2)
  d = np.sqrt(np.logspace(0, 3, 64))
  x = jnp.asarray((rng.normal(size=(4096, 64)) * d).astype(np.float32))
  r = np.asarray(quant.klt_hadamard_rotation(x), np.float64)
  xr = np.asarray(x, np.float64) @ r
  xr = xr - xr.mean(0)
  var = (xr ** 2).mean(0)
  np.testing.assert_allclose(var, var.mean(), rtol=1e-3)


@settings(max_examples=15, deadline=None)
@given(x=hnp.arrays(np.float32, (40, 16), elements=st.floats(-20, 20, width=32)), seed=st.integers(0, 2 ** 16))
def test_rotated_layer_computes_the_same_function(x, seed):
  w = jnp.asarray(np.random.default_rng(seed).normal(size=(16, 8)).astype(np.float32))
  r = quant.klt_hadamard_rotation(jnp.asarray(x) + 1e-3 * jnp.eye(40, 16))
  y = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
  scale = 1e-4 * (1 + np.abs(x).max() * 16)
  np.testing.assert_allclose(np.asarray((jnp.asarray(x) @ r) @ quant.apply_rotation(w, r)), y, atol=scale)
  w_in = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(5, 16)).astype(np.float32))
  b_in = jnp.ones((16,))
  w_in2, b_in2, w2 = quant.apply_rotation(w, r, w_in, b_in)
  h = jnp.asarray(np.random.default_rng(seed + 2).normal(size=(7, 5)).astype(np.float32))
  np.testing.assert_allclose(np.asarray((h @ w_in2 + b_in2) @ w2), np.asarray((h @ w_in + b_in) @ w), atol=1e-3)


@pytest.mark.parametrize("alpha", [None, 0.0, 0.5, 0.85])
def test_smooth_then_rotate_is_function_preserving(alpha):
  x = _correlated(3)
  w = jnp.asarray(np.random.default_rng(3).normal(size=(32, 12)).astype(np.float32))
  layer = quant.smooth_then_rotate(w, x, alpha=alpha)
  np.testing.assert_allclose(np.asarray((x @ layer.transform) @ layer.w), np.asarray(x @ w), rtol=1e-3, atol=1e-2)
  if alpha is None:
    np.testing.assert_array_equal(np.asarray(layer.scales), np.ones(32))
  else:
    expected = quant.smooth_scales(jnp.max(jnp.abs(x), 0), jnp.max(jnp.abs(w), 1), alpha)
    np.testing.assert_allclose(np.asarray(layer.scales), np.asarray(expected), rtol=1e-6)
  # the smoothed activations have equal rotated second moments
  xs = np.asarray(x / layer.scales, np.float64)
  c = np.cov(xs.T)
  r = np.asarray(layer.rotation, np.float64)
  np.testing.assert_allclose(np.diag(r.T @ c @ r), np.trace(c) / 32, rtol=1e-3)


def test_jit():
  x = _correlated(4)
  r = np.asarray(jax.jit(quant.klt_hadamard_rotation)(x), np.float64)  # eigenvectors of close eigenvalues may
  np.testing.assert_allclose(r.T @ r, np.eye(32), atol=1e-5)             # differ from eager: check the properties
  c = np.cov(np.asarray(x, np.float64).T)
  np.testing.assert_allclose(np.diag(r.T @ c @ r), np.trace(c) / 32, rtol=1e-3)
  w = jnp.ones((32, 3))
  layer = jax.jit(quant.smooth_then_rotate)(w, x)
  assert layer.w.shape == (32, 3) and layer.transform.shape == (32, 32)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="n must be a positive power of two"):
    quant.hadamard(12)
  with pytest.raises(ValueError, match="n must be a positive power of two"):
    quant.klt_hadamard_rotation(jnp.ones((8, 12)))
  with pytest.raises(ValueError, match="x_calib"):
    quant.klt_hadamard_rotation(jnp.ones((8,)))
  with pytest.raises(ValueError, match="x_calib"):
    quant.klt_hadamard_rotation(jnp.full((4, 8), jnp.nan))
  with pytest.raises(ValueError, match="rotation"):
    quant.apply_rotation(jnp.ones((8, 3)), jnp.eye(4))
  with pytest.raises(ValueError, match="w_in"):
    quant.apply_rotation(jnp.ones((8, 3)), jnp.eye(8), jnp.ones((3, 4)))
  with pytest.raises(ValueError, match="alpha"):
    quant.smooth_then_rotate(jnp.ones((8, 3)), jnp.ones((4, 8)), alpha=1.5)
  with pytest.raises(ValueError, match="x_calib"):
    quant.smooth_then_rotate(jnp.ones((8, 3)), jnp.ones((4, 16)))
