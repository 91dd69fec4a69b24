"""Mixed-precision bit allocation: the integer program (arXiv:2006.10518) and the Hessian / inter-layer
sensitivities with the bisection search (arXiv:2306.04879)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import quant
from paperlab.quant import bitalloc


def test_exported_from_the_family():
  for name in bitalloc.__all__:
    assert getattr(quant, name) is getattr(bitalloc, name)


def test_ip_with_a_loose_budget_takes_each_layers_least_degradation():
  delta = np.array([[3.0, 1.0, 0.0], [2.0, 0.5, 0.1]])
  cost = bitalloc.allocation_cost([10, 20], [2, 4, 8])
  np.testing.assert_array_equal(bitalloc.bit_allocation_ip(delta, cost, 1e9), [2, 2])
  np.testing.assert_array_equal(bitalloc.bit_allocation_ip(delta, cost, 1e9, bits=(2, 4, 8)), [8, 8])


def test_ip_at_the_cheapest_budget_takes_the_cheapest_choice():
  delta = np.array([[3.0, 1.0, 0.0], [2.0, 0.5, 0.1]])
  cost = bitalloc.allocation_cost([10, 20], [2, 4, 8])
  np.testing.assert_array_equal(bitalloc.bit_allocation_ip(delta, cost, cost[:, 0].sum(), bits=(2, 4, 8)), [2, 2])


def test_ip_spends_the_budget_where_it_saves_most():
  # average 4 bits over a small and a large layer: the small one goes to 8 bits only if the large one can take 2
  delta = np.array([[5.0, 1.0, 0.0], [0.2, 0.1, 0.0]])
  cost = bitalloc.allocation_cost([10, 40], [2, 4, 8])
  bits = bitalloc.bit_allocation_ip(delta, cost, 4 * 50, bits=(2, 4, 8))
  np.testing.assert_array_equal(bits, [8, 2])


@pytest.mark.parametrize("args, match", [
    ((np.ones((2, 3)), np.ones((2, 2)), 10.0), "shape"),
    ((np.ones(3), np.ones(3), 10.0), "2-D"),
    ((np.full((2, 3), np.nan), np.ones((2, 3)), 10.0), "finite"),
    ((np.ones((2, 3)), np.ones((2, 3)), 1.0), "infeasible"),
    ((np.ones((2, 3)), np.ones((2, 3)), float("inf")), "budget"),
])
def test_ip_rejects_bad_tables_and_budgets(args, match):
  with pytest.raises(ValueError, match=match):
    bitalloc.bit_allocation_ip(*args)


def test_ip_rejects_mislabelled_bits():
  with pytest.raises(ValueError, match="bits"):
    bitalloc.bit_allocation_ip(np.ones((2, 3)), np.ones((2, 3)), 10.0, bits=(2, 4))


def test_measure_sensitivities_of_an_additive_model():
  true = {("a", 2): 1.0, ("a", 4): 0.25, ("b", 2): 4.0, ("b", 4): 0.5}
  evaluate = lambda assignment: 10.0 + sum(true[(l, b)] for l, b in assignment.items())
  np.testing.assert_allclose(bitalloc.measure_sensitivities(evaluate, ["a", "b"], [2, 4]), [[1.0, 0.25], [4.0, 0.5]])


def test_hutchinson_trace_is_exact_for_a_diagonal_hessian_and_jits():
  d = {"w": jnp.array([1.0, 2.0, 3.0]), "v": jnp.array([[4.0, 5.0]])}
  loss = lambda p: 0.5 * (jnp.sum(d["w"] * p["w"] ** 2) + jnp.sum(d["v"] * p["v"] ** 2))
  params = {"w": jnp.ones(3), "v": jnp.ones((1, 2))}
  tr = jax.jit(lambda p, k: bitalloc.hessian_trace(loss, p, k, n_probe=3))(params, jax.random.key(0))
  assert float(tr["w"]) == pytest.approx(6.0) and float(tr["v"]) == pytest.approx(9.0)
  with pytest.raises(ValueError, match="n_probe"):
    bitalloc.hessian_trace(loss, params, jax.random.key(0), n_probe=0)


def test_hessian_sensitivity_is_mean_trace_times_squared_error():
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones(4)}
  quantized = {"a": jnp.full((2, 2), 1.5), "b": jnp.ones(4)}
  s = bitalloc.hessian_sensitivity({"a": jnp.float32(8.0), "b": jnp.float32(4.0)}, params, quantized)
  assert float(s["a"]) == pytest.approx(8.0 / 4 * 4 * 0.25) and float(s["b"]) == 0.0


def test_interlayer_sensitivity_measures_leave_one_out_in_the_low_precision_context():
  # a pair interaction: layers a and b hurt together far more than apart
  def evaluate(assignment):
    low = {l for l, b in assignment.items() if b == 3}
    return 1.0 * ("a" in low) + 1.0 * ("b" in low) + 5.0 * ({"a", "b"} <= low) + 0.5 * ("c" in low)

  g = bitalloc.interlayer_sensitivity(evaluate, ["a", "b", "c"], low_bits=3, high_bits=8)
  np.testing.assert_allclose(g, [6.0, 6.0, 0.5])


def test_augmented_sensitivity_adds_normalized_terms():
  np.testing.assert_allclose(bitalloc.augmented_sensitivity([1.0, 3.0], [2.0, 2.0]), [0.25 + 0.5, 0.75 + 0.5])
  np.testing.assert_allclose(bitalloc.augmented_sensitivity([1.0, 3.0], [2.0, 2.0], weight=0.0), [0.25, 0.75])
  with pytest.raises(ValueError, match="equal length"):
    bitalloc.augmented_sensitivity([1.0], [1.0, 2.0])


@pytest.mark.parametrize("threshold", range(0, 8))
def test_bisection_returns_the_linear_scans_k_for_a_monotone_accept(threshold):
  """Catalogue oracle: when accuracy is monotone in k, bisection and a linear scan agree."""
  order = [3, 0, 6, 1, 5, 2, 4]
  calls = []

  def accept(k):
    calls.append(k)
    return k >= threshold

  k, bits = bitalloc.bisect_mixed_precision(order, accept, high_bits=8, low_bits=3)
  scan = next(k for k in range(len(order) + 1) if k >= threshold)
  assert k == scan
  assert len(calls) <= 1 + int(np.ceil(np.log2(len(order) + 1)))
  expected = np.full(7, 3)
  expected[order[:k]] = 8
  np.testing.assert_array_equal(bits, expected)


def test_bisection_errors():
  with pytest.raises(ValueError, match="permutation"):
    bitalloc.bisect_mixed_precision([0, 0, 1], lambda k: True)
  with pytest.raises(ValueError, match="tolerance"):
    bitalloc.bisect_mixed_precision([0, 1], lambda k: False)
