"""Hypothesis properties of paperlab.optim schedules and batch-size rules."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab.optim import (adam_sqrt_scaling, cooldown_factor, norm_test, one_cycle, one_cycle_momentum,
                            power_schedule, wsd_schedule)

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


def _steps(total: int, n: int = 256) -> jnp.ndarray:
  """Every step when few, else a fixed-size grid that includes both ends (one shape: no recompilation)."""
  return jnp.unique(jnp.round(jnp.linspace(0, total - 1, n)), size=n, fill_value=total - 1)


@SETTINGS
@given(total=st.integers(20, 2000), pct=st.floats(0.1, 0.45), max_lr=st.floats(1e-3, 10.0),
       div=st.floats(2.0, 30.0), final_div=st.floats(1.0, 1e4), three_phase=st.booleans(),
       anneal=st.sampled_from(["linear", "cos"]))
def test_one_cycle_phases_are_monotone_and_bounded(total, pct, max_lr, div, final_div, three_phase, anneal):
  v = np.asarray(one_cycle(total, max_lr, pct_start=pct, div_factor=div, final_div_factor=final_div,
                           three_phase=three_phase, anneal_strategy=anneal)(_steps(total)))
  lo, hi = max_lr / div / final_div, max_lr
  assert np.all(v >= lo * (1 - 1e-5)) and np.all(v <= hi * (1 + 1e-5))
  peak = int(np.argmax(v))
  tol = 1e-6 * max_lr
  assert np.all(np.diff(v[: peak + 1]) >= -tol)      # rising phase
  assert np.all(np.diff(v[peak:]) <= tol)            # falling + annihilation
  np.testing.assert_allclose(v[-1], lo, rtol=1e-4)


@SETTINGS
@given(total=st.integers(20, 500), pct=st.floats(0.1, 0.45), lo=st.floats(0.5, 0.9), gap=st.floats(0.0, 0.09))
def test_one_cycle_momentum_is_bounded(total, pct, lo, gap):
  v = np.asarray(one_cycle_momentum(total, pct_start=pct, base_momentum=lo, max_momentum=lo + gap)(_steps(total)))
  assert np.all(v >= lo - 1e-6) and np.all(v <= lo + gap + 1e-6)


@SETTINGS
@given(total=st.integers(10, 3000), warmup_frac=st.floats(0.0, 0.3), decay_frac=st.floats(0.0, 0.6),
       decay_type=st.sampled_from(["linear", "1-sqrt", "1-square", "cosine", "exp"]),
       final=st.floats(0.001, 0.5), peak=st.floats(1e-4, 1.0))
def test_wsd_is_bounded_and_non_increasing_after_warmup(total, warmup_frac, decay_frac, decay_type, final, peak):
  w = int(warmup_frac * total)
  s = wsd_schedule(peak, total, warmup_steps=w, decay_fraction=decay_frac, decay_type=decay_type,
                   final_value_ratio=final)
  steps = _steps(total + 3)
  v = np.asarray(s(steps))
  assert np.all(v >= -1e-9) and np.all(v <= peak * (1 + 1e-6))
  rising = np.asarray(steps) <= w
  assert np.all(np.diff(v[rising]) >= -1e-7 * peak)
  assert np.all(np.diff(v[~rising]) <= 1e-7 * peak)
  np.testing.assert_allclose(v[-1], final * peak, rtol=1e-4)


@SETTINGS
@given(p=st.lists(st.floats(-1.0, 2.0), min_size=16, max_size=16),
       decay_type=st.sampled_from(["linear", "1-sqrt", "1-square", "cosine", "exp"]), final=st.floats(0.01, 1.0))
def test_cooldown_factor_stays_in_final_one(p, decay_type, final):
  v = np.asarray(cooldown_factor(jnp.asarray(p), decay_type, final))
  assert np.all(v >= final * (1 - 1e-5)) and np.all(v <= 1 + 1e-6)


@SETTINGS
@given(batch=st.floats(1.0, 4096.0), seq=st.integers(1, 4096), a=st.floats(0.5, 10.0), b=st.floats(-1.0, -0.1),
       lr_max=st.floats(1e-4, 0.1))
def test_power_schedule_is_capped_and_non_increasing(batch, seq, a, b, lr_max):
  s = power_schedule(batch, a=a, b=b, lr_max=lr_max, tokens_per_step=batch * seq)
  v = np.asarray(s(jnp.asarray([1, 10, 100, 1_000, 10_000, 100_000])))
  assert np.all(v <= lr_max * (1 + 1e-6)) and np.all(v > 0)
  assert np.all(np.diff(v) <= 1e-7 * lr_max)


@SETTINGS
@given(k1=st.floats(0.25, 4.0), k2=st.floats(0.25, 4.0), lr=st.floats(1e-5, 1e-1), b1=st.floats(0.9, 0.99),
       b2=st.floats(0.99, 0.9999), eps=st.floats(1e-10, 1e-4))
def test_sqrt_rule_composes_exactly_and_kappa_one_is_identity(k1, k2, lr, b1, b2, eps):
  base = dict(learning_rate=lr, b1=b1, b2=b2, eps=eps)
  if k1 * k2 * (1 - b1) >= 1 or k1 * (1 - b1) >= 1:
    return
  assert adam_sqrt_scaling(1.0, **base) == pytest.approx(base, rel=1e-12)
  assert adam_sqrt_scaling(k2, **adam_sqrt_scaling(k1, **base)) == pytest.approx(
      adam_sqrt_scaling(k1 * k2, **base), rel=1e-9)


@SETTINGS
@given(seed=st.integers(0, 1000), eta=st.floats(0.05, 2.0), scale=st.floats(0.1, 10.0))
def test_norm_test_is_scale_invariant_and_consistent(seed, eta, scale):
  g = jnp.asarray(np.random.default_rng(seed).normal(size=(16, 8)) + 0.5, jnp.float32)
  r1, r2 = norm_test(g, eta), norm_test(scale * g, eta)
  np.testing.assert_allclose(float(r1.statistic), float(r2.statistic), rtol=1e-3)
  assert float(r1.proposed_batch_size) >= 1
  assert bool(r1.passed) == (float(r1.statistic) <= 1.0)
