"""Unit tests for paperlab.optim.schedules: closed-form values, continuity, invariances, jit, errors."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab.optim import (angular_update, cooldown_factor, effective_lr, equilibrium_angular_update,
                            last_iterate_bound, lr_range_test, one_cycle, one_cycle_momentum,
                            optimal_base_lr, power_schedule, regime_adaptation, wsd_schedule)


def _values(schedule, n):
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(n)))


# ----------------------------------------------------------------------------------------------- 1cycle
def test_one_cycle_values_at_phase_boundaries():
  T, lr = 1000, 0.5
  s = one_cycle(T, lr, pct_start=0.45, div_factor=10.0, final_div_factor=100.0)
  np.testing.assert_allclose(float(s(0)), lr / 10, rtol=1e-6)
  np.testing.assert_allclose(float(s(449)), lr, rtol=1e-6)            # pct_start * T - 1
  np.testing.assert_allclose(float(s(898)), lr / 10, rtol=1e-6)       # 2 pct_start * T - 2
  np.testing.assert_allclose(float(s(999)), lr / 1000, rtol=1e-6)     # T - 1: annihilated
  np.testing.assert_allclose(float(s(5000)), lr / 1000, rtol=1e-6)    # stays there
  np.testing.assert_allclose(float(s(224.5)), (lr / 10 + lr) / 2, rtol=1e-6)  # linear in between


def test_one_cycle_is_continuous_and_symmetric():
  T = 200
  v = _values(one_cycle(T, 1.0, pct_start=0.4), T)
  assert np.max(np.abs(np.diff(v))) <= 1.0 * (1 - 0.1) / (0.4 * T - 1) + 1e-6
  up = v[: int(0.4 * T)]
  down = v[int(0.4 * T) - 1: int(0.8 * T) - 1]
  np.testing.assert_allclose(up, down[::-1], rtol=1e-5)


def test_one_cycle_momentum_runs_inversely_to_lr():
  T = 300
  lr = _values(one_cycle(T, 1.0), T)
  mom = _values(one_cycle_momentum(T), T)
  assert np.argmax(lr) == np.argmin(mom)
  np.testing.assert_allclose([mom[0], mom.min(), mom[-1]], [0.95, 0.85, 0.95], rtol=1e-6)
  # within the cycle, LR and momentum are affine images of each other
  cycle = slice(0, int(2 * 0.45 * T) - 1)
  np.testing.assert_allclose((lr[cycle] - 0.1) / 0.9, (0.95 - mom[cycle]) / 0.1, atol=1e-5)


class OneCycleWithInjectHyperparamsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_cycle_drives_inject_hyperparams_sgd(self):
    T = 20
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=one_cycle(T, 0.3), momentum=one_cycle_momentum(T))
    params = {"w": jnp.ones(3)}
    state = opt.init(params)

    @self.variant
    def step(state):
      _, state = opt.update({"w": jnp.ones(3)}, state, params)
      return state

    for _ in range(10):
      state = step(state)
    np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), float(one_cycle(T, 0.3)(9)),
                               rtol=1e-6)
    np.testing.assert_allclose(float(state.hyperparams["momentum"]), float(one_cycle_momentum(T)(9)), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(total_steps=-5, max_lr=0.1), "total_steps"),
    (dict(total_steps=100, max_lr=-0.1), "max_lr"),
    (dict(total_steps=100, max_lr=0.1, pct_start=0.6), "pct_start"),
    (dict(total_steps=100, max_lr=0.1, pct_start=0.0), "pct_start"),
    (dict(total_steps=100, max_lr=0.1, div_factor=0.5), "div_factor"),
    (dict(total_steps=100, max_lr=0.1, anneal_strategy="exp"), "anneal_strategy"),
    (dict(total_steps=4, max_lr=0.1, pct_start=0.2), "phase with no steps"),
])
def test_one_cycle_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    one_cycle(**kwargs)


def test_one_cycle_rejects_non_integer_steps_and_bad_momenta():
  with pytest.raises(TypeError, match="total_steps"):
    one_cycle(100.0, 0.1)
  with pytest.raises(ValueError, match="base_momentum must be <= max_momentum"):
    one_cycle_momentum(100, base_momentum=0.95, max_momentum=0.9)
  with pytest.raises(ValueError, match="max_momentum"):
    one_cycle_momentum(100, max_momentum=1.0)


# ----------------------------------------------------------------------------------------- LR range test
def _quadratic_step(curvature):
  """SGD on f(x) = curvature * ||x||^2 / 2: diverges exactly when lr > 2 / curvature."""

  def step_fn(x, lr, t):
    del t
    loss = 0.5 * curvature * jnp.sum(x * x)
    return x - lr * curvature * x, loss

  return step_fn


def test_lr_range_test_suggests_an_lr_below_the_divergence_threshold():
  h = 4.0
  res = jax.jit(lambda x: lr_range_test(_quadratic_step(h), x, lr_min=1e-4, lr_max=10.0, num_steps=200,
                                        smoothing=0.0))(jnp.ones(5))
  lrs = np.asarray(res.lrs)
  np.testing.assert_allclose([lrs[0], lrs[-1]], [1e-4, 10.0], rtol=1e-5)
  np.testing.assert_allclose(np.diff(np.log(lrs)), math.log(1e5) / 199, rtol=1e-3)
  # the loss stops falling once |1 - lr h| >= 1, i.e. lr >= 2 / h
  assert 0.2 / h < float(res.suggested_lr) <= 2.0 / h
  assert lrs[int(res.diverged_at)] > 2.0 / h
  assert int(res.diverged_at) < 200


def test_lr_range_test_smoothing_is_bias_corrected_ema():
  losses = jnp.array([4.0, 2.0, 1.0, 3.0])
  step = lambda s, lr, t: (s, losses[t])
  res = lr_range_test(step, 0.0, num_steps=4, smoothing=0.5, divergence_factor=100.0)
  m, expect = 0.0, []
  for i, l in enumerate([4.0, 2.0, 1.0, 3.0]):
    m = 0.5 * m + 0.5 * l
    expect.append(m / (1 - 0.5 ** (i + 1)))
  np.testing.assert_allclose(np.asarray(res.smoothed_losses), expect, rtol=1e-6)
  assert int(res.diverged_at) == 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr_min=1.0, lr_max=0.1), "lr_min must be < lr_max"),
    (dict(lr_min=-1.0), "lr_min"),
    (dict(num_steps=1), "num_steps"),
    (dict(smoothing=1.0), "smoothing"),
    (dict(divergence_factor=1.0), "divergence_factor"),
    (dict(spacing="log"), "spacing"),
])
def test_lr_range_test_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lr_range_test(_quadratic_step(1.0), jnp.ones(2), **kwargs)


# ------------------------------------------------------------------------------------------------- WSD
@pytest.mark.parametrize("decay_type", ["linear", "1-sqrt", "1-square", "cosine"])
def test_cooldown_shapes_go_from_one_to_final_ratio_monotonically(decay_type):
  p = jnp.linspace(0, 1, 101)
  v = np.asarray(cooldown_factor(p, decay_type, 0.1))
  np.testing.assert_allclose([v[0], v[-1]], [1.0, 0.1], atol=1e-6)
  assert np.all(np.diff(v) <= 1e-7)


def test_exp_cooldown_is_geometric():
  v = np.asarray(cooldown_factor(jnp.array([0.0, 0.5, 1.0]), "exp", 0.01))
  np.testing.assert_allclose(v, [1.0, 0.1, 0.01], rtol=1e-6)
  with pytest.raises(ValueError, match="final_ratio must be > 0"):
    cooldown_factor(0.5, "exp", 0.0)


def test_wsd_linear_equals_trapezoid_interpolation():
  T, W, D = 100, 10, 20
  ours = _values(wsd_schedule(3.0, T, warmup_steps=W, decay_steps=D), T + 5)
  ref = np.interp(np.arange(T + 5), [0, W, T - D, T], [0.0, 3.0, 3.0, 0.0])
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_wsd_stable_phase_does_not_depend_on_total_steps():
  short = _values(wsd_schedule(1.0, 1000, warmup_steps=50, decay_fraction=0.2), 800)
  long = _values(wsd_schedule(1.0, 4000, warmup_steps=50, decay_fraction=0.2), 800)
  np.testing.assert_array_equal(short, long)


def test_wsd_decay_fraction_sets_cooldown_start():
  v = _values(wsd_schedule(1.0, 100, decay_fraction=0.25, decay_type="1-sqrt"), 101)
  assert v[74] == 1.0 and v[75] == 1.0 and v[76] < 1.0 and v[100] == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(peak_value=-1.0, total_steps=10), "peak_value"),
    (dict(peak_value=1.0, total_steps=10, warmup_steps=-1), "warmup_steps"),
    (dict(peak_value=1.0, total_steps=10, decay_fraction=1.5), "decay_fraction"),
    (dict(peak_value=1.0, total_steps=10, warmup_steps=6, decay_steps=5), "warmup_steps \\+ decay_steps"),
    (dict(peak_value=1.0, total_steps=10, decay_type="step"), "decay_type"),
    (dict(peak_value=1.0, total_steps=10, decay_type="exp"), "final_value_ratio"),
])
def test_wsd_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    wsd_schedule(**kwargs)


# ----------------------------------------------------------------------------------------------- Power
def test_power_schedule_follows_the_power_law_below_the_cap():
  beta, a, b, tps = 32.0, 4.0, -0.51, 32 * 128
  s = power_schedule(beta, a=a, b=b, lr_max=0.02, tokens_per_step=tps)
  steps = np.array([10_000, 100_000, 1_000_000])
  lr = np.asarray(jax.vmap(s)(jnp.asarray(steps)))
  n = steps * tps
  assert np.all(lr < 0.02)
  assert float(s(100)) == pytest.approx(0.02)  # beta a n^b > lr_max early on: capped
  np.testing.assert_allclose(lr * n ** (-b), beta * a, rtol=1e-4)   # lr(n) n^{-b} = beta a


def test_power_schedule_is_capped_and_warms_up_linearly():
  s = power_schedule(256.0, lr_max=0.02, tokens_per_step=256 * 64, warmup_steps=100)
  v = _values(s, 300)
  assert np.all(v <= 0.02 + 1e-9)
  target = float(s(100))
  np.testing.assert_allclose(v[:100], np.arange(100) / 100 * target, rtol=1e-5, atol=1e-9)
  assert np.all(np.diff(v[100:]) <= 1e-9)


def test_power_schedule_decay_is_continuous_and_ends_at_zero():
  s = power_schedule(8.0, tokens_per_step=8 * 32, warmup_steps=10, total_steps=1000, decay_steps=100)
  v = _values(s, 1001)
  np.testing.assert_allclose(v[900], v[899], rtol=2e-3)
  assert v[1000] == 0.0
  assert np.all(np.diff(v[900:]) <= 0)


def test_power_schedule_value_does_not_depend_on_total_steps_before_the_decay():
  a = _values(power_schedule(8.0, total_steps=1000, decay_steps=100), 900)
  b = _values(power_schedule(8.0, total_steps=4000, decay_steps=400), 900)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0.0), "batch_size"),
    (dict(batch_size=8.0, b=0.5), "b must lie"),
    (dict(batch_size=8.0, a=-1.0), "a must lie"),
    (dict(batch_size=8.0, decay_steps=10), "total_steps is required"),
    (dict(batch_size=8.0, warmup_steps=8, decay_steps=5, total_steps=10), "warmup_steps \\+ decay_steps"),
])
def test_power_schedule_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    power_schedule(**kwargs)


# ------------------------------------------------------------------------------- convex last-iterate bound
def _bound_numpy(lrs, D, G):
  """The three terms of Defazio et al. (2023, Thm. 10) written out with loops, in float64."""
  lrs = np.asarray(lrs, np.float64)
  T = len(lrs)
  total = lrs.sum()
  t1 = D ** 2 / (2 * total)
  t2 = G ** 2 * np.sum(lrs ** 2) / (2 * total)
  t3 = 0.0
  for k in range(T - 1):
    t3 += lrs[k] / lrs[k + 1:].sum() * G ** 2 * np.sum(lrs[k:] ** 2) / lrs[k:].sum()
  return t1 + t2 + 0.5 * t3


@pytest.mark.parametrize("name", ["constant", "cosine", "wsd"])
def test_last_iterate_bound_matches_explicit_sum(name):
  T = 300
  sched = {"constant": lambda t: 0.05, "cosine": optax.cosine_decay_schedule(0.05, T + 1),
           "wsd": wsd_schedule(0.05, T + 1, decay_fraction=0.2)}[name]
  lrs = np.array([float(sched(t)) for t in range(T)])
  with jax.enable_x64(True):
    ours = float(jax.jit(last_iterate_bound)(jnp.asarray(lrs), 2.0, 0.5))
  np.testing.assert_allclose(ours, _bound_numpy(lrs, 2.0, 0.5), rtol=1e-10)


def test_optimal_base_lr_for_constant_schedule_is_harmonic():
  T, D, G = 1000, 1.5, 2.0
  gamma, rate = optimal_base_lr(lambda t: jnp.ones((), jnp.float32), T, D, G)
  harmonic = sum(1.0 / k for k in range(1, T))
  np.testing.assert_allclose(float(rate), D * G * math.sqrt((1 + harmonic) / T), rtol=1e-5)
  np.testing.assert_allclose(float(gamma), D / (G * math.sqrt(T * (1 + harmonic))), rtol=1e-5)


def test_optimal_base_lr_minimises_the_bound():
  s = wsd_schedule(1.0, 500, decay_fraction=0.2)
  shape = jax.vmap(s)(jnp.arange(500))
  gamma, rate = optimal_base_lr(shape)
  np.testing.assert_allclose(float(last_iterate_bound(gamma * shape)), float(rate), rtol=1e-5)
  for f in (0.7, 1.4):
    assert float(last_iterate_bound(f * gamma * shape)) > float(rate)


def test_bound_prefers_wsd_and_cosine_over_constant():
  """Schaipp et al.: cooldown removes the log T term of the constant schedule (T=1000, G=D=1)."""
  T = 1000
  rates = {n: float(optimal_base_lr(s, T)[1]) for n, s in {
      "constant": lambda t: jnp.ones((), jnp.float32), "cosine": optax.cosine_decay_schedule(1.0, T),
      "wsd": wsd_schedule(1.0, T, decay_fraction=0.2)}.items()}
  assert rates["wsd"] < 0.8 * rates["constant"] and rates["cosine"] < 0.8 * rates["constant"]
  assert abs(rates["wsd"] - rates["cosine"]) <= 0.1 * rates["cosine"]


def test_bound_rejects_bad_arguments():
  with pytest.raises(ValueError, match="D must"):
    last_iterate_bound(jnp.ones(3), D=0.0)
  with pytest.raises(ValueError, match="total_steps is required"):
    optimal_base_lr(lambda t: 1.0)


# ------------------------------------------------------------------------------------ regime adaptation
def test_regime_adaptation_stretches_every_boundary():
  base = optax.piecewise_constant_schedule(0.1, {30: 0.1, 60: 0.1})
  adapted = regime_adaptation(base, 4.0)
  t = jnp.arange(100)
  np.testing.assert_allclose(np.asarray(jax.vmap(adapted)(4 * t)), np.asarray(jax.vmap(base)(t)), rtol=1e-7)
  assert float(adapted(119)) == pytest.approx(0.1) and float(adapted(120)) == pytest.approx(0.01)


def test_regime_adaptation_rejects_bad_arguments():
  with pytest.raises(ValueError, match="batch_ratio"):
    regime_adaptation(optax.constant_schedule(1.0), 0.0)
  with pytest.raises(TypeError, match="schedule"):
    regime_adaptation(0.1, 2.0)


# ------------------------------------------------------------------------------- weight-decay diagnostics
def test_sgd_with_weight_decay_reaches_rotational_equilibrium():
  """Scale-invariant weight, gradient of fixed norm x ||w|| orthogonal to w: the angle -> sqrt(2 eta lambda)."""
  eta, lam, d = 0.1, 2e-2, 64

  def step(w, key):
    r = jax.random.normal(key, (d,))
    r = r - jnp.vdot(r, w) / jnp.vdot(w, w) * w
    g = r / jnp.linalg.norm(r) / jnp.linalg.norm(w)   # ||g|| = 1 / ||w||, g orthogonal to w
    new = w - eta * (g + lam * w)
    return new, angular_update(w, new)

  w0 = jax.random.normal(jax.random.key(0), (d,)) / 8.0
  _, angles = jax.jit(lambda w: jax.lax.scan(step, w, jax.random.split(jax.random.key(1), 3000)))(w0)
  steady = float(jnp.mean(angles[-1000:]))
  expected = float(equilibrium_angular_update(eta, lam))
  assert abs(steady - expected) <= 0.05 * expected


def test_effective_lr_and_angle_closed_forms():
  params = {"a": jnp.full((4,), 0.5), "b": jnp.array([3.0, 4.0])}
  eff = effective_lr(params, 0.1)
  np.testing.assert_allclose([float(eff["a"]), float(eff["b"])], [0.1, 0.1 / 25], rtol=1e-6)
  ang = angular_update({"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([2.0, 2.0])})
  np.testing.assert_allclose(float(ang["w"]), math.pi / 4, rtol=1e-6)
  tiny = angular_update(jnp.array([1.0, 0.0]), jnp.array([1.0, 1e-4]))
  np.testing.assert_allclose(float(tiny), 1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="weight_decay"):
    equilibrium_angular_update(0.1, -1.0)
