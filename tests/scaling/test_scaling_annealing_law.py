"""The learning-rate-annealing law (Tissue et al., "Scaling Law with Learning Rate Annealing", arXiv:2408.11029):
areas S1/S2 against hand-computed closed forms, fit and prediction on curves generated from the law, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import scaling

LAM = 0.999


def test_constant_schedule_has_linear_forward_area_and_no_annealing_area():
  s1, s2 = scaling.lr_areas(jnp.full((50,), 0.1))
  np.testing.assert_allclose(s1, 0.1 * np.arange(1, 51), rtol=1e-6)
  np.testing.assert_array_equal(s2, 0.0)


def test_step_drop_annealing_area_is_a_geometric_sum():
  """eta drops from 0.2 to 0.1 at 0-based step k: m_i = 0.1 lam**(i - k) for i >= k, so
  S2(i) = 0.1 (1 - lam**(i - k + 1)) / (1 - lam); S1 adds the two areas."""
  k, n, lam = 30, 100, 0.95
  lrs = np.r_[np.full(k, 0.2), np.full(n - k, 0.1)]
  s1, s2 = scaling.lr_areas(jnp.asarray(lrs, jnp.float32), lam=lam)
  i = np.arange(n)
  expected_s2 = np.where(i >= k, 0.1 * (1 - lam ** (i - k + 1)) / (1 - lam), 0.0)
  np.testing.assert_allclose(s2, expected_s2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s1, np.cumsum(lrs), rtol=1e-6)


def test_linear_decay_with_lam_zero_has_annealing_area_equal_to_total_decrease():
  """lam = 0: m_i = eta_{i-1} - eta_i, so S2(s) = eta_1 - eta_s (telescoping)."""
  lrs = np.linspace(1.0, 0.1, 40)
  _, s2 = scaling.lr_areas(jnp.asarray(lrs, jnp.float32), lam=0.0)
  np.testing.assert_allclose(s2, lrs[0] - lrs, atol=1e-6)


def test_warmup_steps_are_excluded_from_both_areas():
  warm = optax.schedules.warmup_cosine_decay_schedule(0.0, 1.0, 10, 60)
  lrs = jax.vmap(warm)(jnp.arange(60))
  s1, s2 = scaling.lr_areas(lrs, warmup=10)
  np.testing.assert_array_equal(s1[:10], 0.0)
  np.testing.assert_array_equal(s2[:10], 0.0)
  t1, t2 = scaling.lr_areas(lrs[10:])
  np.testing.assert_allclose(s1[10:], t1, rtol=1e-6)
  np.testing.assert_allclose(s2[10:], t2, rtol=1e-6)


def test_lr_areas_jit_and_dtype():
  lrs = jax.vmap(optax.schedules.cosine_decay_schedule(0.1, 100))(jnp.arange(100)).astype(jnp.float32)
  s1, s2 = jax.jit(scaling.lr_areas, static_argnames="warmup")(lrs, 0.999, warmup=5)
  assert s1.dtype == s2.dtype == jnp.float32 and s1.shape == s2.shape == (100,)
  e1, e2 = scaling.lr_areas(lrs, 0.999, warmup=5)
  np.testing.assert_allclose(s1, e1, rtol=1e-6)
  np.testing.assert_allclose(s2, e2, rtol=1e-5, atol=1e-7)


def _schedules(n=2000, peak=0.05):
  t = jnp.arange(n)
  return {
      "constant": np.full(n, peak),
      "cosine": np.asarray(jax.vmap(optax.schedules.cosine_decay_schedule(peak, n, alpha=0.01))(t), np.float64),
      "wsd": np.r_[np.full(int(0.8 * n), peak), np.linspace(peak, 0.01 * peak, n - int(0.8 * n))],
  }


TRUE = {"L0": 0.3, "A": 0.5, "alpha": 0.6, "C": 0.004}


def _law_curve(lrs, noise=0.0, seed=0):
  with jax.enable_x64(True):
    s1, s2 = scaling.lr_areas(jnp.asarray(lrs, jnp.float64), LAM)
    loss = np.asarray(scaling.annealing_loss(s1, s2, **TRUE))
  return loss * np.exp(noise * np.random.default_rng(seed).standard_normal(loss.shape))


def test_fit_on_constant_and_cosine_recovers_the_law_and_predicts_wsd():
  sched = _schedules()
  steps = np.arange(9, 2000, 10)
  fit = scaling.fit_lr_annealing([steps, steps], [sched["constant"], sched["cosine"]],
                                 [_law_curve(sched["constant"])[steps], _law_curve(sched["cosine"])[steps]])
  for k, v in TRUE.items():
    assert fit[k] == pytest.approx(v, rel=1e-3), k
  wsd_true = _law_curve(sched["wsd"])
  np.testing.assert_allclose(scaling.predict_curve(fit, sched["wsd"]), wsd_true, rtol=1e-4)
  np.testing.assert_allclose(scaling.predict_curve(fit, sched["wsd"], steps=[5, 1999]), wsd_true[[5, 1999]],
                             rtol=1e-4)
  index, finals = scaling.best_schedule(fit, [sched["constant"], sched["cosine"], sched["wsd"]])
  assert index in (1, 2) and finals[0] > max(finals[1], finals[2])  # annealing beats constant


def test_fit_with_noise_has_intervals_covering_the_truth():
  sched = _schedules()
  steps = np.arange(9, 2000, 20)
  fit = scaling.fit_lr_annealing([steps, steps], [sched["constant"], sched["cosine"]],
                                 [_law_curve(sched["constant"], 0.005, 1)[steps],
                                  _law_curve(sched["cosine"], 0.005, 2)[steps]], bootstrap=50)
  for k, v in TRUE.items():
    lo, hi = fit.ci[k]
    assert lo <= v <= hi, (k, fit.ci[k])


def test_errors_name_the_argument():
  lrs = np.full(20, 0.1)
  with pytest.raises(ValueError, match="lam must lie in"):
    scaling.lr_areas(jnp.asarray(lrs), lam=1.0)
  with pytest.raises(ValueError, match="warmup must be smaller"):
    scaling.lr_areas(jnp.asarray(lrs), warmup=20)
  with pytest.raises(ValueError, match="lrs must be 1-D"):
    scaling.lr_areas(jnp.ones((2, 3)))
  with pytest.raises(TypeError, match="lrs must be floating"):
    scaling.lr_areas(jnp.arange(3))
  with pytest.raises(ValueError, match="lrs must be finite"):
    scaling.lr_areas(jnp.asarray([0.1, -0.1]))
  with pytest.raises(ValueError, match="too few points to fit 4"):
    scaling.fit_lr_annealing(np.array([3, 5, 7]), lrs, np.array([1.0, 0.9, 0.8]))
  with pytest.raises(ValueError, match=r"losses\[0\] must have one value per step"):
    scaling.fit_lr_annealing(np.array([3, 5, 7, 9, 11]), lrs, np.array([1.0, 0.9, 0.8, 0.7]))
  with pytest.raises(ValueError, match=r"steps\[0\] must be 1-D integer indices"):
    scaling.fit_lr_annealing(np.array([3, 5, 7, 25]), lrs, np.ones(4))
  with pytest.raises(ValueError, match=r"losses\[0\] must be finite and > 0"):
    scaling.fit_lr_annealing(np.array([3, 5, 7, 9]), lrs, np.array([1.0, 0.0, 0.8, 0.7]))
  with pytest.raises(ValueError, match="must be >= warmup"):
    scaling.fit_lr_annealing(np.array([3, 5, 7, 9]), lrs, np.ones(4), warmup=4)
  with pytest.raises(ValueError, match="same number of curves"):
    scaling.fit_lr_annealing([np.arange(4)], [lrs, lrs], [np.ones(4)])
  with pytest.raises(TypeError, match="fit_lr_annealing"):
    scaling.predict_curve(scaling.Fit("chinchilla", {}, 0.0, 5), lrs)
