"""Circle loss, SigLIP and the CLIP softmax loss against direct NumPy transcriptions of the papers' equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.losses as pl

RNG = np.random.default_rng(3)


def _softplus(x):
  return np.logaddexp(0.0, x)


def _np_circle(sp, sn, m, gamma):
  alpha_p = np.maximum(1 + m - sp, 0)
  alpha_n = np.maximum(sn + m, 0)
  lse_n = np.log(np.sum(np.exp(gamma * alpha_n * (sn - m))))
  lse_p = np.log(np.sum(np.exp(-gamma * alpha_p * (sp - (1 - m)))))
  return _softplus(lse_n + lse_p)


def test_circle_loss_matches_the_paper_equation():
  sp = RNG.uniform(-0.2, 1.0, size=(5, 3))
  sn = RNG.uniform(-0.5, 0.8, size=(5, 7))
  ours = pl.circle_loss(sp.astype(np.float32), sn.astype(np.float32), m=0.25, gamma=32.0)
  expected = [_np_circle(sp[i], sn[i], 0.25, 32.0) for i in range(5)]
  np.testing.assert_allclose(ours, expected, rtol=1e-4)


def test_circle_loss_single_pair_closed_form_and_saturation():
  m, gamma = 0.25, 64.0
  sp, sn = np.array([[0.6]], np.float32), np.array([[0.3]], np.float32)
  expected = _softplus(gamma * (0.3 + m) * (0.3 - m) - gamma * (1 + m - 0.6) * (0.6 - 1 + m))
  np.testing.assert_allclose(pl.circle_loss(sp, sn, m=m, gamma=gamma), [expected], rtol=1e-5)
  grad_sp = jax.grad(lambda s: pl.circle_loss(s, sn, m=m, gamma=gamma).sum())(np.array([[1.3]], np.float32))
  assert float(grad_sp[0, 0]) == 0.0  # s_p >= 1 + m: the positive is already optimal


def test_circle_loss_masks_drop_pairs_and_empty_sets_give_zero():
  sp = RNG.uniform(0, 1, size=(2, 4)).astype(np.float32)
  sn = RNG.uniform(-0.5, 0.5, size=(2, 5)).astype(np.float32)
  wp = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
  out = np.asarray(pl.circle_loss(sp, sn, m=0.25, gamma=32.0, where_p=wp))
  np.testing.assert_allclose(out[0], pl.circle_loss(sp[:1, :2], sn[:1], m=0.25, gamma=32.0)[0], rtol=1e-6)
  assert out[1] == 0.0
  grad = jax.grad(lambda s: pl.circle_loss(s, sn, m=0.25, gamma=32.0, where_p=wp).sum())(sp)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~wp] == 0)


def test_class_level_circle_loss_uses_the_target_proxy_as_positive():
  cos = np.tanh(RNG.normal(size=(4, 5))).astype(np.float32)
  labels = np.array([0, 3, 1, 4], np.int32)
  ours = pl.circle_loss_with_integer_labels(cos, labels, m=0.25, gamma=64.0)
  for i in range(4):
    sn = np.delete(cos[i], labels[i])
    sp = cos[i, labels[i]:labels[i] + 1].astype(np.float64)
    np.testing.assert_allclose(ours[i], _np_circle(sp, sn.astype(np.float64), 0.25, 64.0), rtol=1e-4)


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_siglip_matches_the_paper_equation():
  x, y = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
  t_prime, b = 1.3, -2.0
  logits = np.exp(t_prime) * _np_normalize(x) @ _np_normalize(y).T + b
  z = 2 * np.eye(6) - 1
  expected = -np.log(1 / (1 + np.exp(-z * logits))).sum(-1)
  ours = pl.sigmoid_contrastive_loss(x.astype(np.float32), y.astype(np.float32), t_prime, b)
  np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_siglip_at_init_with_orthogonal_embeddings():
  eye = np.eye(6, dtype=np.float32)
  x, y = eye[:3], eye[3:]  # every x is orthogonal to every y
  cos = _np_normalize(x) @ _np_normalize(y).T
  assert np.allclose(cos, 0)
  init = pl.siglip_init()
  ours = pl.sigmoid_contrastive_loss(x, y, init["log_temperature"], init["bias"])
  np.testing.assert_allclose(ours, _softplus(10.0) + 2 * _softplus(-10.0), rtol=1e-5)
  assert float(jnp.exp(init["log_temperature"])) == pytest.approx(10.0)


def test_clip_softmax_loss_matches_the_symmetric_infonce():
  x, y = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
  logits = np.exp(0.7) * _np_normalize(x) @ _np_normalize(y).T
  lsm_rows = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  lsm_cols = logits - np.log(np.exp(logits).sum(0, keepdims=True))
  expected = -0.5 * (np.diag(lsm_rows) + np.diag(lsm_cols))
  np.testing.assert_allclose(pl.clip_softmax_loss(x.astype(np.float32), y.astype(np.float32), 0.7), expected,
                             rtol=1e-5)


def test_contrastive_gradients_are_finite_with_masks_and_learnable_scalars():
  x = RNG.normal(size=(5, 3)).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 0], bool)

  def total(params):
    return (pl.sigmoid_contrastive_loss(x, x + 0.1, params["t"], params["b"], where=mask).sum()
            + pl.clip_softmax_loss(x, x + 0.1, params["t"], where=mask).sum())

  grads = jax.grad(total)({"t": jnp.float32(2.0), "b": jnp.float32(-10.0)})
  assert all(np.isfinite(g) for g in jax.tree.leaves(grads))


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="sp and sn"):
    pl.circle_loss(np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32))
  with pytest.raises(ValueError, match="gamma"):
    pl.circle_loss(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), gamma=0.0)
  with pytest.raises(ValueError, match="x_emb and y_emb"):
    pl.sigmoid_contrastive_loss(np.zeros((4, 3), np.float32), np.zeros((5, 3), np.float32), 0.0, 0.0)
  with pytest.raises(ValueError, match="labels must have shape"):
    pl.circle_loss_from_embeddings(np.zeros((4, 3), np.float32), np.zeros((5,), np.int32))
  with pytest.raises(ValueError, match="labels must lie"):
    pl.circle_loss_with_integer_labels(np.zeros((2, 3), np.float32), np.array([0, 3], np.int32))
