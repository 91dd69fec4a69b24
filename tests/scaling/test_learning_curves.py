"""Learning curves of Hestness et al. [529] (paperlab.scaling.learning_curves). Oracles: closed forms -- points of a
known power law plus floor (and of the three-region curve with a small-data plateau) fitted back; the data-collection
part against sklearn.model_selection.learning_curve is in tests/parity/test_scaling_learning_curve_sklearn.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import scaling

M = np.round(np.geomspace(50, 1400, 8))


def test_learning_curve_is_min_of_plateau_and_power_law_and_jits():
  params = {"alpha": 2.0, "beta": -0.5, "gamma": 0.01, "plateau": 0.2}
  m = np.array([25.0, 100.0, 400.0])
  expected = np.minimum(2.0 * m ** -0.5 + 0.01, 0.2)  # 0.41 -> 0.2 (plateau), 0.21 -> 0.2, 0.11
  np.testing.assert_allclose(np.asarray(scaling.learning_curve(m, params)), expected, rtol=1e-6)
  assert float(scaling.learning_curve(100.0, {"alpha": 2.0, "beta": -0.5, "gamma": 0.01})) == pytest.approx(0.21)
  out = jax.jit(lambda x: scaling.learning_curve(x, params))(jnp.asarray(m, jnp.float32))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6)


@settings(max_examples=12, deadline=None)
@given(alpha=st.floats(0.2, 20.0), beta=st.floats(-1.0, -0.1), gamma=st.floats(0.001, 0.05))
def test_fit_recovers_a_known_power_law_plus_floor(alpha, beta, gamma):
  err = alpha * M ** beta + gamma
  fit = scaling.fit_learning_curve(M, err, regions=False)
  assert fit.law == "learning_curve" and fit["num_plateau"] == 0 and fit["plateau"] == np.inf
  np.testing.assert_allclose(np.asarray(scaling.learning_curve(M, fit), np.float64), err, rtol=1e-4)
  assert fit["beta"] == pytest.approx(beta, abs=2e-3)


def test_regions_keep_no_plateau_on_a_pure_power_law_and_order_does_not_matter():
  err = 1.0 * M ** -0.45 + 0.01
  fit = scaling.fit_learning_curve(M[::-1], err[::-1])
  assert fit["num_plateau"] == 0 and fit["breakpoint"] == 50.0
  assert fit["beta"] == pytest.approx(-0.45, rel=1e-4) and fit["gamma"] == pytest.approx(0.01, rel=1e-3)


def test_regions_find_the_small_data_plateau():
  err = np.minimum(0.5 * M ** -0.4 + 0.01, 0.08)  # the first three sizes sit on the 0.08 plateau
  assert np.sum(err == 0.08) == 3
  fit = scaling.fit_learning_curve(M, err)
  assert fit["num_plateau"] == 3 and fit["breakpoint"] == M[3] and fit["plateau"] == pytest.approx(0.08)
  assert fit["beta"] == pytest.approx(-0.4, rel=1e-4) and fit["alpha"] == pytest.approx(0.5, rel=1e-3)
  np.testing.assert_allclose(np.asarray(scaling.learning_curve(M, fit), np.float64), err, rtol=1e-4)
  # without regions the plateau drags the exponent towards zero
  assert scaling.fit_learning_curve(M, err, regions=False)["beta"] > -0.3


def test_bootstrap_interval_covers_the_exponent():
  rng = np.random.default_rng(0)
  m = np.round(np.geomspace(50, 5000, 12))
  err = (1.0 * m ** -0.45 + 0.01) * np.exp(0.02 * rng.standard_normal(12))
  fit = scaling.fit_learning_curve(m, err, regions=False, bootstrap=20)
  low, high = fit.ci["beta"]
  assert low < high and low <= -0.45 <= high and len(fit.samples["beta"]) == 20


def test_nested_subsets_are_nested_permutations():
  orders = scaling.nested_subsets(100, (0, 7))
  assert orders.shape == (2, 100)
  for row, seed in zip(orders, (0, 7)):
    np.testing.assert_array_equal(row, np.random.default_rng(seed).permutation(100))
  assert not np.array_equal(orders[0], orders[1])


def test_data_scaling_calls_train_fn_on_the_first_m_of_each_shuffle_batched_or_not():
  pool = np.random.default_rng(1).normal(size=200)
  seen = []

  def train_fn(idx, seed):
    seen.append((len(idx), seed))
    return {"mean": float(pool[idx].mean()), "n": float(len(idx))}

  out = scaling.data_scaling(train_fn, [10, 50, 200], num_examples=200, seeds=(3, 4))
  assert seen == [(10, 3), (50, 3), (200, 3), (10, 4), (50, 4), (200, 4)]
  np.testing.assert_array_equal(out["n"], [[10, 50, 200]] * 2)
  assert out["mean"][0, 2] == pytest.approx(pool.mean())  # all of the pool

  def batched(orders, sizes, seeds):
    assert orders.shape == (2, 200) and list(seeds) == [3, 4]
    return np.array([[pool[o[:m]].mean() for m in sizes] for o in orders])

  np.testing.assert_allclose(scaling.data_scaling(batched, [10, 50, 200], num_examples=200, seeds=(3, 4),
                                                  batched=True), out["mean"], rtol=1e-12)


def test_bad_inputs_raise_naming_the_argument():
  with pytest.raises(ValueError, match="m must hold distinct"):
    scaling.fit_learning_curve([10, 10, 20, 40], [0.3, 0.3, 0.2, 0.1])
  with pytest.raises(ValueError, match="err must be finite and > 0"):
    scaling.fit_learning_curve([10, 20, 40], [0.3, 0.0, 0.1])
  with pytest.raises(ValueError, match="too few points"):
    scaling.fit_learning_curve([10, 20], [0.3, 0.2])
  with pytest.raises(TypeError, match="regions must be a bool"):
    scaling.fit_learning_curve(M, M ** -0.5, regions="yes")
  with pytest.raises(ValueError, match="m must be finite and > 0"):
    scaling.learning_curve(0.0, {"alpha": 1.0, "beta": -0.5, "gamma": 0.0})
  with pytest.raises(TypeError, match="alpha, beta, gamma"):
    scaling.learning_curve(10.0, {"a": 1.0})
  with pytest.raises(ValueError, match="sizes must be"):
    scaling.data_scaling(lambda i, s: 0.1, [50, 20], num_examples=100)
  with pytest.raises(ValueError, match="sizes must be"):
    scaling.data_scaling(lambda i, s: 0.1, [50, 200], num_examples=100)
  with pytest.raises(ValueError, match="num_examples must be a positive int"):
    scaling.nested_subsets(0, (0,))
  with pytest.raises(ValueError, match="seeds must be"):
    scaling.nested_subsets(10, ())
  with pytest.raises(ValueError, match="finite metric"):
    scaling.data_scaling(lambda i, s: float("nan"), [5], num_examples=10)
  with pytest.raises(TypeError, match="train_fn must be callable"):
    scaling.data_scaling(None, [5], num_examples=10)
