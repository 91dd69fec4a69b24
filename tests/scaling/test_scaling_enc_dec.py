"""The bivariate encoder/decoder law of Ghorbani et al. [175] (paperlab.scaling.enc_dec). Oracles: closed forms --
the optimal split p_e/(p_e+p_d) against a numerical argmin of the law over a fine grid of splits, and exact points of
a known law fitted back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import scaling

TRUTH = scaling.EncDecParams(alpha=0.8, p_e=0.3, p_d=0.5, L_inf=1.5, ref_e=1e8, ref_d=1e8)


def _design():
  """Encoder scaling, decoder scaling and symmetric scaling runs, as in the paper's fits."""
  sizes = np.geomspace(5e7, 1.5e9, 6)
  base = np.full(6, 1e8)
  return np.concatenate([sizes, base, sizes]), np.concatenate([base, sizes, sizes])


def test_law_is_the_papers_formula_and_jits():
  N_e, N_d = np.array([1e8, 4e8, 2e7]), np.array([1e8, 5e7, 3e9])
  expected = 0.8 * (1e8 / N_e) ** 0.3 * (1e8 / N_d) ** 0.5 + 1.5
  np.testing.assert_allclose(np.asarray(scaling.enc_dec_loss(N_e, N_d, TRUTH)), expected, rtol=1e-6)
  jitted = jax.jit(lambda a, b: scaling.enc_dec_loss(a, b, TRUTH))
  out = jitted(jnp.asarray(N_e, jnp.float32), jnp.asarray(N_d, jnp.float32))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(p_e=st.floats(0.05, 2.0), p_d=st.floats(0.05, 2.0), alpha=st.floats(0.01, 10.0), l_inf=st.floats(0.0, 5.0),
       log_budget=st.floats(4.0, 12.0), log_ref=st.floats(3.0, 10.0))
def test_optimal_split_matches_the_argmin_over_a_fine_grid(p_e, p_d, alpha, l_inf, log_budget, log_ref):
  params = scaling.EncDecParams(alpha, p_e, p_d, l_inf, 10.0 ** log_ref, 3 * 10.0 ** log_ref)
  budget = 10.0 ** log_budget
  n_e, n_d = scaling.optimal_split(params, budget)
  assert n_e + n_d == pytest.approx(budget, rel=1e-12)
  share = np.linspace(1e-5, 1 - 1e-5, 100_001)  # step 1e-5
  # The argmin over the split is L_inf's too; the grid is searched on the reducible term alone, because next to
  # L_inf it can fall below float64's resolution (alpha (ref/N)^p ~ 1e-11 at ref 1e3, budget 1e9, p 1: a flat
  # loss whose argmin is the first of many ties).
  with jax.enable_x64(True):
    reducible = np.asarray(scaling.enc_dec_loss(share * budget, (1 - share) * budget, params._replace(L_inf=0.0)))
  assert abs(share[np.argmin(reducible)] - n_e / budget) <= 1e-3
  assert n_e / budget == pytest.approx(p_e / (p_e + p_d), rel=1e-12)


def test_optimal_split_gives_the_larger_share_to_the_larger_exponent_elementwise():
  budgets = np.array([1e8, 1e9, 1e10])
  n_e, n_d = scaling.optimal_split(TRUTH, budgets)
  np.testing.assert_allclose(n_e / budgets, 0.375)
  assert np.all(n_d > n_e) and n_e.shape == budgets.shape


def test_fit_recovers_exact_law():
  N_e, N_d = _design()
  L = 0.8 * (1e8 / N_e) ** 0.3 * (1e8 / N_d) ** 0.5 + 1.5  # the law written out, not through enc_dec_loss
  fit = scaling.fit_enc_dec(N_e, N_d, L, ref=(1e8, 1e8))
  assert fit.law == "enc_dec" and fit.num_points == 18
  for name in ("alpha", "p_e", "p_d", "L_inf"):
    assert fit[name] == pytest.approx(getattr(TRUTH, name), rel=1e-4), name
  # another reference only rescales alpha; the predictions and exponents stay
  other = scaling.fit_enc_dec(N_e, N_d, L)
  assert other["p_e"] == pytest.approx(0.3, rel=1e-4) and other["p_d"] == pytest.approx(0.5, rel=1e-4)
  np.testing.assert_allclose(np.asarray(scaling.enc_dec_loss(N_e, N_d, other)), L, rtol=1e-5)
  share = scaling.optimal_split(fit, 1e9)[0] / 1e9
  assert share == pytest.approx(0.375, abs=1e-4)


def test_fit_with_noise_and_bootstrap_covers_the_exponents():
  N_e, N_d = _design()
  rng = np.random.default_rng(0)
  L = (0.8 * (1e8 / N_e) ** 0.3 * (1e8 / N_d) ** 0.5 + 1.5) * np.exp(2e-3 * rng.standard_normal(len(N_e)))
  fit = scaling.fit_enc_dec(N_e, N_d, L, ref=(1e8, 1e8), bootstrap=20)
  for name, value in (("p_e", 0.3), ("p_d", 0.5)):
    assert fit[name] == pytest.approx(value, rel=0.1)
    low, high = fit.ci[name]
    assert low < high and low <= value <= high, (name, fit.ci[name])


def test_total_parameters_alone_cannot_separate_the_exponents():
  # symmetric runs only (N_e = N_d): p_e and p_d enter only through their sum
  sizes = np.geomspace(5e7, 1.5e9, 10)
  L = 0.8 * (1e8 / sizes) ** 0.8 + 1.5
  fit = scaling.fit_enc_dec(sizes, sizes, L, ref=(1e8, 1e8))
  assert fit["p_e"] + fit["p_d"] == pytest.approx(0.8, rel=1e-3)


def test_bad_inputs_raise_naming_the_argument():
  N_e, N_d = _design()
  L = np.ones_like(N_e) * 2.0
  with pytest.raises(ValueError, match="N_e must be finite and > 0"):
    scaling.fit_enc_dec(-N_e, N_d, L)
  with pytest.raises(ValueError, match="same length"):
    scaling.fit_enc_dec(N_e, N_d[:-1], L)
  with pytest.raises(ValueError, match="too few points"):
    scaling.fit_enc_dec(N_e[:3], N_d[:3], L[:3])
  with pytest.raises(ValueError, match="ref must be a pair"):
    scaling.fit_enc_dec(N_e, N_d, L, ref=1e8)
  with pytest.raises(ValueError, match=r"ref\[1\]"):
    scaling.fit_enc_dec(N_e, N_d, L, ref=(1e8, 0.0))
  with pytest.raises(ValueError, match="init_grid"):
    scaling.fit_enc_dec(N_e, N_d, L, init_grid=np.zeros((2, 3)))
  with pytest.raises(ValueError, match="budget must be finite and > 0"):
    scaling.optimal_split(TRUTH, [1e9, -1.0])
  with pytest.raises(ValueError, match="params.p_d"):
    scaling.optimal_split(TRUTH._replace(p_d=0.0), 1e9)
  with pytest.raises(ValueError, match="N_d must be finite and > 0"):
    scaling.enc_dec_loss(1e8, 0.0, TRUTH)
  with pytest.raises(TypeError, match="enc_dec"):
    scaling.optimal_split(scaling.fit_power_law([1.0, 2.0, 4.0, 8.0], [4.0, 3.0, 2.5, 2.2]), 1e9)
