"""Hypothesis properties of losses part B: masks equal dropping, weights are distributions, invariances the papers
state, tiled contrastive loss equals dense for any shape and tile."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from paperlab import losses

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
floats = st.floats(-5.0, 5.0, allow_nan=False, width=32)


_tiled = jax.jit(losses.tiled_contrastive_loss, static_argnames=("tile_size", "symmetric"))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(x=hnp.arrays(np.float32, (13, 3), elements=floats), y=hnp.arrays(np.float32, (13, 3), elements=floats),
       tile=st.sampled_from([1, 4, 5, 13, 32]), temp=st.floats(0.25, 2.0), symmetric=st.booleans())
def test_tiled_contrastive_equals_dense_for_any_tile(x, y, tile, temp, symmetric):
  # batch 13 is prime: every tile but 1 and 13 leaves a padded, partially masked last tile
  np.testing.assert_allclose(_tiled(x, y, jnp.float32(temp), tile_size=tile, symmetric=symmetric),
                             losses.info_nce_loss(x, y, temp, symmetric=symmetric), rtol=2e-5, atol=2e-5)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(l=hnp.arrays(np.float32, (16,), elements=st.floats(0.0, 20.0, width=32)),
       strategy=st.sampled_from(["linupper", "uniform", "quadratic", "extremes"]), data=st.data())
def test_loss_based_weights_are_a_distribution_and_masking_equals_dropping(l, strategy, data):
  mask = np.asarray(data.draw(hnp.arrays(bool, l.shape)))
  mask[0] = True
  w = np.asarray(losses.loss_based_weights(l, strategy=strategy, where=mask))
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  assert (w >= 0).all() and (w[~mask] == 0).all()
  np.testing.assert_allclose(w[mask], losses.loss_based_weights(l[mask], strategy=strategy), rtol=1e-5, atol=1e-7)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(logits=hnp.arrays(np.float32, (12, 5), elements=floats), labels=hnp.arrays(np.int32, (12,),
       elements=st.integers(0, 4)), mask=hnp.arrays(bool, (12,)),
       weights=hnp.arrays(np.float32, (5,), elements=st.floats(0.125, 10.0, width=32)))
def test_weighted_cross_entropy_mask_equals_dropping(logits, labels, mask, weights):
  mask[0] = True
  full = losses.weighted_softmax_cross_entropy_with_integer_labels(logits, labels, weights, where=mask)
  kept = losses.weighted_softmax_cross_entropy_with_integer_labels(logits[mask], labels[mask], weights)
  np.testing.assert_allclose(np.asarray(full)[mask], kept, rtol=1e-4, atol=1e-5)
  assert (np.asarray(full)[~mask] == 0).all()


@SETTINGS
@given(logits=hnp.arrays(np.float32, (20, 6), elements=floats), bias=hnp.arrays(np.float32, (6,), elements=floats),
       shift=st.floats(-100, 100), k=st.integers(1, 6))
def test_routing_depends_on_bias_only_up_to_a_constant_and_gates_are_normalised(logits, bias, shift, k):
  idx, gates = losses.biased_topk_route(logits, bias, k)
  idx2, gates2 = losses.biased_topk_route(logits, bias + np.float32(shift), k)
  # a tie moved by rounding may swap equal-score experts; compare the selected score sets instead
  s = jax.nn.sigmoid(logits) + bias
  np.testing.assert_allclose(np.sort(np.take_along_axis(np.asarray(s), np.asarray(idx), 1), 1),
                             np.sort(np.take_along_axis(np.asarray(s), np.asarray(idx2), 1), 1), atol=1e-4)
  np.testing.assert_allclose(np.asarray(gates).sum(1), 1.0, rtol=1e-5)
  assert (np.asarray(gates) > 0).all()


@SETTINGS
@given(load=hnp.arrays(np.float32, (8,), elements=st.floats(0.0, 1000.0, width=32)), u=st.floats(1e-4, 1e-1))
def test_loss_free_update_moves_each_bias_by_exactly_u_towards_balance(load, u):
  bal = losses.loss_free_balancer(8, update_rate=u)
  bias, _ = bal.update(load, bal.init())
  step = np.asarray(bias) / np.float32(u)
  np.testing.assert_allclose(np.abs(step)[np.abs(step) > 0.5], 1.0, rtol=1e-5)  # each move is exactly +-u (or 0)
  gap = load.astype(np.float64).mean() - load
  clear = np.abs(gap) > 1e-3 * (1.0 + np.abs(load).max())  # the mean's last-ulp rounding may decide exact ties
  np.testing.assert_array_equal(np.round(step)[clear], np.sign(gap)[clear])


_COBA = losses.coba(3, warmup_steps=2, history_length=6)
_GAP = losses.improvable_gap_balancing(3, temperature=0.3)


@jax.jit
def _balance_sequence(seq):
  def body(carry, row):
    cs, gs = carry
    wc, cs = _COBA.update(row, cs)
    wg, gs = _GAP.update(row, gs)
    return (cs, gs), (wc, wg)
  return jax.lax.scan(body, (_COBA.init(), _GAP.init()), seq)[1]


@SETTINGS
@given(seq=hnp.arrays(np.float32, (25, 3), elements=st.floats(0.015625, 10.0, width=32)))
def test_balancer_weights_are_floored_distributions(seq):
  wc, wg = map(np.asarray, _balance_sequence(seq))
  np.testing.assert_allclose(wc.sum(1), 1.0, rtol=1e-5)
  assert wc.min() >= 1 / 15 - 1e-6
  np.testing.assert_allclose(wg.sum(1), 3.0, rtol=1e-5)


@SETTINGS
@given(task_loss=st.floats(1e-3, 1e3), classification=st.booleans())
def test_uncertainty_weighting_stationary_point_is_the_closed_form(task_loss, classification):
  kind = "classification" if classification else "regression"
  s_star = np.log((2.0 if classification else 1.0) * task_loss)
  g = jax.grad(lambda s: losses.uncertainty_weighted({"t": task_loss}, {"t": s}, {"t": kind})[0])(jnp.float32(s_star))
  np.testing.assert_allclose(float(g), 0.0, atol=1e-5)


@SETTINGS
@given(logits=hnp.arrays(np.float32, (6, 9), elements=floats), labels=hnp.arrays(np.int32, (6,),
       elements=st.integers(0, 8)))
def test_number_token_was_bounds_the_mse_form_and_is_non_negative(logits, labels):
  ids, vals = jnp.arange(2, 9), jnp.arange(7, dtype=jnp.float32) * 1.5
  was = np.asarray(losses.number_token_loss(logits, labels, ids, vals, kind="was"))
  mse = np.asarray(losses.number_token_loss(logits, labels, ids, vals, kind="mse"))
  assert (was >= 0).all() and (mse >= 0).all()
  # W1(p, delta_y) = E|v - y| >= |E v - y| = sqrt(MSE) (Jensen)
  assert (was + 1e-4 >= np.sqrt(mse)).all()
  assert (was[labels < 2] == 0).all()


@SETTINGS
@given(l=hnp.arrays(np.float32, (10,), elements=st.floats(0.0, 50.0, width=32)))
def test_tldr_weights_are_bounded_and_decreasing_in_confidence(l):
  w = np.asarray(losses.tldr_weights(l))
  assert ((w >= -1e-6) & (w <= 2 + 1e-6)).all()
  order = np.argsort(l)
  assert (np.diff(w[order]) >= -1e-5).all()  # larger loss (lower p) -> larger weight


@SETTINGS
@given(kernel=hnp.arrays(np.float32, (4, 3), elements=st.floats(-3, 3, width=32)), weight=st.floats(0.0, 1.0))
def test_norm_loss_transform_equals_the_penalty_gradient(kernel, weight):
  params = {"k": jnp.asarray(kernel) + 0.1}
  g = jax.grad(lambda p: losses.oblique_norm_penalty(p, weight=weight))(params)
  tx = losses.add_norm_loss_gradient(weight)
  upd, _ = tx.update({"k": jnp.zeros((4, 3))}, tx.init(params), params)
  np.testing.assert_allclose(upd["k"], g["k"], rtol=1e-4, atol=1e-5)
