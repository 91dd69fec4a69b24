"""paperlab.param.spectral_reg [146]: power iteration against numpy's SVD; the penalty and its gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import param


def _with_spectrum(seed, shape, top):
  """A matrix (read as ``(prod(shape[:-1]), shape[-1])``) with singular values ``top, 0.6 top, ...``."""
  rng = np.random.default_rng(seed)
  m, n = int(np.prod(shape[:-1])), shape[-1]
  r = min(m, n)
  u, _ = np.linalg.qr(rng.standard_normal((m, r)))
  v, _ = np.linalg.qr(rng.standard_normal((n, r)))
  s = top * 0.6 ** np.arange(r)
  return jnp.asarray((u * s) @ v.T, jnp.float32).reshape(shape)


def _params():
  return {"dense1": {"kernel": _with_spectrum(0, (16, 32), 1.7), "bias": jnp.zeros(32)},
          "conv": {"kernel": _with_spectrum(1, (3, 3, 4, 8), 0.7)},
          "dense2": {"kernel": _with_spectrum(2, (32, 10), 2.5), "bias": jnp.zeros(10)}}


def _matrices(params):
  return [np.asarray(params[n]["kernel"]).reshape(-1, params[n]["kernel"].shape[-1]) for n in sorted(params)]


def test_power_iteration_matches_numpy_svd_within_one_percent_after_20_steps():
  params = _params()
  state = param.spectral_reg_init(params, jax.random.key(1))
  sigmas, _ = jax.jit(param.top_singular_values, static_argnums=2)(params, state, 20)
  for s, w in zip(sigmas, _matrices(params)):  # leaf order is sorted key order: conv, dense1, dense2
    ref = np.linalg.svd(w, compute_uv=False)[0]
    np.testing.assert_allclose(float(s), ref, rtol=1e-2)
    np.testing.assert_allclose(ref, float(jnp.linalg.norm(jnp.asarray(w), ord=2)), rtol=1e-5)


def test_persistent_vectors_converge_one_iteration_per_call():
  params = _params()
  state = param.spectral_reg_init(params, jax.random.key(2))
  step = jax.jit(param.top_singular_values)
  for _ in range(30):
    sigmas, state = step(params, state)
  refs = [np.linalg.svd(w, compute_uv=False)[0] for w in _matrices(params)]
  np.testing.assert_allclose([float(s) for s in sigmas], refs, rtol=1e-3)
  assert state.vectors["dense1"]["bias"] is None


def test_penalty_is_the_paper_sum_and_its_gradient_is_the_closed_form():
  params = _params()
  state = param.spectral_reg_init(params, jax.random.key(3))
  _, state = jax.jit(param.top_singular_values, static_argnums=2)(params, state, 50)  # converged: dsigma/dW = uv^T
  lam, k = 0.3, 2.0
  (penalty, _), grads = jax.value_and_grad(
      lambda p: param.spectral_penalty(p, state, lam=lam, k=k), has_aux=True)(params)
  mats = _matrices(params)
  svds = [np.linalg.svd(w) for w in mats]
  np.testing.assert_allclose(float(penalty), lam * sum((s[0] ** k - 1) ** 2 for _, s, _ in svds), rtol=1e-3)
  for name, (u, s, vt) in zip(sorted(params), svds):
    expected = lam * 2 * (s[0] ** k - 1) * k * s[0] ** (k - 1) * np.outer(u[:, 0], vt[0])
    got = np.asarray(grads[name]["kernel"]).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-5)
  np.testing.assert_allclose(np.asarray(grads["dense1"]["bias"]), 0.0)


def test_add_spectral_reg_adds_the_penalty_gradient_and_pulls_sigma_to_one():
  params = {"w": jnp.diag(jnp.asarray([3.0, 0.5, 0.5, 0.4, 0.3, 0.2]))}
  tx = optax.chain(param.add_spectral_reg(0.1, jax.random.key(0)), optax.sgd(0.05))
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(100):
    updates, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, updates)
  assert abs(float(jnp.linalg.norm(params["w"], ord=2)) - 1.0) < 0.02
  np.testing.assert_allclose(np.diag(np.asarray(params["w"]))[1:], [0.5, 0.5, 0.4, 0.3, 0.2], atol=1e-4)


def test_errors_name_the_argument():
  params = _params()
  state = param.spectral_reg_init(params, jax.random.key(0))
  with pytest.raises(ValueError, match="lam"):
    param.spectral_penalty(params, state, lam=-1.0)
  with pytest.raises(ValueError, match="k"):
    param.spectral_penalty(params, state, lam=1.0, k=0.0)
  with pytest.raises(ValueError, match="no weight matrix"):
    p = {"b": jnp.zeros(3)}
    param.spectral_penalty(p, param.spectral_reg_init(p, jax.random.key(0)), lam=1.0)
  with pytest.raises(ValueError, match="num_iters"):
    param.power_iteration(jnp.ones((3, 2)), jnp.ones(2), 0)
