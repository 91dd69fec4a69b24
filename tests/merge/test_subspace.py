"""Unit tests for paperlab.merge.subspace: Iso-C, Iso-CTS, MaTS."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.merge as pm


def _setup(n=3, shape=(12, 8)):
  base = {"dense": {"kernel": jax.random.normal(jax.random.key(0), shape), "bias": jnp.zeros(shape[1])}}
  fts = [jax.tree.map(lambda x, i=i: x + 0.2 * jax.random.normal(jax.random.key(10 + i), x.shape), base)
         for i in range(n)]
  return base, fts


def test_iso_c_flattens_the_spectrum_of_the_summed_task_matrix():
  base, fts = _setup()
  out = pm.iso_c(base, fts, alpha=1.0)
  delta = out["dense"]["kernel"] - base["dense"]["kernel"]
  s = jnp.linalg.svd(delta, compute_uv=False)
  np.testing.assert_allclose(s, s.mean(), rtol=1e-4)
  total = sum(f["dense"]["kernel"] - base["dense"]["kernel"] for f in fts)
  assert float(s.mean()) == pytest.approx(float(jnp.linalg.svd(total, compute_uv=False).mean()), rel=1e-4)
  # 1-D leaves: the mean task vector
  np.testing.assert_allclose(out["dense"]["bias"], np.mean([f["dense"]["bias"] for f in fts], 0), rtol=1e-5)


def test_iso_c_leaves_an_already_isotropic_task_matrix_unchanged():
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (6, 6)))
  base = {"w": jnp.zeros((6, 6))}
  out = pm.iso_c(base, [{"w": 0.5 * q}], alpha=1.0)
  np.testing.assert_allclose(out["w"], 0.5 * q, atol=1e-5)


def test_iso_cts_is_isotropic_and_equals_iso_c_when_everything_is_common():
  base, fts = _setup()
  out = pm.iso_cts(base, fts, alpha=1.0, common_fraction=0.5)
  s = jnp.linalg.svd(out["dense"]["kernel"] - base["dense"]["kernel"], compute_uv=False)
  np.testing.assert_allclose(s, s.mean(), rtol=1e-3)
  full = pm.iso_cts(base, fts, alpha=1.0, common_fraction=1.0)
  np.testing.assert_allclose(full["dense"]["kernel"], pm.iso_c(base, fts)["dense"]["kernel"], atol=1e-4)
  with pytest.raises(ValueError, match="common_fraction"):
    pm.iso_cts(base, fts, common_fraction=0.0)


def test_iso_alpha_zero_returns_the_base():
  base, fts = _setup()
  for fn in (pm.iso_c, pm.iso_cts):
    out = fn(base, fts, alpha=0.0)
    np.testing.assert_allclose(out["dense"]["kernel"], base["dense"]["kernel"], atol=1e-6)


def _grams(n, dim, seed=0):
  out = []
  for i in range(n):
    x = jax.random.normal(jax.random.key(seed + i), (64, dim)) * (1 + i)
    out.append({"dense/kernel": x.T @ x / 64})
  return out


def test_mats_with_identity_grams_is_the_average_and_zero_iterations_the_init():
  base, fts = _setup()
  eye = [{"dense/kernel": jnp.eye(12)} for _ in fts]
  out = pm.mats(base, fts, eye)
  np.testing.assert_allclose(out["dense"]["kernel"], pm.uniform_average(fts)["dense"]["kernel"], rtol=1e-4, atol=1e-5)
  init = pm.mats(base, fts, _grams(3, 12), iters=0, init="task_arithmetic", init_lam=0.3)
  ta = pm.task_arithmetic(base, fts, 0.3)
  np.testing.assert_allclose(init["dense"]["kernel"], ta["dense"]["kernel"], rtol=1e-5, atol=1e-6)


def test_mats_converges_to_the_regmean_closed_form():
  base, fts = _setup()
  grams = _grams(3, 12)
  out = pm.mats(base, fts, grams, iters=200)
  g = [gr["dense/kernel"] for gr in grams]
  closed = jnp.linalg.solve(sum(g), sum(gi @ f["dense"]["kernel"] for gi, f in zip(g, fts)))
  np.testing.assert_allclose(out["dense"]["kernel"], closed, rtol=1e-3, atol=1e-4)


def test_mats_with_output_grams_solves_the_kronecker_system():
  base, fts = _setup(n=2, shape=(6, 4))
  grams_in = _grams(2, 6)
  grams_out = [{"dense/kernel": gr["dense/kernel"][:4, :4] + jnp.eye(4)} for gr in _grams(2, 4, seed=7)]
  out = pm.mats(base, fts, grams_in, grams_out, iters=200)["dense"]["kernel"]
  # vec(A W S) = (S^T kron A) vec(W) with column-major vec
  a = [g["dense/kernel"] for g in grams_in]
  s = [g["dense/kernel"] for g in grams_out]
  lhs = sum(jnp.kron(si.T, ai) for ai, si in zip(a, s))
  rhs = sum((ai @ f["dense"]["kernel"] @ si).T.reshape(-1) for ai, si, f in zip(a, s, fts))
  want = jnp.linalg.solve(lhs, rhs).reshape(4, 6).T
  np.testing.assert_allclose(out, want, rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match="grams_in"):
    pm.mats(base, fts, grams_in[:1])
