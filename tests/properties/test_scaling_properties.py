"""Invariants of the scaling-law forms (Hoffmann et al., arXiv:2203.15556; Tissue et al., arXiv:2408.11029)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import scaling

_params = st.builds(scaling.ChinchillaParams, E=st.floats(0.5, 3.0), A=st.floats(10.0, 1e4), B=st.floats(10.0, 1e4),
                    alpha=st.floats(0.1, 0.8), beta=st.floats(0.1, 0.8))


@settings(max_examples=25, deadline=None)
@given(params=_params, log_c=st.floats(18.0, 26.0))
def test_compute_optimal_spends_the_budget_and_beats_its_neighbours(params, log_c):
  C = 10.0 ** log_c
  n, d = scaling.compute_optimal(params, C)
  assert np.isclose(6 * n * d, C, rtol=1e-9)
  loss = lambda n_: params.E + params.A / n_ ** params.alpha + params.B / (C / (6 * n_)) ** params.beta
  assert loss(n) <= min(loss(n * 1.05), loss(n / 1.05))


@settings(max_examples=25, deadline=None)
@given(params=_params, n=st.floats(1e6, 1e12), d=st.floats(1e8, 1e14))
def test_chinchilla_loss_decreases_in_n_and_d_towards_e(params, n, d):
  with jax.enable_x64(True):
    l0 = float(scaling.chinchilla_loss(n, d, params))
    assert float(scaling.chinchilla_loss(2 * n, d, params)) < l0
    assert float(scaling.chinchilla_loss(n, 2 * d, params)) < l0
    assert l0 > params.E


@settings(max_examples=25, deadline=None)
@given(lrs=st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20), lam=st.floats(0.0, 0.999))  # one shape
def test_non_increasing_schedules_have_non_negative_non_decreasing_annealing_area(lrs, lam):
  lrs = np.sort(np.asarray(lrs))[::-1]
  with jax.enable_x64(True):
    s1, s2 = (np.asarray(a) for a in scaling.lr_areas(jnp.asarray(lrs, jnp.float64), lam))
  assert np.all(s2 >= -1e-12) and np.all(np.diff(s2) >= -1e-12)
  np.testing.assert_allclose(s1, np.cumsum(lrs), rtol=1e-12, atol=1e-15)
  # each m_i is a discounted sum of decreases, so m_i <= the total decrease and S2 <= total decrease x steps
  assert s2[-1] <= (lrs[0] - lrs[-1]) * len(lrs) + 1e-12
