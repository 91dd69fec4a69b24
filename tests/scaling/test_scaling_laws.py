"""Unit tests of the scaling-law forms (Kaplan et al., arXiv:2001.08361; Hoffmann et al., arXiv:2203.15556)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import scaling


def test_kaplan_single_variable_laws_equal_one_at_their_scale_constant():
  np.testing.assert_allclose(scaling.kaplan_loss_n(8.8e13), 1.0, rtol=1e-6)
  np.testing.assert_allclose(scaling.kaplan_loss_d(5.4e13), 1.0, rtol=1e-6)
  np.testing.assert_allclose(scaling.kaplan_loss_c(3.1e8), 1.0, rtol=1e-6)


def test_kaplan_loss_n_is_the_published_power_law():
  N = np.array([1e6, 1e8, 1e10])
  np.testing.assert_allclose(scaling.kaplan_loss_n(N), (8.8e13 / N) ** 0.076, rtol=1e-6)
  # halving the loss's log needs N to grow by exp(log 2 / alpha): the slope in log-log space is -alpha_N
  slope = np.diff(np.log(np.asarray(scaling.kaplan_loss_n(N)))) / np.diff(np.log(N))
  np.testing.assert_allclose(slope, -0.076, rtol=1e-4)


def test_kaplan_joint_law_reduces_to_l_of_n_with_infinite_data():
  N = np.array([1e7, 1e9])
  np.testing.assert_allclose(scaling.kaplan_loss_nd(N, 1e30), scaling.kaplan_loss_n(N, n_c=6.4e13), rtol=1e-5)
  np.testing.assert_allclose(scaling.kaplan_loss_nd(1e30, 1e9), (1.8e13 / 1e9) ** 0.103, rtol=1e-5)


def test_kaplan_L_dispatches_on_the_given_variables():
  assert float(scaling.kaplan_L(N=1e9)) == float(scaling.kaplan_loss_n(1e9))
  assert float(scaling.kaplan_L(D=1e9)) == float(scaling.kaplan_loss_d(1e9))
  assert float(scaling.kaplan_L(C=1.0)) == float(scaling.kaplan_loss_c(1.0))
  assert float(scaling.kaplan_L(N=1e9, D=1e10)) == float(scaling.kaplan_loss_nd(1e9, 1e10))
  with pytest.raises(ValueError, match="N, D, C alone"):
    scaling.kaplan_L(N=1e9, C=1.0)
  with pytest.raises(ValueError, match="nothing"):
    scaling.kaplan_L()


def test_kaplan_ns_law_and_critical_batch():
  np.testing.assert_allclose(scaling.kaplan_loss_ns(8.8e13, 2.1e3), 2.0, rtol=1e-6)
  np.testing.assert_allclose(scaling.kaplan_critical_batch(1.0), 2e8, rtol=1e-6)
  np.testing.assert_allclose(scaling.kaplan_critical_batch(2.0), 2e8 / 2.0 ** (1 / 0.21), rtol=1e-5)


def test_chinchilla_loss_is_e_plus_two_power_terms():
  N, D = 70e9, 1.4e12  # Chinchilla itself
  expected = 1.69 + 406.4 / N ** 0.34 + 410.7 / D ** 0.28
  np.testing.assert_allclose(scaling.chinchilla_loss(N, D), expected, rtol=1e-6)
  assert scaling.chinchilla_loss(1e30, 1e30) == pytest.approx(1.69, abs=1e-5)  # B / D**beta = 1.6e-6 left


def test_chinchilla_compute_optimal_spends_the_budget_with_the_paper_exponents():
  C = np.array([1e20, 1e22, 1e24])
  with jax.enable_x64(True):
    n_opt, d_opt = scaling.chinchilla_compute_optimal(jnp.asarray(C, jnp.float64))
    np.testing.assert_allclose(6 * n_opt * d_opt, C, rtol=1e-12)
    a = np.diff(np.log(np.asarray(n_opt))) / np.diff(np.log(C))
    b = np.diff(np.log(np.asarray(d_opt))) / np.diff(np.log(C))
  np.testing.assert_allclose(a, 0.28 / 0.62, rtol=1e-9)  # 0.45 (the paper's Table 2 reports 0.46, unrounded fit)
  np.testing.assert_allclose(b, 0.34 / 0.62, rtol=1e-9)


def test_chinchilla_compute_optimal_is_a_stationary_point_of_the_loss_on_the_budget():
  """d/dN L(N, C / (6 N)) = 0 at N_opt, in float64 with jax.grad."""
  with jax.enable_x64(True):
    for C in (1e21, 5.76e23):
      n_opt, _ = scaling.chinchilla_compute_optimal(jnp.float64(C))
      on_budget = lambda log_n, C=C: scaling.chinchilla_loss(jnp.exp(log_n), C / (6 * jnp.exp(log_n)))
      assert abs(float(jax.grad(on_budget)(jnp.log(n_opt)))) < 1e-12
      assert float(jax.grad(jax.grad(on_budget))(jnp.log(n_opt))) > 0  # a minimum


def test_laws_jit_vmap_and_keep_float32():
  N = jnp.array([1e8, 1e9, 1e10], jnp.float32)
  D = jnp.array([1e10, 1e11, 1e12], jnp.float32)
  out = jax.jit(scaling.chinchilla_loss)(N, D)
  assert out.dtype == jnp.float32 and out.shape == (3,)
  np.testing.assert_allclose(jax.vmap(scaling.chinchilla_loss)(N, D), out, rtol=1e-6)
  params = scaling.ChinchillaParams(*(jnp.float32(v) for v in scaling.CHINCHILLA))
  np.testing.assert_allclose(jax.jit(scaling.chinchilla_loss)(N, D, params), out, rtol=1e-6)
  assert jax.jit(scaling.kaplan_loss_nd)(N, D).dtype == jnp.float32
  assert scaling.kaplan_loss_n(np.array([10**9])).dtype == jnp.float32  # integer counts promoted to float
  n_opt, d_opt = jax.jit(scaling.chinchilla_compute_optimal)(jnp.float32(1e21))
  assert n_opt.dtype == d_opt.dtype == jnp.float32


def test_power_law_with_offset():
  np.testing.assert_allclose(scaling.power_law(np.array([1.0, 4.0]), 2.0, 0.5, 1.0), [3.0, 2.0], rtol=1e-6)


@pytest.mark.parametrize("fn,args,name", [
    (scaling.kaplan_loss_n, (0.0,), "N"), (scaling.kaplan_loss_d, (-1.0,), "D"),
    (scaling.kaplan_loss_c, (np.nan,), "C_min"), (scaling.chinchilla_loss, (1e9, np.inf), "D"),
    (scaling.chinchilla_compute_optimal, (0.0,), "C"), (scaling.power_law, (np.array([1.0, -2.0]), 1.0, 0.5), "x"),
])
def test_non_positive_inputs_raise_naming_the_argument(fn, args, name):
  with pytest.raises(ValueError, match=f"^{name} must be finite and > 0"):
    fn(*args)


def test_bad_constants_raise():
  with pytest.raises(ValueError, match="alpha_n"):
    scaling.kaplan_loss_n(1e9, alpha_n=-0.1)
  with pytest.raises(ValueError, match="params.alpha"):
    scaling.chinchilla_loss(1e9, 1e9, scaling.ChinchillaParams(1.69, 406.4, 410.7, 0.0, 0.28))
  with pytest.raises(TypeError, match="ChinchillaParams"):
    scaling.chinchilla_loss(1e9, 1e9, {"E": 1.0})
  with pytest.raises(TypeError, match="N must be a real"):
    scaling.kaplan_loss_n("1e9")
