"""Power-law random features (Paquette et al., arXiv:2405.15074): the exact population loss, the capacity limit F_0
and one-pass SGD (paperlab.scaling.plrf_*)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import scaling

ALPHA, BETA = 0.7, 0.6


def _numpy_problem(problem):
  return (np.asarray(problem.eigs, np.float64), np.asarray(problem.b, np.float64), np.asarray(problem.W, np.float64))


def test_population_loss_matches_a_monte_carlo_estimate():
  problem = scaling.plrf_problem(jax.random.PRNGKey(0), ALPHA, BETA, 60, 10)
  eigs, b, W = _numpy_problem(problem)
  theta = np.random.default_rng(1).normal(size=10)
  x = np.random.default_rng(2).normal(size=(400_000, 60)) * np.sqrt(eigs)  # x ~ N(0, diag(j^-2alpha))
  samples = 0.5 * ((x @ W) @ theta - x @ b) ** 2
  mc, se = samples.mean(), samples.std() / np.sqrt(len(samples))
  exact = float(scaling.plrf_population_loss(jnp.asarray(theta, jnp.float32), problem))
  assert abs(exact - mc) < 4 * se, (exact, mc, se)
  assert se < 0.01 * mc  # the tolerance is tight enough to catch a factor of 2 or a wrong covariance


def test_limit_loss_is_the_least_squares_optimum_over_the_feature_span():
  problem = scaling.plrf_problem(jax.random.PRNGKey(3), ALPHA, BETA, 300, 40)
  eigs, b, W = _numpy_problem(problem)
  s = np.sqrt(eigs)
  theta, *_ = np.linalg.lstsq(s[:, None] * W, s * b, rcond=None)  # min ||D^1/2 (W theta - b)||^2
  f0 = 0.5 * np.sum(eigs * (W @ theta - b) ** 2)
  assert float(scaling.plrf_limit_loss(problem)) == pytest.approx(f0, rel=1e-3)
  assert f0 < 0.5 * np.sum(eigs * b ** 2)  # the features explain part of the target


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 10.0))
def test_no_theta_beats_the_capacity_limit(seed, scale):
  problem = scaling.plrf_problem(jax.random.PRNGKey(seed % 7), ALPHA, BETA, 120, 12)
  theta = scale * jax.random.normal(jax.random.PRNGKey(seed), (12,))
  assert float(scaling.plrf_population_loss(theta, problem)) >= float(scaling.plrf_limit_loss(problem)) * (1 - 1e-5)


def test_first_step_with_a_tiny_learning_rate_starts_from_the_closed_form_initial_loss():
  # theta_0 = 0: P(0) = 1/2 sum_j j^-2alpha j^-2beta.
  v = 500
  losses = scaling.plrf_simulate(jax.random.PRNGKey(0), ALPHA, BETA, v, 20, 1, 1e-7, 4)
  j = np.arange(1, v + 1, dtype=np.float64)
  assert float(losses[0]) == pytest.approx(0.5 * np.sum(j ** (-2 * ALPHA - 2 * BETA)), rel=1e-4)


@pytest.mark.parametrize("d", [8, 32])
def test_sgd_plateau_is_the_capacity_limit_within_ten_percent(d):
  keys = jax.random.split(jax.random.PRNGKey(d), 3)
  losses, f0 = scaling.plrf_simulate(keys, ALPHA, BETA, 400, d, 6000, 0.25, 32, log_every=100, return_limit=True)
  plateau = np.asarray(losses)[:, -15:].mean(axis=1)
  for i, key in enumerate(keys):  # F_0 of each seed's own W, by numpy least squares (independent of the simulator)
    eigs, b, W = _numpy_problem(scaling.plrf_problem(jax.random.split(key)[0], ALPHA, BETA, 400, d))
    s = np.sqrt(eigs)
    theta, *_ = np.linalg.lstsq(s[:, None] * W, s * b, rcond=None)
    ref = 0.5 * np.sum(eigs * (W @ theta - b) ** 2)
    assert float(f0[i]) == pytest.approx(ref, rel=1e-3)
    assert ref <= plateau[i] <= 1.1 * ref, (d, plateau[i] / ref)
  p0 = 0.5 * np.sum(np.arange(1, 401, dtype=np.float64) ** (-2 * ALPHA - 2 * BETA))  # P(theta_0 = 0)
  assert np.all(plateau < 0.6 * p0)  # SGD descended from P(0) to the plateau


def test_theory_exponent_is_the_catalogue_closed_form():
  assert scaling.plrf_theory(0.7, 0.6, 100).f0_exponent == pytest.approx(-1.4)
  assert scaling.plrf_theory(0.7, 0.3, 100).f0_exponent == pytest.approx(-1.0)  # 2 beta < 1: + (1 - 2 beta)
  np.testing.assert_allclose(scaling.plrf_theory(0.7, 0.3, jnp.array([10.0, 100.0])).f0_order,
                             [10.0 ** -1.0, 100.0 ** -1.0], rtol=1e-5)


def test_population_and_limit_loss_jit():
  problem = scaling.plrf_problem(jax.random.PRNGKey(5), ALPHA, BETA, 80, 8)
  theta = jnp.linspace(-1.0, 1.0, 8)
  assert float(jax.jit(scaling.plrf_population_loss)(theta, problem)) == pytest.approx(
      float(scaling.plrf_population_loss(theta, problem)), rel=1e-6)
  assert float(jax.jit(scaling.plrf_limit_loss)(problem)) == pytest.approx(float(scaling.plrf_limit_loss(problem)),
                                                                          rel=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0.0}, "alpha"), ({"beta": -1.0}, "beta"), ({"v": 10}, "v must be"), ({"d": 0}, "d must be"),
    ({"steps": 0}, "steps"), ({"steps": 15}, "multiple of log_every"), ({"lr": -0.1}, "lr"), ({"batch": 0}, "batch"),
    ({"dtype": jnp.int32}, "dtype"),
])
def test_simulate_rejects_bad_arguments(kwargs, match):
  args = {"alpha": ALPHA, "beta": BETA, "v": 40, "d": 10, "steps": 20, "lr": 0.1, "batch": 2}
  args.update(kwargs)
  dtype = args.pop("dtype", jnp.float32)
  with pytest.raises(ValueError, match=match):
    scaling.plrf_simulate(jax.random.PRNGKey(0), **args, log_every=10, dtype=dtype)


def test_theory_rejects_bad_arguments():
  with pytest.raises(ValueError, match="alpha"):
    scaling.plrf_theory(-0.5, 0.6, 10)
  with pytest.raises(ValueError, match="d must be"):
    scaling.plrf_theory(0.7, 0.6, 0)
