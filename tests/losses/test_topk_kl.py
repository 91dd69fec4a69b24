"""TopKLD (Ding et al., 2024): the standard KL (scipy.special.rel_entr) at k = vocab or w_tail = 1, the KL of the
coarsened top-k + tail-bucket distributions (rel_entr on the bucketed vectors) at w_tail = 0, linear in w_tail between
them, non-negative, zero iff the distributions are equal (hypothesis), jit, the where mask, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import losses


def _probs(z):
  return np.exp(scipy.special.log_softmax(np.asarray(z, np.float64), axis=-1))


def _kl(p, q):
  return scipy.special.rel_entr(p, q).sum(-1)


def _bucketed(p, top):
  """The top-k entries of each row and one bucket holding the rest of the mass."""
  head = np.take_along_axis(p, top, axis=-1)
  return np.concatenate([head, 1.0 - head.sum(-1, keepdims=True)], axis=-1)


def _logits(seed, shape=(6, 12), scale=2.0):
  rng = np.random.default_rng(seed)
  t, s = scale * rng.standard_normal(shape), scale * rng.standard_normal(shape)
  return t.astype(np.float32), s.astype(np.float32)


def test_k_equal_to_vocab_or_unit_tail_weight_is_the_standard_kl():
  t, s = _logits(0)
  want = _kl(_probs(t), _probs(s))
  for w in (0.0, 0.3, 1.0, 2.0):
    np.testing.assert_allclose(losses.topk_kl(t, s, k=12, w_tail=w), want, rtol=1e-5)
  for k in (1, 3, 11):
    np.testing.assert_allclose(losses.topk_kl(t, s, k=k, w_tail=1.0), want, rtol=1e-5)


def test_zero_tail_weight_is_the_kl_of_top_k_plus_a_tail_bucket_and_linear_in_between():
  t, s = _logits(1)
  p, q = _probs(t), _probs(s)
  for k in (1, 4, 9):
    top = np.argsort(-t, axis=-1, kind="stable")[:, :k]
    coarse = _kl(_bucketed(p, top), _bucketed(q, top))
    np.testing.assert_allclose(losses.topk_kl(t, s, k=k, w_tail=0.0), coarse, rtol=1e-4, atol=1e-7)
    for w in (0.25, 0.7, 3.0):
      np.testing.assert_allclose(losses.topk_kl(t, s, k=k, w_tail=w), coarse + w * (_kl(p, q) - coarse),
                                 rtol=1e-4, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(1, 10), st.floats(0.0, 3.0), st.floats(0.1, 6.0))
def test_non_negative_and_zero_iff_equal(seed, k, w_tail, scale):
  t, s = _logits(seed, (4, 10), scale)
  assert np.all(np.asarray(losses.topk_kl(t, s, k=k, w_tail=w_tail)) >= -1e-6)
  np.testing.assert_allclose(losses.topk_kl(t, t, k=k, w_tail=w_tail), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.topk_kl(t, t + 3.0, k=k, w_tail=w_tail), 0.0, atol=1e-6)  # same softmax
  # L = coarse KL + w_tail * (tail part), KL = coarse KL + (tail part), both parts >= 0: so L lies between
  # min(w_tail, 1) KL and max(w_tail, 1) KL, and for w_tail > 0 it vanishes only where KL(p || q) does (p = q)
  kl = _kl(_probs(t), _probs(s))
  out = np.asarray(losses.topk_kl(t, s, k=k, w_tail=w_tail), np.float64)
  assert np.all(out >= min(w_tail, 1.0) * kl * (1 - 1e-4) - 1e-6)
  assert np.all(out <= max(w_tail, 1.0) * kl * (1 + 1e-4) + 1e-6)


def test_gradient_reaches_the_student_only_and_jit_matches():
  t, s = map(jnp.asarray, _logits(2))
  f = lambda a, b: jnp.sum(losses.topk_kl(a, b, k=3, w_tail=0.5))
  gt, gs = jax.grad(f, argnums=(0, 1))(t, s)
  assert np.all(np.asarray(gt) == 0) and np.all(np.isfinite(np.asarray(gs))) and np.any(np.asarray(gs) != 0)
  assert np.all(np.isfinite(np.asarray(jax.grad(lambda b: jnp.sum(losses.topk_kl(t, b, k=12, w_tail=0.5)))(s))))
  jitted = jax.jit(lambda a, b, w: losses.topk_kl(a, b, k=3, w_tail=w))(t, s, jnp.float32(0.5))
  np.testing.assert_allclose(jitted, losses.topk_kl(t, s, k=3, w_tail=0.5), rtol=1e-6)


def test_where_masks_examples_and_half_precision_keeps_dtype():
  t, s = _logits(3)
  out = np.asarray(losses.topk_kl(t, s, k=2, w_tail=0.5, where=np.arange(6) < 4))
  assert np.all(out[4:] == 0) and np.all(out[:4] > 0)
  half = losses.topk_kl(jnp.asarray(t, jnp.bfloat16), jnp.asarray(s, jnp.bfloat16), k=2, w_tail=0.5)
  assert half.dtype == jnp.bfloat16 and half.shape == (6,)


def test_errors_name_the_argument():
  t, s = _logits(4)
  for kwargs, match in [(dict(k=0, w_tail=0.5), "k must"), (dict(k=13, w_tail=0.5), "k must"),
                        (dict(k=2.0, w_tail=0.5), "k must"), (dict(k=2, w_tail=-0.1), "w_tail"),
                        (dict(k=2, w_tail=0.5, where=np.ones(4, bool)), "where")]:
    with pytest.raises(ValueError, match=match):
      losses.topk_kl(t, s, **kwargs)
  with pytest.raises(ValueError, match="same shape"):
    losses.topk_kl(t, s[:, :5], k=2, w_tail=0.5)
