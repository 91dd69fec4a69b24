"""Loss-to-loss prediction [136], the over-training law and loss -> error [244], the two-step task ladder [156]
(paperlab.scaling.transfer). Oracles: closed forms -- data generated from known constants are fitted back, the
over-training law is Chinchilla reparametrized, and the loss-to-loss law holds exactly between two Chinchilla laws
at a fixed tokens-per-parameter ratio."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import scaling

GRID = scaling.CHINCHILLA_INIT_GRID[::450]  # 10 of the paper's 4500 starts (the full grid costs ~1 CPU-minute)
# 12 starts (log a, log b, e, eta) around the default grid's range (its 108 starts cost ~4 CPU-s per fit)
OVERTRAINED_GRID = [(a, b, e, eta) for a, b in ((0.0, 0.0), (10.0, 10.0)) for e in (-1.0, 1.0)
                    for eta in (0.05, 0.3, 0.6)]


def _two_laws(n):
  """Losses of the same runs under two Chinchilla laws with alpha = beta on each side, D = 20 N."""
  x = scaling.ChinchillaParams(1.7, 400.0, 400.0, 0.3, 0.3)
  y = scaling.ChinchillaParams(2.4, 900.0, 700.0, 0.4, 0.4)
  d = 20.0 * n
  lx = np.asarray(scaling.chinchilla_loss(n, d, x), np.float64)
  ly = np.asarray(scaling.chinchilla_loss(n, d, y), np.float64)
  cx, cy = x.A + x.B * 20.0 ** -x.alpha, y.A + y.B * 20.0 ** -y.alpha  # L - E = c N^-alpha on this line
  kappa = y.alpha / x.alpha
  return x, y, lx, ly, {"K": cy / cx ** kappa, "kappa": kappa}


def test_loss_to_loss_holds_exactly_between_two_chinchilla_laws_and_is_recovered():
  n = np.geomspace(1e7, 1e10, 12)
  x, y, lx, ly, truth = _two_laws(n)
  np.testing.assert_allclose(np.asarray(scaling.loss_to_loss(lx, scaling.LossToLossParams(
      truth["K"], truth["kappa"], x.E, y.E))), ly, rtol=1e-5)
  fit = scaling.fit_loss_to_loss(lx, ly, x.E, y.E)
  assert fit["kappa"] == pytest.approx(truth["kappa"], rel=1e-4)
  assert fit["K"] == pytest.approx(truth["K"], rel=1e-3)


def test_loss_to_loss_takes_e_from_each_sides_power_law_and_intervals_cover_kappa():
  n = np.geomspace(1e6, 1e11, 16)
  x, y, lx, ly, truth = _two_laws(n)
  rng = np.random.default_rng(0)
  lx_n, ly_n = lx * np.exp(1e-3 * rng.standard_normal(16)), ly * np.exp(1e-3 * rng.standard_normal(16))
  fit = scaling.fit_loss_to_loss(lx_n, ly_n, N=n, bootstrap=10)
  assert fit["Ex"] == pytest.approx(x.E, rel=0.05) and fit["Ey"] == pytest.approx(y.E, rel=0.05)
  assert fit["kappa"] == pytest.approx(truth["kappa"], rel=0.05)
  low, high = fit.ci["kappa"]
  assert low <= truth["kappa"] <= high
  # a predicted larger model: the held-out point of the exact law
  big_x = float(scaling.chinchilla_loss(1e12, 2e13, x))
  assert float(scaling.loss_to_loss(big_x, fit)) == pytest.approx(float(scaling.chinchilla_loss(1e12, 2e13, y)),
                                                                  rel=0.01)


def test_overtrained_law_is_chinchilla_with_equal_exponents():
  with jax.enable_x64(True):
    p = scaling.ChinchillaParams(1.69, 406.4, 410.7, 0.3, 0.3)
    q = scaling.overtrained_from_chinchilla(p)
    C = jnp.asarray(np.geomspace(1e17, 1e24, 8))
    M = jnp.asarray([5.0, 20.0, 40.0, 80.0, 160.0, 320.0, 10.0, 1.0])
    N, D = jnp.sqrt(C / (6 * M)), jnp.sqrt(C * M / 6)
    np.testing.assert_allclose(scaling.overtrained_loss(C, M, q), scaling.chinchilla_loss(N, D, p), rtol=1e-12,
                               atol=1e-8)
    assert q.eta == 0.15
  with pytest.raises(ValueError, match="alpha == beta"):
    scaling.overtrained_from_chinchilla(scaling.CHINCHILLA)


def test_fit_overtrained_recovers_constants_and_extrapolates_in_m():
  p = scaling.ChinchillaParams(1.69, 406.4, 410.7, 0.3, 0.3)
  truth = scaling.overtrained_from_chinchilla(p)
  rng = np.random.default_rng(1)
  C = np.tile(np.geomspace(1e17, 1e21, 8), 2)
  M = np.repeat([20.0, 40.0], 8)
  L = np.asarray(scaling.overtrained_loss(C, M, truth), np.float64) * np.exp(1e-3 * rng.standard_normal(16))
  fit = scaling.fit_overtrained(C, M, L, init_grid=OVERTRAINED_GRID, bootstrap=10)
  assert fit["eta"] == pytest.approx(truth.eta, rel=0.05)
  assert fit["E"] == pytest.approx(truth.E, rel=0.05)
  lo, hi = fit.ci["eta"]
  assert lo <= truth.eta <= hi
  C160 = np.geomspace(1e17, 1e21, 5)
  pred = np.asarray(scaling.overtrained_loss(C160, 160.0, fit))
  np.testing.assert_allclose(pred, np.asarray(scaling.overtrained_loss(C160, 160.0, truth)), rtol=0.01)


def test_fit_loss_to_error_recovers_the_exponential():
  truth = scaling.LossToErrorParams(0.9, 5.0, 1.5)
  L = np.linspace(1.2, 3.5, 12)
  err = np.asarray(scaling.loss_to_error(L, truth), np.float64)
  fit = scaling.fit_loss_to_error(L, err)
  for k, v in truth._asdict().items():
    assert fit[k] == pytest.approx(v, rel=0.01), k


def test_fit_sigmoid_recovers_a_falling_accuracy_curve():
  truth = scaling.SigmoidParams(0.6, 0.3, -4.0, 1.5)
  x = np.linspace(0.5, 2.5, 15)
  y = np.asarray(scaling.task_sigmoid(x, truth), np.float64)
  fit = scaling.fit_sigmoid(x, y)
  for k, v in truth._asdict().items():
    assert fit[k] == pytest.approx(v, rel=0.05), k


def test_task_ladder_two_steps_recover_both_laws_and_predict_a_larger_model():
  law = scaling.ChinchillaParams(0.5, 60.0, 80.0, 0.4, 0.35)
  sig = scaling.SigmoidParams(0.7, 0.25, -5.0, 1.2)
  N = np.repeat(np.geomspace(1e5, 1e7, 4), 3)
  D = np.tile(np.geomspace(2e6, 2e8, 3), 4)
  loss = np.asarray(scaling.chinchilla_loss(N, D, law), np.float64)
  acc = np.asarray(scaling.task_sigmoid(loss, sig), np.float64)
  fits = scaling.fit_task_ladder(N, D, loss, acc, init_grid=GRID)
  for k in ("alpha", "beta", "E"):
    assert fits[0][k] == pytest.approx(getattr(law, k), rel=0.05), k
  for k in ("a", "b", "k", "L0"):
    assert fits[1][k] == pytest.approx(getattr(sig, k), rel=0.05), k
  target = float(scaling.task_sigmoid(scaling.chinchilla_loss(1e8, 2e9, law), sig))
  predict = jax.jit(lambda n, d: scaling.predict_task(fits, n, d))
  assert float(predict(1e8, 2e9)) == pytest.approx(target, abs=0.01)


def test_laws_jit_and_vmap():
  q = scaling.OvertrainedParams(1.7, 500.0, 500.0, 0.15)
  C = jnp.geomspace(1e18, 1e20, 3)
  out = jax.jit(jax.vmap(lambda m: scaling.overtrained_loss(C, m, q)))(jnp.asarray([20.0, 40.0]))
  assert out.shape == (2, 3) and out.dtype == jnp.float32
  e = jax.jit(lambda l: scaling.loss_to_error(l, scaling.LossToErrorParams(0.9, 20.0, 2.5)))(jnp.ones(4))
  assert e.dtype == jnp.float32
  s = jax.jit(lambda l: scaling.loss_to_loss(l, scaling.LossToLossParams(1.0, 1.3, 1.0, 2.0)))(jnp.full(3, 2.0))
  np.testing.assert_allclose(s, 3.0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: scaling.fit_loss_to_loss([3.0, 2.0], [4.0, 3.0]), ValueError, "Ex is None"),
    (lambda: scaling.fit_loss_to_loss([3.0], [4.0], 1.0, 1.0), ValueError, "too few points"),
    (lambda: scaling.fit_loss_to_loss([3.0, 2.0], [4.0, 3.0, 2.5], 1.0, 1.0), ValueError, "same length"),
    (lambda: scaling.fit_loss_to_loss([3.0, 2.0], [4.0, 3.0], 2.5, 1.0), ValueError, "Ex=2.5"),
    (lambda: scaling.fit_loss_to_loss([[3.0, 2.0]], [[4.0, 3.0]], 1.0, 1.0), ValueError, "1-D"),
    (lambda: scaling.fit_overtrained([1e18] * 4, [20.0] * 4, [3.0, 2.9, 2.8, 2.7]), ValueError, "distinct"),
    (lambda: scaling.fit_overtrained([1e18, 1e19, 1e20], [20.0, 40.0, 20.0], [3.0, 2.9, 2.8]), ValueError,
     "too few points"),
    (lambda: scaling.fit_overtrained([1e18, -1.0, 1e20, 1e21], [20, 40, 20, 40], [3, 2.9, 2.8, 2.7]), ValueError,
     "C must be finite and > 0"),
    (lambda: scaling.fit_loss_to_error([1.0, 2.0], [0.1, 0.2]), ValueError, "too few points"),
    (lambda: scaling.fit_sigmoid([1.0, 2.0, 3.0], [0.9, 0.5, 0.3]), ValueError, "too few points"),
    (lambda: scaling.fit_sigmoid(np.ones((4, 1)), np.ones((4, 1))), ValueError, "1-D"),
    (lambda: scaling.fit_task_ladder([1e5] * 4, [1e6] * 4, [2.0] * 4, [0.5] * 4), ValueError, "too few points"),
    (lambda: scaling.predict_task("fits", 1e6, 1e7), TypeError, "fit_task_ladder"),
    (lambda: scaling.loss_to_error(1.0, (0.9, 1.0)), TypeError, "LossToErrorParams"),
])
def test_clear_errors(call, exc, match):
  with pytest.raises(exc, match=match):
    call()
