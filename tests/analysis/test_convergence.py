"""paperlab.analysis.convergence: the exact prefix identity, Delta_k against a direct Monte-Carlo loop, errors."""

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
