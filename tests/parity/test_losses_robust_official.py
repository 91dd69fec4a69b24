"""Parity of the normalized / active-passive losses with the official code of Ma et al. (2020).

Oracle: a line-by-line torch transcription of ``loss.py`` in github.com/HanxunH/Active-Passive-Losses at commit
04bce5344035ca69102b9cfb0228df0f49f1707d (classes ``NormalizedCrossEntropy``, ``ReverseCrossEntropy``,
``MeanAbsoluteError``, ``NormalizedFocalLoss``, ``GeneralizedCrossEntropy`` and the pairs ``NCEandRCE``,
``NCEandMAE``, ``NFLandRCE``, ``NFLandMAE``, ``MAEandRCE``). Those modules return the batch mean; ours are
per-example, so we compare means, and gradients of the mean with respect to the logits.
Tolerance: 2e-5 relative (float32 against float64 torch).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import paperlab.losses as pl

# --- transcription of loss.py (official), device handling and mlconfig registration removed -------------------


def _nce(pred, labels, num_classes, scale=1.0):
  pred = F.log_softmax(pred, dim=1)
  label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
  nce = -1 * torch.sum(label_one_hot * pred, dim=1) / (- pred.sum(dim=1))
  return scale * nce.mean()


def _rce(pred, labels, num_classes, scale=1.0):
  pred = F.softmax(pred, dim=1)
  pred = torch.clamp(pred, min=1e-7, max=1.0)
  label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
  label_one_hot = torch.clamp(label_one_hot, min=1e-4, max=1.0)
  rce = (-1 * torch.sum(pred * torch.log(label_one_hot), dim=1))
  return scale * rce.mean()


def _mae(pred, labels, num_classes, scale=1.0):
  pred = F.softmax(pred, dim=1)
  label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
  mae = 1. - torch.sum(label_one_hot * pred, dim=1)
  return scale * mae.mean()


def _gce(pred, labels, num_classes, q=0.7):
  pred = F.softmax(pred, dim=1)
  pred = torch.clamp(pred, min=1e-7, max=1.0)
  label_one_hot = F.one_hot(labels, num_classes).to(pred.dtype)
  gce = (1. - torch.pow(torch.sum(label_one_hot * pred, dim=1), q)) / q
  return gce.mean()


def _nfl(input, target, num_classes, scale=1.0, gamma=0.5):
  target = target.view(-1, 1)
  logpt = F.log_softmax(input, dim=1)
  normalizor = torch.sum(-1 * (1 - logpt.data.exp()) ** gamma * logpt, dim=1)
  logpt = logpt.gather(1, target)
  logpt = logpt.view(-1)
  pt = logpt.data.exp()
  loss = -1 * (1 - pt) ** gamma * logpt
  loss = scale * loss / normalizor
  return loss.mean()


OFFICIAL = {  # name -> (official fn(pred, labels, K, alpha, beta), ours(logits, labels, alpha, beta))
    "nce": (lambda z, y, k, a, b: _nce(z, y, k, scale=a),
            lambda z, y, a, b: a * pl.normalized_cross_entropy_with_integer_labels(z, y)),
    "rce": (lambda z, y, k, a, b: _rce(z, y, k, scale=b),
            lambda z, y, a, b: b * pl.reverse_cross_entropy_with_integer_labels(z, y)),
    "mae": (lambda z, y, k, a, b: _mae(z, y, k, scale=b),
            lambda z, y, a, b: b * pl.mae_with_integer_labels(z, y)),
    "nfl": (lambda z, y, k, a, b: _nfl(z, y, k, scale=a, gamma=0.5),
            lambda z, y, a, b: a * pl.normalized_focal_loss_with_integer_labels(z, y, gamma=0.5)),
    "gce": (lambda z, y, k, a, b: _gce(z, y, k, q=0.7),
            lambda z, y, a, b: pl.generalized_cross_entropy_with_integer_labels(z, y, q=0.7)),
    "nce+rce": (lambda z, y, k, a, b: _nce(z, y, k, scale=a) + _rce(z, y, k, scale=b),
                lambda z, y, a, b: pl.nce_rce_with_integer_labels(z, y, alpha=a, beta=b)),
    "nce+rce(apl)": (lambda z, y, k, a, b: _nce(z, y, k, scale=a) + _rce(z, y, k, scale=b),
                     lambda z, y, a, b: pl.active_passive(pl.normalized_cross_entropy_with_integer_labels,
                                                          pl.reverse_cross_entropy_with_integer_labels,
                                                          alpha=a, beta=b)(z, y)),
    "nce+mae": (lambda z, y, k, a, b: _nce(z, y, k, scale=a) + _mae(z, y, k, scale=b),
                lambda z, y, a, b: pl.active_passive(pl.normalized_cross_entropy_with_integer_labels,
                                                     pl.mae_with_integer_labels, alpha=a, beta=b)(z, y)),
    "nfl+rce": (lambda z, y, k, a, b: _nfl(z, y, k, scale=a) + _rce(z, y, k, scale=b),
                lambda z, y, a, b: pl.active_passive(pl.normalized_focal_loss_with_integer_labels,
                                                     pl.reverse_cross_entropy_with_integer_labels,
                                                     alpha=a, beta=b)(z, y)),
    "nfl+mae": (lambda z, y, k, a, b: _nfl(z, y, k, scale=a) + _mae(z, y, k, scale=b),
                lambda z, y, a, b: pl.active_passive(pl.normalized_focal_loss_with_integer_labels,
                                                     pl.mae_with_integer_labels, alpha=a, beta=b)(z, y)),
    "mae+rce": (lambda z, y, k, a, b: _mae(z, y, k, scale=a) + _rce(z, y, k, scale=b),
                lambda z, y, a, b: pl.active_passive(pl.mae_with_integer_labels,
                                                     pl.reverse_cross_entropy_with_integer_labels,
                                                     alpha=a, beta=b)(z, y)),
}

# (alpha, beta) of the official configs: CIFAR-10 (1, 1), CIFAR-100 (10, 0.1), and a large beta.
SETTINGS = [(1.0, 1.0), (10.0, 0.1), (1.0, 100.0)]


def _data(seed, n=32, c=10, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(n, c))).astype(np.float32)
  labels = rng.integers(0, c, size=n).astype(np.int32)
  return logits, labels


def _official(name, logits, labels, alpha, beta):
  z = torch.tensor(logits.astype(np.float64), requires_grad=True)
  value = OFFICIAL[name][0](z, torch.tensor(labels, dtype=torch.long), logits.shape[1], alpha, beta)
  value.backward()
  return value.item(), z.grad.numpy()


@pytest.mark.parametrize("name", sorted(OFFICIAL))
@pytest.mark.parametrize("alpha,beta", SETTINGS)
@pytest.mark.parametrize("seed,scale", [(0, 3.0), (1, 1.0), (2, 8.0)])
def test_value_and_gradient_match_the_official_loss(name, alpha, beta, seed, scale):
  logits, labels = _data(seed, scale=scale)
  ref_value, ref_grad = _official(name, logits, labels, alpha, beta)
  ours = lambda z: jnp.mean(OFFICIAL[name][1](z, labels, alpha, beta))
  value, grad = jax.value_and_grad(ours)(jnp.asarray(logits))
  np.testing.assert_allclose(float(value), ref_value, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=2e-5, atol=2e-6 * max(alpha, beta))


def test_papers_text_form_is_available_as_options():
  """log_zero=-4 is RCE as written in the papers (A = -4): -A (1 - p_y) when no probability hits the floor."""
  logits, labels = _data(3, scale=1.0)
  p = np.asarray(jax.nn.softmax(logits.astype(np.float64)))
  p_y = p[np.arange(len(labels)), labels]
  np.testing.assert_allclose(pl.reverse_cross_entropy_with_integer_labels(logits, labels, log_zero=-4.0),
                             4.0 * (1.0 - p_y), rtol=1e-5)
  # the full gradient of the NFL formula differs from the official detached one
  full = jax.grad(lambda z: pl.normalized_focal_loss_with_integer_labels(
      z, labels, stop_gradient_modulator=False).sum())(logits)
  official = jax.grad(lambda z: pl.normalized_focal_loss_with_integer_labels(z, labels).sum())(logits)
  assert np.max(np.abs(np.asarray(full) - np.asarray(official))) > 1e-3


def test_nfl_full_gradient_matches_autodiff_of_the_formula_in_torch():
  logits, labels = _data(4)
  z = torch.tensor(logits.astype(np.float64), requires_grad=True)
  logp = F.log_softmax(z, dim=1)
  focal = -(1 - logp.exp()) ** 0.5 * logp
  (focal.gather(1, torch.tensor(labels, dtype=torch.long)[:, None])[:, 0] / focal.sum(1)).sum().backward()
  ours = jax.grad(lambda x: pl.normalized_focal_loss_with_integer_labels(
      x, labels, stop_gradient_modulator=False).sum())(logits)
  np.testing.assert_allclose(np.asarray(ours), z.grad.numpy(), rtol=2e-5, atol=1e-6)
