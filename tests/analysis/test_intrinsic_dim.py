"""paperlab.analysis.intrinsic_dim: the projections' properties, the identity subspace as ordinary training,
Fastfood against its explicit-matrix form, d_int, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

from paperlab import analysis


def _params():
  k = jax.random.split(jax.random.key(0), 2)
  return {"l1": {"kernel": jax.random.normal(k[0], (8, 16)) / 3, "bias": jnp.zeros(16)},
          "l2": {"kernel": jax.random.normal(k[1], (16, 3)) / 4, "bias": jnp.zeros(3)}}  # D = 195


def _matrix(to_full, d):
  return jax.jacfwd(lambda t: ravel_pytree(to_full(t))[0])(jnp.zeros(d))


def test_fast_walsh_hadamard_matches_scipy_hadamard():
  x = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
  np.testing.assert_allclose(analysis.fast_walsh_hadamard(x), x @ scipy.linalg.hadamard(64).T, atol=1e-4)
  with pytest.raises(ValueError, match="power-of-two"):
    analysis.fast_walsh_hadamard(jnp.ones(12))


def test_dense_projection_has_unit_columns_and_near_orthogonal_columns():
  params = _params()
  theta_d0, to_full = analysis.subspace_params(jax.random.key(1), params, 40)
  assert theta_d0.shape == (40,) and theta_d0.dtype == jnp.float32 and not jnp.any(theta_d0)
  np.testing.assert_allclose(ravel_pytree(to_full(theta_d0))[0], ravel_pytree(params)[0])  # starts at theta_0
  p = _matrix(to_full, 40)
  np.testing.assert_allclose(jnp.linalg.norm(p, axis=0), 1.0, rtol=1e-6)
  gram = p.T @ p
  assert float(jnp.max(jnp.abs(gram - jnp.diag(jnp.diag(gram))))) < 4 / np.sqrt(p.shape[0])


def test_fastfood_equals_its_explicit_matrix():
  # the explicit form of the authors' tf_fastfood_transform (uber-research/intrinsic-dimension,
  # keras_ext/rproj_layers_util.py at 2a7ebd25): (H G Pi H B pad(x))[:D] / (sqrt(L sum G^2) sqrt(D / L))
  params = _params()
  d = 30
  _, to_full = analysis.subspace_params(jax.random.key(2), params, d, kind="fastfood")
  theta0, signs, perm, gauss = (np.asarray(a, np.float64) for a in to_full.args)
  big, dim = signs.shape[0], theta0.shape[0]
  assert big == 256 and dim == 195
  h = scipy.linalg.hadamard(big).astype(np.float64)
  explicit = (h @ np.diag(gauss) @ np.eye(big)[perm.astype(int)] @ h @ np.diag(signs))[:dim, :d]
  explicit /= np.sqrt(big * np.sum(gauss**2)) * np.sqrt(dim / big)
  np.testing.assert_allclose(_matrix(to_full, d), explicit, atol=1e-5)
  norms = np.linalg.norm(explicit, axis=0)
  assert abs(norms.mean() - 1.0) < 0.1  # unit columns in expectation


def test_identity_subspace_training_is_ordinary_training():
  params = _params()
  x = jax.random.normal(jax.random.key(3), (32, 8))
  y = jax.random.randint(jax.random.key(4), (32,), 0, 3)

  def loss(p, xb, yb):
    h = jnp.tanh(xb @ p["l1"]["kernel"] + p["l1"]["bias"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["l2"]["kernel"] + p["l2"]["bias"], yb).mean()

  tx = optax.adam(1e-2)
  dim = ravel_pytree(params)[0].shape[0]
  theta_d, to_full = analysis.subspace_params(jax.random.key(0), params, dim, kind="identity")
  sub = analysis.subspace_loss(loss, to_full)

  full, full_state = params, tx.init(params)
  sub_state = tx.init(theta_d)
  sub_step = jax.jit(lambda t, s, f: _step(analysis.subspace_loss(loss, f), tx, t, s, x, y))
  full_step = jax.jit(lambda p, s: _step(loss, tx, p, s, x, y))
  for _ in range(5):
    theta_d, sub_state = sub_step(theta_d, sub_state, to_full)
    full, full_state = full_step(full, full_state)
    np.testing.assert_allclose(ravel_pytree(to_full(theta_d))[0], ravel_pytree(full)[0], atol=1e-6)
  assert float(sub(theta_d, x, y)) < float(loss(params, x, y))


def _step(loss, tx, p, s, x, y):
  g = jax.grad(loss)(p, x, y)
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s


def test_to_full_vmaps_over_theta_d():
  _, to_full = analysis.subspace_params(jax.random.key(1), _params(), 10, kind="fastfood")
  batch = jax.vmap(to_full)(jnp.eye(10))
  assert batch["l1"]["kernel"].shape == (10, 8, 16)


def test_d_int_picks_the_smallest_d_reaching_the_threshold():
  grid = [10, 25, 50, 100]
  assert analysis.d_int(grid, [0.2, 0.80, 0.86, 0.95], baseline=0.95) == 50  # 0.9 * 0.95 = 0.855
  assert analysis.d_int(grid, [0.2, 0.3, 0.4, 0.5], baseline=0.95) is None
  d90, scores = analysis.intrinsic_dimension(lambda d: d / 100, grid, baseline=1.0)
  assert d90 == 100 and scores == [0.1, 0.25, 0.5, 1.0]
  with pytest.raises(ValueError, match="increasing"):
    analysis.d_int([10, 5], [0.1, 0.2], 1.0)
  with pytest.raises(ValueError, match="threshold"):
    analysis.d_int(grid, [0.1] * 4, 1.0, threshold=1.5)


def test_errors_name_the_argument():
  params = _params()
  with pytest.raises(ValueError, match="kind"):
    analysis.subspace_params(jax.random.key(0), params, 5, kind="lowrank")
  with pytest.raises(ValueError, match="d must"):
    analysis.subspace_params(jax.random.key(0), params, 0)
  with pytest.raises(ValueError, match="d must"):
    analysis.subspace_params(jax.random.key(0), params, 196)
  with pytest.raises(ValueError, match="identity"):
    analysis.subspace_params(jax.random.key(0), params, 5, kind="identity")
  with pytest.raises(TypeError, match="floating"):
    analysis.subspace_params(jax.random.key(0), {"w": jnp.ones(3, jnp.int32)}, 1)


def test_sparse_projection_has_unit_columns_with_sqrt_d_distinct_nonzeros():
  params = _params()
  _, to_full = analysis.subspace_params(jax.random.key(3), params, 20, kind="sparse")
  p = np.asarray(_matrix(to_full, 20))
  nnz = int(np.ceil(np.sqrt(p.shape[0])))
  np.testing.assert_array_equal((p != 0).sum(0), nnz)  # distinct rows: no cancelled or merged entries
  np.testing.assert_allclose(np.linalg.norm(p, axis=0), 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.abs(p[p != 0]), 1 / np.sqrt(nnz), rtol=1e-6)
  assert len({tuple(np.nonzero(c)[0]) for c in p.T}) == 20  # every column its own support
