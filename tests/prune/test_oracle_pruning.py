"""Unit tests of the oracle-pruning analysis (Feng et al., "Is Oracle Pruning the True Oracle?", arXiv:2412.00143):
rank correlations, per-structure removal losses, exact-count random structured masks and the host study loop."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.prune as pr

_tau = jax.jit(pr.kendall_tau)


def test_tau_and_rho_of_monotone_and_reversed_orders():
  x = jnp.asarray([0.3, 1.0, 2.0, 5.0, 9.0])
  assert float(pr.kendall_tau(x, x ** 3)) == pytest.approx(1.0)
  assert float(pr.kendall_tau(x, -x)) == pytest.approx(-1.0)
  assert float(pr.spearman_rho(x, jnp.exp(x))) == pytest.approx(1.0)
  assert float(pr.spearman_rho(x, -x)) == pytest.approx(-1.0)
  assert np.isnan(float(pr.kendall_tau(x, jnp.ones(5))))  # constant input: undefined, as scipy


@hypothesis.settings(max_examples=5, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**16))
def test_tau_lies_in_minus_one_one_and_is_symmetric_and_sign_flips(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x = jnp.round(jax.random.normal(k1, (20,)), 1)  # rounded: ties occur
  y = jnp.round(x + jax.random.normal(k2, (20,)), 1)
  t = float(_tau(x, y))
  assert -1.0 <= t <= 1.0
  assert float(_tau(y, x)) == pytest.approx(t, abs=1e-6)
  assert float(_tau(x, -y)) == pytest.approx(-t, abs=1e-6)


def test_removal_losses_of_a_linear_model_are_the_dropped_contributions():
  w = jnp.asarray([1.0, -2.0, 0.5, 0.0])
  x = jax.random.normal(jax.random.key(0), (30, 4))
  y = x @ w
  loss = lambda keep: jnp.mean((x @ (w * keep) - y) ** 2)
  d = np.asarray(pr.structure_removal_losses(loss, 4))
  # w[3] = 0: its removal loss is 0 in exact arithmetic and a rounding residue (5e-15 on one CI machine) here.
  np.testing.assert_allclose(d, [float(jnp.mean((x[:, i] * w[i]) ** 2)) for i in range(4)], rtol=1e-5, atol=1e-10)
  np.testing.assert_array_equal(pr.oracle_keep(jnp.asarray(d), 2), [True, True, False, False])


def test_random_structured_masks_keep_exactly_k_and_differ():
  m = np.asarray(pr.random_structured_masks(jax.random.key(1), 12, 5, 40))
  assert m.shape == (40, 12) and m.dtype == bool
  assert np.all(m.sum(1) == 5)
  assert len({r.tobytes() for r in m}) > 30
  again = np.asarray(pr.random_structured_masks(jax.random.key(1), 12, 5, 40))
  np.testing.assert_array_equal(m, again)  # reproducible under a seed


def test_oracle_pruning_correlation_host_loop():
  params = {"w": jnp.asarray([[1.0, 2.0], [3.0, 4.0]])}
  masks = [{"w": jnp.asarray(m)} for m in ([[1, 1], [1, 0]], [[1, 0], [1, 1]], [[0, 1], [1, 1]])]
  masks = [jax.tree.map(lambda a: a.astype(bool), m) for m in masks]
  loss = lambda p: float(10.0 - jnp.sum(p["w"]))  # losses 4, 2, 1
  after = lambda p, m: float(jnp.sum(m["w"] * jnp.arange(4.0).reshape(2, 2)))  # 3, 5, 6
  out = pr.oracle_pruning_correlation(params, masks, loss, after)
  assert out["loss_before"] == [4.0, 2.0, 1.0] and out["metric_after"] == [3.0, 5.0, 6.0]
  assert out["tau"] == pytest.approx(-1.0) and out["rho"] == pytest.approx(-1.0)
  assert 0.0 <= out["tau_pvalue"] <= 1.0


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="x and y"):
    pr.kendall_tau(jnp.ones(3), jnp.ones(4))
  with pytest.raises(ValueError, match="x and y"):
    pr.spearman_rho(jnp.ones(1), jnp.ones(1))
  with pytest.raises(ValueError, match="keep"):
    pr.random_structured_masks(jax.random.key(0), 4, 5, 2)
  with pytest.raises(ValueError, match="num_masks"):
    pr.random_structured_masks(jax.random.key(0), 4, 2, 0)
  with pytest.raises(ValueError, match="num_structures"):
    pr.structure_removal_losses(lambda k: jnp.sum(k), 0)
  with pytest.raises(ValueError, match="masks"):
    pr.oracle_pruning_correlation({}, [{}], lambda p: 0.0, lambda p, m: 0.0)
