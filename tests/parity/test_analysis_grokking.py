"""Parity of paperlab.analysis.grokking with the authors' PyTorch code, transcribed from
LucasPrietoAl/grokking-at-the-edge-of-numerical-stability at commit 0cc9e8dc62ce5ed66d29d80eebbaf14da2f71c67
(``utils.py``: ``s``, ``log_stablemax``, ``stablemax_cross_entropy``; ``orthograd.py``:
``OrthoGrad._orthogonalize_gradients``) and run in torch. Tolerance: 1e-5 relative (the authors compute StableMax
in float64, we in float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import analysis

torch = pytest.importorskip("torch")


def _s(x, epsilon=1e-30):
  return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def _log_stablemax(x, dim=-1):
  s_x = _s(x)
  return torch.log(s_x / torch.sum(s_x, dim=dim, keepdim=True))


def _stablemax_cross_entropy(logits, labels):
  labels = labels.to(torch.int64)
  logprobs = _log_stablemax(logits.to(torch.float64), dim=-1)
  return -torch.gather(logprobs, index=labels[:, None], dim=-1).to(torch.float64)[:, 0]


def _orthogonalize(w, g):
  w, g = w.view(-1), g.view(-1)
  w_norm_sq = torch.dot(w, w) + 1e-30
  g_orth = g - torch.dot(w, g) / w_norm_sq * w
  return g_orth * (g.norm(2) / (g_orth.norm(2) + 1e-30))


def test_stablemax_cross_entropy_matches_the_authors():
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(32, 11)) * 8).astype(np.float32)
  labels = rng.integers(0, 11, size=32)
  ref = _stablemax_cross_entropy(torch.tensor(logits), torch.tensor(labels)).numpy()
  ours = analysis.stablemax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels, jnp.int32))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
  grad_ref = torch.tensor(logits.astype(np.float64), requires_grad=True)
  _stablemax_cross_entropy(grad_ref, torch.tensor(labels)).sum().backward()
  grad = jax.grad(lambda z: analysis.stablemax_cross_entropy(z, jnp.asarray(labels, jnp.int32)).sum())(
      jnp.asarray(logits))
  np.testing.assert_allclose(grad, grad_ref.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_orthogonal_gradient_matches_orthograd():
  rng = np.random.default_rng(1)
  params = {"a": rng.normal(size=(6, 5)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)}
  grads = {"a": rng.normal(size=(6, 5)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)}
  out, _ = analysis.orthogonal_gradient().update(jax.tree.map(jnp.asarray, grads), (),
                                                 jax.tree.map(jnp.asarray, params))
  for k in params:
    ref = _orthogonalize(torch.tensor(params[k]), torch.tensor(grads[k])).numpy().reshape(params[k].shape)
    np.testing.assert_allclose(out[k], ref, rtol=1e-5, atol=1e-6)
