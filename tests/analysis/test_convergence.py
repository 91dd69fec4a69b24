"""paperlab.analysis.convergence: the exact prefix identity, Delta_k against a direct Monte-Carlo loop and the
Gaussian closed form of quadratic losses, the second-order bound against closed forms and scipy's chi moments, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import analysis


def _setup():
  x = jax.random.normal(jax.random.key(0), (200, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.1 * jax.random.normal(jax.random.key(1), (200,))
  params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.zeros(())}
  per_example = lambda p, d: (d[0] @ p["w"] + p["b"] - d[1]) ** 2
  return per_example, params, (x, y)


def test_prefix_identity_holds_exactly():
  losses = jax.random.uniform(jax.random.key(2), (500,))
  prefix = analysis.empirical_loss_prefixes(losses)
  k = jnp.arange(1, 500)
  np.testing.assert_allclose(prefix[k] - prefix[k - 1], (losses[k] - prefix[k - 1]) / (k + 1), atol=1e-6)
  np.testing.assert_allclose(prefix[-1], jnp.mean(losses), rtol=1e-6)


def test_delta_k_matches_a_direct_monte_carlo_loop_and_decays():
  per_example, params, data = _setup()
  ks = jnp.array([10, 40, 160])
  key = jax.random.key(3)
  delta = jax.jit(lambda p, k: analysis.landscape_convergence(per_example, p, data, ks, k, sigma=0.05,
                                                              num_samples=16))(params, key)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  direct = []
  for sk in jax.random.split(key, 16):
    losses = np.asarray(per_example(unravel(flat + 0.05 * jax.random.normal(sk, flat.shape)), data), np.float64)
    lk = lambda k: losses[:k].mean()
    direct.append([(lk(int(k) + 1) - lk(int(k))) ** 2 for k in ks])
  np.testing.assert_allclose(delta, np.mean(direct, 0), rtol=1e-3, atol=1e-12)
  assert float(delta[0]) > float(delta[1]) > float(delta[2])


def test_errors_name_the_argument():
  per_example, params, data = _setup()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="ks"):
    analysis.landscape_convergence(per_example, params, data, [0, 10], key)
  with pytest.raises(ValueError, match="ks"):
    analysis.landscape_convergence(per_example, params, data, [200], key)
  with pytest.raises(ValueError, match="sigma"):
    analysis.landscape_convergence(per_example, params, data, [10], key, sigma=0.0)
  with pytest.raises(ValueError, match="num_samples"):
    analysis.landscape_convergence(per_example, params, data, [10], key, num_samples=0)
  with pytest.raises(ValueError, match="per_example_losses"):
    analysis.empirical_loss_prefixes(jnp.ones((0,)))


# --- the second-order bound (landscape_convergence_bound) -------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402
from scipy import stats  # noqa: E402

from paperlab.analysis.convergence import _chi_moments  # noqa: E402


def _diag_quadratic(a, c):
  """``l_i(w) = 1/2 sum_j a_ij (w_j - c_ij)^2``: the Taylor expansion at any point is exact."""
  return lambda p, d: 0.5 * jnp.sum(d[0] * (p["w"][None] - d[1]) ** 2, -1)


def _exact_delta(a, c, k, sigma):
  """E_delta[f^2] / (k+1)^2 for the quadratic f = l_{k+1} - L_k at w = 0 + delta, delta ~ N(0, sigma^2 I):
  f = f0 + g.delta + 1/2 delta' diag(h) delta, so E f^2 = f0^2 + sigma^2 |g|^2 + f0 sigma^2 sum h
  + sigma^4 ((sum h)^2 + 2 sum h^2) / 4 (Gaussian moments)."""
  a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
  l0, grad, h = 0.5 * np.sum(a * c * c, 1), -a * c, a
  f0, g, hh = l0[k] - l0[:k].mean(), grad[k] - grad[:k].mean(0), h[k] - h[:k].mean(0)
  s2 = sigma ** 2
  ef2 = f0 ** 2 + s2 * g @ g + f0 * s2 * hh.sum() + s2 ** 2 * (hh.sum() ** 2 + 2 * hh @ hh) / 4
  return ef2 / (k + 1) ** 2


def test_chi_moments_match_scipy():
  for dim in (1, 7, 610):
    np.testing.assert_allclose(_chi_moments(dim, 0.05), [0.05 ** m * stats.chi(dim).moment(m) for m in range(5)],
                               rtol=1e-10)


def test_bound_is_exact_for_a_one_parameter_quadratic_with_aligned_signs():
  # l_i(w) = alpha_i + beta_i w^2 / 2 at w* = 0: no gradient term, and when l_{k+1} - L_k has value and curvature of
  # one sign, E(a + c R^2)^2 is E f^2 itself: a^2 + a |h| sigma^2 + 3/4 h^2 sigma^4.
  alpha = jnp.array([1.0, 1.0, 1.0, 3.0, 0.0])
  beta = jnp.array([2.0, 2.0, 2.0, 6.0, 0.0])
  per_example = lambda p, d: d[0] + 0.5 * d[1] * p["w"][0] ** 2
  sigma = 0.3
  bound = analysis.landscape_convergence_bound(per_example, {"w": jnp.zeros(1)}, (alpha, beta), [3, 4], sigma=sigma)
  f0, h = 3.0 - 1.0, 6.0 - 2.0  # k = 3: sample 4 against the first three
  expected_k3 = (f0 ** 2 + f0 * h * sigma ** 2 + 0.75 * h ** 2 * sigma ** 4) / 16
  np.testing.assert_allclose(bound[0], expected_k3, rtol=1e-6)
  f0, h = 0.0 - 1.5, 0.0 - 3.0  # k = 4: sample 5 against the first four, both negative
  np.testing.assert_allclose(bound[1], (f0 ** 2 + f0 * h * sigma ** 2 + 0.75 * h ** 2 * sigma ** 4) / 25, rtol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), dim=st.sampled_from([1, 4]), sigma=st.sampled_from([0.01, 0.1, 0.5]))
def test_bound_dominates_the_exact_delta_of_quadratic_losses(seed, dim, sigma):
  rng = np.random.default_rng(seed)
  a = rng.uniform(0.0, 3.0, (12, dim)).astype(np.float32)
  c = rng.normal(size=(12, dim)).astype(np.float32)
  ks = [1, 4, 11]
  bound = analysis.landscape_convergence_bound(_diag_quadratic(a, c), {"w": jnp.zeros(dim)}, (a, c), ks,
                                               sigma=sigma)
  exact = np.array([_exact_delta(a, c, k, sigma) for k in ks])
  assert np.all(np.asarray(bound, np.float64) >= exact * (1 - 1e-5)), (bound, exact)


def test_monte_carlo_delta_matches_the_closed_form_and_stays_below_the_bound():
  rng = np.random.default_rng(0)
  a = rng.uniform(0.0, 3.0, (40, 3)).astype(np.float32)
  c = rng.normal(size=(40, 3)).astype(np.float32)
  ks, sigma = jnp.array([5, 20, 39]), 0.2
  fn = _diag_quadratic(a, c)
  delta = analysis.landscape_convergence(fn, {"w": jnp.zeros(3)}, (a, c), ks, jax.random.key(0), sigma=sigma,
                                         num_samples=4000)
  exact = np.array([_exact_delta(a, c, int(k), sigma) for k in ks])
  np.testing.assert_allclose(delta, exact, rtol=0.1)
  bound = analysis.landscape_convergence_bound(fn, {"w": jnp.zeros(3)}, (a, c), ks, sigma=sigma)
  no_hessian = analysis.landscape_convergence_bound(fn, {"w": jnp.zeros(3)}, (a, c), ks, sigma=sigma,
                                                    hessian_term=False)
  assert np.all(np.asarray(bound) >= exact) and np.all(np.asarray(no_hessian) < np.asarray(bound))


def test_bound_jits_with_traced_ks():
  per_example, params, data = _setup()
  ks = jnp.array([10, 40, 160])
  eager = analysis.landscape_convergence_bound(per_example, params, data, ks)
  jitted = jax.jit(lambda p, k: analysis.landscape_convergence_bound(per_example, p, data, k))(params, ks)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5)
  assert eager.shape == (3,) and eager.dtype == jnp.float32


def test_bound_errors_name_the_argument():
  per_example, params, data = _setup()
  with pytest.raises(ValueError, match="ks"):
    analysis.landscape_convergence_bound(per_example, params, data, [0, 10])
  with pytest.raises(ValueError, match="ks"):
    analysis.landscape_convergence_bound(per_example, params, data, [200])
  with pytest.raises(ValueError, match="ks"):
    analysis.landscape_convergence_bound(per_example, params, data, [1.5])
  with pytest.raises(ValueError, match="sigma"):
    analysis.landscape_convergence_bound(per_example, params, data, [10], sigma=-0.1)
  with pytest.raises(TypeError, match="params"):
    analysis.landscape_convergence_bound(per_example, {"w": jnp.arange(3)}, data, [10])
