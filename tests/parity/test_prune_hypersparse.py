"""HyperSparse parity with the official code (GreenAutoML4FAS/HyperSparse at commit
ec945f9e32eb96eb021acbe15b73eae38ff7324a, ``loss/HyperSparse.py``): ``hyperSparse`` (the penalty, differentiated by
torch autograd) and ``grad_HS_loss`` (the closed-form gradient), transcribed below in PyTorch on the same weights;
``jax.grad`` of :func:`paperlab.prune.hypersparse_penalty` and :func:`paperlab.prune.hypersparse_grad` agree to
1e-5 relative."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import paperlab.prune as pr  # noqa: E402


def _official_hyper_sparse(w, prune_rate):  # loss/HyperSparse.py: hyperSparse, on the concatenated weights
  w_abs = w.abs()
  w_sort, _ = torch.sort(w_abs.detach())
  prune_idx = math.floor(prune_rate * w_sort.shape[0])
  s = 0.6585 / w_sort[prune_idx]
  w_tanh = torch.tanh(s * w_abs)
  w_sum = torch.sum(w_tanh)
  hs_loss = w_abs * w_sum
  hs_loss = hs_loss.reshape(-1)
  hs_loss /= w_tanh.sum().detach()
  hs_loss -= w.abs()
  return hs_loss.sum()


def _official_grad(w, prune_rate):  # loss/HyperSparse.py: grad_HS_loss
  w_abs = w.abs()
  w_sort, _ = torch.sort(w_abs)
  idx = math.floor(prune_rate * w_sort.shape[0])
  s = (0.6585 / w_sort[idx]).item()
  w_tanh_deriv = s / (torch.cosh(s * w_abs) ** 2)
  factor = w_abs.sum() / torch.tanh(s * w_abs).sum()
  return torch.sign(w) * w_tanh_deriv * factor


@pytest.mark.parametrize("prune_rate", [0.5, 0.9, 0.98])
def test_hypersparse_gradient_matches_official_autograd_and_closed_form(prune_rate):
  k = jax.random.split(jax.random.key(0), 3)
  params = {"a": {"kernel": jax.random.normal(k[0], (16, 12)), "bias": jax.random.normal(k[1], (12,))},
            "b": {"kernel": 0.1 * jax.random.normal(k[2], (12, 5))}}
  flat = np.concatenate([np.asarray(params["a"]["kernel"]).ravel(), np.asarray(params["b"]["kernel"]).ravel()])
  w = torch.tensor(flat, dtype=torch.float64, requires_grad=True)
  _official_hyper_sparse(w, prune_rate).backward()
  closed = _official_grad(w.detach(), prune_rate).numpy()
  np.testing.assert_allclose(w.grad.numpy(), closed, rtol=1e-9, atol=1e-12)  # the two official forms agree
  ours = jax.jit(jax.grad(lambda p: pr.hypersparse_penalty(p, prune_rate)))(params)
  ours_flat = np.concatenate([np.asarray(ours["a"]["kernel"]).ravel(), np.asarray(ours["b"]["kernel"]).ravel()])
  np.testing.assert_allclose(ours_flat, w.grad.numpy(), rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(ours["a"]["bias"]))  # biases are not prunable
  mine = pr.hypersparse_grad(params, prune_rate)
  np.testing.assert_allclose(np.asarray(mine["b"]["kernel"]).ravel(), closed[16 * 12:], rtol=1e-5, atol=1e-6)
  assert abs(float(pr.hypersparse_penalty(params, prune_rate))) < 1e-3  # the value is zero up to rounding


def test_art_lambda_and_errors():
  assert float(pr.art_lambda(0)) == pytest.approx(5e-6)
  assert float(pr.art_lambda(10)) == pytest.approx(5e-6 * 1.05 ** 10, rel=1e-5)
  with pytest.raises(ValueError, match="prune_rate"):
    pr.hypersparse_penalty({"w": jnp.ones((2, 2))}, 1.0)
  with pytest.raises(ValueError, match="eta"):
    pr.art_lambda(1, eta=0.9)
