"""Unit tests for paperlab.losses.sequence: TLDR, power-law decay weights, number-token losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab.losses import sequence as S
from paperlab.losses import balancing as B


def test_tldr_weight_endpoints():
  # p = exp(-l): weight 2 at p=0, 1 at p=0.5, 0 at p=1
  l = jnp.array([1e4, np.log(2.0), 0.0])
  np.testing.assert_allclose(S.tldr_weights(l), [2.0, 1.0, 0.0], atol=1e-6)


def test_tldr_weights_carry_no_gradient_and_loss_is_token_normalised():
  l = jnp.array([0.1, 2.0, 0.7, 5.0])
  m = jnp.array([True, True, False, True])
  g = jax.grad(lambda l: S.tldr_weighted_loss(l).sum())(l)
  np.testing.assert_allclose(g, S.tldr_weights(l), rtol=1e-6)  # d(w l)/dl = w when w is stop-gradient
  per_token = S.tldr_weighted_loss(l, where=m)
  np.testing.assert_allclose(per_token[2], 0.0)
  np.testing.assert_allclose(B.apply_weights(l, S.tldr_weights(l), where=m, normalize="mask"),
                             per_token.sum() / 3, rtol=1e-6)


def test_power_law_weights_closed_forms():
  counts = jnp.array([0.0, 1.0, 10.0, 1000.0])
  np.testing.assert_allclose(S.power_law_token_weights(counts, alpha=0.0), 1.0)
  np.testing.assert_allclose(S.power_law_token_weights(counts, alpha=0.5, eps=1.0),
                             1 / np.sqrt(np.array([1.0, 2.0, 11.0, 1001.0])), rtol=1e-6)
  w = S.power_law_token_weights(counts)
  assert (np.diff(np.asarray(w)) < 0).all()  # rarer tokens weigh more
  with pytest.raises(ValueError, match="alpha"):
    S.power_law_token_weights(counts, alpha=-1.0)
  with pytest.raises(ValueError, match="non-negative"):
    S.power_law_token_weights(jnp.array([-1.0, 2.0]))


def test_power_law_decay_loss_with_alpha_zero_is_cross_entropy():
  logits = jax.random.normal(jax.random.key(0), (9, 6))
  labels = jnp.arange(9) % 6
  w = S.power_law_token_weights(jnp.arange(6.0) * 10, alpha=0.0)
  np.testing.assert_allclose(
      B.weighted_softmax_cross_entropy_with_integer_labels(logits, labels, w).mean(),
      optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), rtol=1e-6)


# vocabulary of 8 tokens: ids 2..6 are the digits 0..4 (values), the rest are words
IDS = jnp.array([2, 3, 4, 5, 6])
VALS = jnp.array([0.0, 1.0, 2.0, 3.0, 4.0])


def _numpy_ntl(logits, labels, kind):
  logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
  out = np.zeros(labels.shape)
  for i, y in enumerate(labels):
    if y not in (2, 3, 4, 5, 6):
      continue
    z = logits[i, 2:7]
    p = np.exp(z - z.max())
    p /= p.sum()
    yv = float(y - 2)
    out[i] = (yv - (p * np.arange(5)).sum()) ** 2 if kind == "mse" else (p * np.abs(np.arange(5) - yv)).sum()
  return out


@pytest.mark.parametrize("kind", ["was", "mse"])
def test_number_token_loss_matches_the_paper_equation(kind):
  logits = jax.random.normal(jax.random.key(1), (10, 8)) * 2
  labels = jnp.array([0, 2, 3, 7, 6, 4, 1, 5, 5, 2])
  np.testing.assert_allclose(S.number_token_loss(logits, labels, IDS, VALS, kind=kind),
                             _numpy_ntl(logits, labels, kind), rtol=1e-5, atol=1e-6)


def test_number_token_loss_was_is_zero_only_for_the_target_while_mse_is_fooled_by_symmetric_mass():
  big = 30.0
  onehot = jnp.full((1, 8), -big).at[0, 4].set(big)          # all number mass on the value 2
  symmetric = jnp.full((1, 8), -big).at[0, 3].set(big).at[0, 5].set(big)  # half on 1, half on 3
  label = jnp.array([4])
  np.testing.assert_allclose(S.number_token_loss(onehot, label, IDS, VALS), 0.0, atol=1e-6)
  np.testing.assert_allclose(S.number_token_loss(symmetric, label, IDS, VALS, kind="mse"), 0.0, atol=1e-6)
  np.testing.assert_allclose(S.number_token_loss(symmetric, label, IDS, VALS, kind="was"), 1.0, rtol=1e-5)


def test_cross_entropy_plus_ntl_and_masks():
  logits = jax.random.normal(jax.random.key(2), (4, 8))
  labels = jnp.array([2, 0, 6, 3])
  m = jnp.array([True, True, False, True])
  out = S.cross_entropy_plus_number_token_loss(logits, labels, IDS, VALS, lam=0.5, where=m)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  ntl = S.number_token_loss(logits, labels, IDS, VALS)
  np.testing.assert_allclose(out, jnp.where(m, ce + 0.5 * ntl, 0.0), rtol=1e-6)
  np.testing.assert_allclose(ntl[1], 0.0)  # a word position


def test_number_token_loss_bad_input():
  logits = jnp.zeros((2, 8))
  with pytest.raises(ValueError, match="number_token_ids must lie"):
    S.number_token_loss(logits, jnp.array([0, 1]), jnp.array([2, 9]), jnp.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="distinct"):
    S.number_token_loss(logits, jnp.array([0, 1]), jnp.array([2, 2]), jnp.array([0.0, 1.0]))
  with pytest.raises(ValueError, match="equal-length"):
    S.number_token_loss(logits, jnp.array([0, 1]), IDS, VALS[:3])
  with pytest.raises(ValueError, match="kind"):
    S.number_token_loss(logits, jnp.array([0, 1]), IDS, VALS, kind="l1")
