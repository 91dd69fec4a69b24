"""paperlab.analysis.hessian: closed forms on quadratics, the dense ``jax.hessian`` of a small net, jit, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from paperlab import analysis

EIGS = jnp.arange(1.0, 11.0)  # diag(1..10)


def _quadratic(rotate: bool = True):
  """0.5 theta^T A theta with A = Q diag(1..10) Q^T split over two leaves; eigenvalues 1..10, trace 55."""
  q = jnp.linalg.qr(jax.random.normal(jax.random.key(3), (10, 10)))[0] if rotate else jnp.eye(10)
  a = (q * EIGS) @ q.T

  def loss(params, batch):
    theta = jnp.concatenate([params["w"].reshape(-1), params["b"]])
    return 0.5 * theta @ a @ theta + 0.0 * jnp.sum(batch)

  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros((4,))}
  return loss, params, a


@functools.lru_cache(maxsize=None)
def _tiny_net():
  """A tanh MLP 5-6-3 with cross-entropy on 20 points: 57 parameters, dense Hessian via jax.hessian."""
  k = jax.random.split(jax.random.key(0), 5)
  params = {"l1": {"kernel": jax.random.normal(k[0], (5, 6)) / 2, "bias": 0.1 * jax.random.normal(k[1], (6,))},
            "l2": {"kernel": jax.random.normal(k[2], (6, 3)), "bias": jnp.zeros((3,))}}
  x = jax.random.normal(k[3], (20, 5))
  y = jax.random.randint(k[4], (20,), 0, 3)

  def loss(p, batch):
    xb, yb = batch
    h = jnp.tanh(xb @ p["l1"]["kernel"] + p["l1"]["bias"])
    logits = h @ p["l2"]["kernel"] + p["l2"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1))

  flat, unravel = ravel_pytree(params)
  dense = jax.hessian(lambda f: loss(unravel(f), (x, y)))(flat)
  return loss, params, (x, y), np.asarray(dense, np.float64)


def test_hvp_equals_dense_hessian_times_vector():
  loss, params, batch, dense = _tiny_net()
  v = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape), params)
  hv = jax.jit(lambda p, b, v: analysis.hvp(loss, p, b, v))(params, batch, v)
  np.testing.assert_allclose(ravel_pytree(hv)[0], dense @ ravel_pytree(v)[0], rtol=1e-5, atol=1e-6)


def test_lanczos_top_eigs_of_quadratic_are_exact():
  loss, params, a = _quadratic()
  eigs = jax.jit(lambda p, k: analysis.hessian_top_eigs(loss, p, jnp.zeros(1), k, k=3, num_iters=10))(
      params, jax.random.key(0))
  np.testing.assert_allclose(eigs.values, [10.0, 9.0, 8.0], rtol=1e-5)
  for i, lam in enumerate([10.0, 9.0, 8.0]):
    vec = jax.tree.map(lambda x: x[i], eigs.vectors)
    v = jnp.concatenate([vec["w"].reshape(-1), vec["b"]])  # the loss's order of theta
    np.testing.assert_allclose(jnp.linalg.norm(v), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a @ v, lam * v, atol=1e-4)


def test_power_iteration_top_eigs_of_quadratic():
  loss, params, _ = _quadratic()
  eigs = analysis.hessian_top_eigs(loss, params, jnp.zeros(1), jax.random.key(0), k=2, num_iters=1000,
                                   method="power", tol=1e-9)
  np.testing.assert_allclose(eigs.values, [10.0, 9.0], rtol=1e-3)  # ratio 9/10 per step: slow, as PyHessian's


def test_lanczos_matches_dense_spectrum_of_small_net():
  loss, params, batch, dense = _tiny_net()
  exact = np.linalg.eigvalsh(dense)[::-1][:3]
  eigs = analysis.hessian_top_eigs(loss, params, batch, jax.random.key(0), k=3, num_iters=57)
  np.testing.assert_allclose(eigs.values, exact, rtol=1e-4)
  few = analysis.hessian_top_eigs(loss, params, batch, jax.random.key(0), k=1, num_iters=25)
  np.testing.assert_allclose(few.values, exact[:1], rtol=1e-3)  # the top Ritz value converges first


def test_trace_of_quadratic_and_small_net():
  loss, params, _ = _quadratic(rotate=False)  # diagonal Hessian: every Rademacher probe gives the trace
  tr = jax.jit(lambda p, k: analysis.hessian_trace(loss, p, jnp.zeros(1), k, num_samples=3))(params,
                                                                                                jax.random.key(0))
  np.testing.assert_allclose(tr, 55.0, rtol=1e-6)
  loss, params, batch, dense = _tiny_net()
  # the standard basis as probes gives the trace exactly
  basis = jax.vmap(ravel_pytree(params)[1])(jnp.eye(57))
  np.testing.assert_allclose(jnp.sum(analysis.hutchinson_samples(loss, params, batch, basis, batch_size=57)),
                             np.trace(dense), rtol=1e-5)
  # Rademacher estimate: unbiased, within 4 standard errors (variance 2 sum_{i!=j} H_ij^2 / n)
  n = 200
  est = analysis.hessian_trace(loss, params, batch, jax.random.key(1), num_samples=n, batch_size=n)
  se = np.sqrt(2 * (np.sum(dense**2) - np.sum(np.diag(dense) ** 2)) / n)
  assert abs(float(est) - np.trace(dense)) < 4 * se


def test_slq_quadrature_reproduces_moments():
  loss, params, batch, dense = _tiny_net()
  probes = analysis.rademacher_like(jax.random.key(5), params, 2)
  nodes, weights = jax.jit(lambda p, b, k: analysis.hessian_density(loss, p, b, k, num_iters=20, num_runs=2,
                                                                    probes=probes))(params, batch,
                                                                                    jax.random.key(0))
  assert nodes.shape == weights.shape == (2, 20)
  np.testing.assert_allclose(jnp.sum(weights, 1), 1.0, rtol=1e-5)
  flat = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(probes), np.float64)
  for r in range(2):
    v = flat[r] / np.linalg.norm(flat[r])
    for p in range(4):  # Gauss quadrature with 20 nodes is exact for degree < 40
      exact = v @ np.linalg.matrix_power(dense, p) @ v
      np.testing.assert_allclose(np.sum(weights[r] * nodes[r] ** p), exact, rtol=2e-4, atol=1e-6)


def test_density_on_grid_integrates_to_one_and_peaks_at_nodes():
  nodes = jnp.array([[0.0, 1.0, 5.0]])
  weights = jnp.array([[0.2, 0.3, 0.5]])
  grid, dens = analysis.density_on_grid(nodes, weights, num_bins=2001, sigma_squared=1e-3)
  np.testing.assert_allclose(jnp.sum(dens) * (grid[1] - grid[0]), 1.0, rtol=1e-5)
  assert abs(float(grid[jnp.argmax(dens)]) - 5.0) < 0.01


def test_lanczos_survives_krylov_breakdown():
  # two distinct eigenvalues: the Krylov space is exhausted after 2 steps
  loss = lambda p, b: 0.5 * jnp.sum(jnp.where(jnp.arange(6) < 3, 1.0, 4.0) * p**2)
  eigs = analysis.hessian_top_eigs(loss, jnp.ones(6), None, jax.random.key(0), k=4, num_iters=6)
  np.testing.assert_allclose(eigs.values, [4.0, 4.0, 4.0, 1.0], rtol=1e-5)
  assert np.all(np.isfinite(eigs.values))


def test_errors_name_the_argument():
  loss, params, _ = _quadratic()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="method"):
    analysis.hessian_top_eigs(loss, params, None, key, method="arnoldi")
  with pytest.raises(ValueError, match="num_iters"):
    analysis.hessian_top_eigs(loss, params, None, key, num_iters=11)  # > 10 parameters
  with pytest.raises(ValueError, match="num_iters"):
    analysis.hessian_top_eigs(loss, params, None, key, k=3, num_iters=2)
  with pytest.raises(TypeError, match="k"):
    analysis.hessian_top_eigs(loss, params, None, key, k=1.0)
  with pytest.raises(TypeError, match="floating"):
    analysis.hvp(loss, {"w": jnp.ones((2, 3), jnp.int32), "b": jnp.zeros(4)}, None, params)
  with pytest.raises(ValueError, match="structure"):
    analysis.hvp(loss, params, None, {"w": jnp.ones((2, 3))})
  with pytest.raises(ValueError, match="sigma_squared"):
    analysis.density_on_grid(jnp.ones((1, 3)), jnp.ones((1, 3)), sigma_squared=0.0)
  with pytest.raises(ValueError, match="probes"):
    analysis.hessian_density(loss, params, None, key, num_iters=3, num_runs=2,
                             probes=analysis.rademacher_like(key, params, 3))


def test_preconditioned_eigenvalues_match_the_dense_rescaled_hessian():
  loss, params, batch, dense = _tiny_net()
  precond = jax.tree.map(lambda x: 0.5 + jax.random.uniform(jax.random.key(7), x.shape), params)
  p = np.asarray(ravel_pytree(precond)[0], np.float64)
  exact = np.linalg.eigvalsh(dense / np.sqrt(np.outer(p, p)))[::-1][:2]
  eigs = analysis.hessian_top_eigs(loss, params, batch, jax.random.key(0), k=2, num_iters=57, precond=precond)
  np.testing.assert_allclose(eigs.values, exact, rtol=1e-4)
  with pytest.raises(ValueError, match="precond"):
    analysis.hessian_top_eigs(loss, params, batch, jax.random.key(0), precond={"l1": precond["l1"]})
