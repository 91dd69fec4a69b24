"""Hypothesis properties of paperlab.losses (part A): the invariances the papers state, masks equal dropping
examples, and finite gradients at extreme logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st

import paperlab.losses as pl

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
FEW = settings(max_examples=5, deadline=None, derandomize=True)  # for the expensive (many-loss) properties
N, C = 9, 5
SEEDS = st.integers(0, 2 ** 31 - 1)


def _batch(seed, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(N, C))).astype(np.float32)
  labels = rng.integers(0, C, size=N).astype(np.int32)
  keep = rng.random(N) < 0.6
  keep[0] = True
  return logits, labels, keep


INTEGER_LABEL_LOSSES = {
    "softmax_focal": functools.partial(pl.softmax_focal_loss_with_integer_labels, gamma=2.0),
    "poly": pl.poly_loss_cross_entropy_with_integer_labels,
    "squentropy": pl.squentropy_with_integer_labels,
    "z_loss": pl.z_loss_with_integer_labels,
    "encouraging": pl.encouraging_loss_with_integer_labels,
    "ovr": pl.one_vs_rest_loss_with_integer_labels,
    "sovr": pl.switching_ovr_loss_with_integer_labels,
    "nce": pl.normalized_cross_entropy_with_integer_labels,
    "rce": pl.reverse_cross_entropy_with_integer_labels,
    "nfl": pl.normalized_focal_loss_with_integer_labels,
    "nce_rce": pl.nce_rce_with_integer_labels,
    "gce": pl.generalized_cross_entropy_with_integer_labels,
    "ldr_kl": functools.partial(pl.ldr_kl_loss_with_integer_labels, lam=0.5, margin=0.5),
    "circle_proxy": lambda z, y, where=None: pl.circle_loss_with_integer_labels(jnp.tanh(z), y, where=where),
}


@SETTINGS
@given(seed=SEEDS, scale=st.floats(0.1, 10.0), shift=st.floats(-50.0, 50.0))
def test_z_loss_is_shift_and_scale_invariant(seed, scale, shift):
  logits, labels, _ = _batch(seed)
  base = pl.z_loss_with_integer_labels(logits, labels, eps=0.0)
  moved = pl.z_loss_with_integer_labels(scale * logits + shift, labels, eps=0.0)
  np.testing.assert_allclose(moved, base, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(seed=SEEDS, log_zero=st.floats(-8.0, -1.0))
def test_rce_is_symmetric_its_sum_over_labels_is_constant(seed, log_zero):
  logits, _, _ = _batch(seed)
  total = sum(pl.reverse_cross_entropy_with_integer_labels(logits, np.full(N, k, np.int32), log_zero=log_zero)
              for k in range(C))
  np.testing.assert_allclose(total, -log_zero * (C - 1), rtol=1e-5)


@SETTINGS
@given(seed=SEEDS)
def test_normalized_losses_sum_to_one_over_labels(seed):
  logits, _, _ = _batch(seed)
  for loss in (pl.normalized_cross_entropy_with_integer_labels, pl.normalized_focal_loss_with_integer_labels):
    total = sum(loss(logits, np.full(N, k, np.int32)) for k in range(C))
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)


@SETTINGS
@given(seed=SEEDS)
def test_modulating_terms_off_recover_cross_entropy(seed):
  logits, labels, _ = _batch(seed)
  onehot = np.eye(C, dtype=np.float32)[labels]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(pl.softmax_focal_loss_with_integer_labels(logits, labels, gamma=0.0), ce, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(pl.poly_loss_cross_entropy_with_integer_labels(logits, labels, epsilon=0.0), ce,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pl.comp_sum_loss_with_integer_labels(logits, labels, tau=1.0), ce, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(pl.asymmetric_loss(logits, onehot, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
                             optax.sigmoid_binary_cross_entropy(logits, onehot), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(seed=SEEDS, taus=st.lists(st.floats(0.0, 3.0), min_size=2, max_size=2, unique=True))
def test_comp_sum_loss_decreases_with_tau(seed, taus):
  logits, labels, _ = _batch(seed, scale=1.0)
  lo, hi = sorted(taus)
  small = pl.comp_sum_loss_with_integer_labels(logits, labels, tau=lo)
  large = pl.comp_sum_loss_with_integer_labels(logits, labels, tau=hi)
  assert np.all(np.asarray(small) >= np.asarray(large) - 1e-5)


@SETTINGS
@given(seed=SEEDS, name=st.sampled_from(sorted(INTEGER_LABEL_LOSSES)))
def test_where_equals_dropping_the_examples(seed, name):
  loss = INTEGER_LABEL_LOSSES[name]
  logits, labels, keep = _batch(seed)
  masked = np.asarray(loss(logits, labels, where=keep))
  assert np.all(masked[~keep] == 0)
  if name == "sovr":  # the switch ranks the batch, so compare against the kept batch itself
    np.testing.assert_allclose(masked[keep], loss(logits[keep], labels[keep]), rtol=1e-5, atol=1e-6)
  else:
    np.testing.assert_allclose(masked.sum() / keep.sum(), np.mean(loss(logits[keep], labels[keep])), rtol=1e-5)


@FEW
@given(seed=SEEDS)
def test_in_batch_contrastive_masks_equal_dropping_the_examples(seed):
  rng = np.random.default_rng(seed)
  x, y = rng.normal(size=(2, N, 4)).astype(np.float32)
  groups = rng.integers(0, 3, size=N).astype(np.int32)
  _, _, keep = _batch(seed)
  pairs = [
      (lambda w: pl.sigmoid_contrastive_loss(x, y, 1.0, -2.0, where=w),
       lambda: pl.sigmoid_contrastive_loss(x[keep], y[keep], 1.0, -2.0)),
      (lambda w: pl.clip_softmax_loss(x, y, 1.0, where=w), lambda: pl.clip_softmax_loss(x[keep], y[keep], 1.0)),
      (lambda w: pl.circle_loss_from_embeddings(x, groups, where=w),
       lambda: pl.circle_loss_from_embeddings(x[keep], groups[keep])),
  ]
  for masked, dropped in pairs:
    out = np.asarray(masked(keep))
    assert np.all(out[~keep] == 0)
    np.testing.assert_allclose(out[keep], dropped(), rtol=2e-5, atol=1e-5)


@FEW
@given(seed=SEEDS)
def test_ranking_mask_equals_dropping_the_items(seed):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=8).astype(np.float32)
  relevance = rng.integers(0, 4, size=8).astype(np.float32)
  keep = rng.random(8) < 0.6
  keep[:2] = True
  relevance[0] = 2.0
  masked = pl.neural_ndcg_loss(scores, relevance, where=keep, k=5, sinkhorn_iters=20)
  dropped = pl.neural_ndcg_loss(scores[keep], relevance[keep], k=5, sinkhorn_iters=20)
  np.testing.assert_allclose(masked, dropped, rtol=1e-4,
                             atol=1e-6)


@SETTINGS
@given(seed=SEEDS, name=st.sampled_from(sorted(INTEGER_LABEL_LOSSES)), scale=st.sampled_from([1e2, 1e3, 1e4]))
def test_gradients_are_finite_at_large_logits(seed, name, scale):
  logits, labels, _ = _batch(seed, scale=scale)
  value, grad = jax.value_and_grad(lambda z: INTEGER_LABEL_LOSSES[name](z, labels).sum())(logits)
  assert np.isfinite(value) and np.all(np.isfinite(grad))


@FEW
@given(seed=SEEDS, scale=st.sampled_from([1.0, 1e2, 1e4]))
def test_elementwise_and_soft_label_losses_have_finite_gradients(seed, scale):
  logits, labels, _ = _batch(seed, scale=scale)
  multi = (np.random.default_rng(seed).random((N, C)) < 0.3).astype(np.float32)
  onehot = np.eye(C, dtype=np.float32)[labels]
  fns = [
      lambda z: pl.asymmetric_loss(z, multi, gamma_pos=1.0),
      lambda z: pl.poly1_sigmoid_focal_loss(z, multi),
      lambda z: pl.softmax_focal_loss(z, onehot, gamma=0.5),
      lambda z: pl.squentropy(z, onehot),
      lambda z: pl.encouraging_loss(z, onehot),
      lambda z: pl.sparsemax_loss(z, onehot),
      lambda z: pl.self_adjusting_dice_loss(z, multi, alpha=0.5),
      lambda z: pl.hl_gauss_loss(z, labels.astype(np.float32) - 2.0, v_min=-3.0, v_max=3.0),
      lambda z: pl.normalized_kd_loss_with_integer_labels(z, z[::-1], labels),
      lambda z: pl.kd_loss(z, z[::-1]),
      lambda z: pl.neural_ndcg_loss(z, onehot),
  ]
  for fn in fns:
    value, grad = jax.value_and_grad(lambda z: fn(z).sum())(logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


@SETTINGS
@given(seed=SEEDS)
def test_sparsemax_loss_is_non_negative_and_zero_at_its_own_prediction(seed):
  logits, _, _ = _batch(seed)
  q = np.random.default_rng(seed).dirichlet(np.ones(C), size=N).astype(np.float32)
  assert np.all(np.asarray(pl.sparsemax_loss(logits, q)) >= 0)
  np.testing.assert_allclose(pl.sparsemax_loss(logits, pl.sparsemax(logits)), 0.0, atol=1e-5)
