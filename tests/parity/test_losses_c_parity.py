"""Parity of losses part C: calibration metrics against torchmetrics, USKD against a PyTorch transcription of the
official loss (yzd-v/cls_KD)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import paperlab.losses as pl


def multiclass_calibration_error(*args, **kwargs):
  """torchmetrics' reference, imported on first use: importing torchmetrics costs ~7 CPU-s, and every xdist
  worker imports every test module while collecting."""
  from torchmetrics.functional.classification import multiclass_calibration_error as ref  # pylint: disable=g-import-not-at-top
  return ref(*args, **kwargs)


def _case(seed, n=2000, k=7, scale=3.0):
  rng = np.random.default_rng(seed)
  probs = np.asarray(jax.nn.softmax(scale * rng.normal(size=(n, k)))).astype(np.float32)
  # Labels drawn from a tempered version of the predictions: miscalibrated but informative.
  tempered = np.asarray(jax.nn.softmax(0.5 * np.log(probs)))
  labels = np.array([rng.choice(k, p=p / p.sum()) for p in tempered], np.int32)
  return probs, labels


@pytest.mark.parametrize("num_bins", [10, 15, 100])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_and_mce_match_torchmetrics(num_bins, seed):
  # torchmetrics bins are [k/B, (k+1)/B) and ours (k/B, (k+1)/B] (Guo et al.); random float confidences never
  # sit exactly on a boundary, so the two agree up to float32 rounding.
  probs, labels = _case(seed)
  k = probs.shape[1]
  p_t, y_t = torch.from_numpy(probs), torch.from_numpy(labels).long()
  ref_ece = multiclass_calibration_error(p_t, y_t, num_classes=k, n_bins=num_bins, norm="l1").item()
  ref_mce = multiclass_calibration_error(p_t, y_t, num_classes=k, n_bins=num_bins, norm="max").item()
  np.testing.assert_allclose(pl.expected_calibration_error(probs, labels, num_bins=num_bins), ref_ece, rtol=1e-5)
  np.testing.assert_allclose(pl.max_calibration_error(probs, labels, num_bins=num_bins), ref_mce, rtol=1e-5)


def test_temperature_scaled_ece_matches_torchmetrics_under_jit():
  probs, labels = _case(2, scale=5.0)
  logits = np.log(probs)
  t = float(pl.fit_temperature(logits, labels))
  scaled = np.asarray(jax.nn.softmax(logits / t)).astype(np.float32)
  ours = jax.jit(lambda p, y: pl.expected_calibration_error(p, y))(scaled, labels)
  ref = multiclass_calibration_error(torch.from_numpy(scaled), torch.from_numpy(labels).long(),
                                     num_classes=probs.shape[1], n_bins=15, norm="l1").item()
  np.testing.assert_allclose(ours, ref, rtol=1e-5)


def _torch_uskd(logit_s, logit_w, label, rank_scores, alpha, beta, mu):
  """The official USKDLoss.forward (yzd-v/cls_KD) re-expressed in torch for integer labels, with the weak head's
  logits given and the class ranking scores passed in (the official code derives them from the two heads)."""
  n, c = logit_s.shape
  label = label.view(n, 1)
  s_t = torch.gather(torch.softmax(logit_s, 1), 1, label)
  p_t = (s_t ** 2 + 1 - (s_t ** 2).mean(0, keepdim=True)).detach()
  loss_t = -(p_t * torch.gather(torch.log_softmax(logit_s, 1), 1, label)).sum(1)
  smooth = torch.zeros_like(logit_s).scatter_(1, label, 0.9) + 0.1 / c
  loss_weak = -(mu * smooth * torch.log_softmax(logit_w, 1)).sum(1)
  order = torch.argsort(rank_scores, dim=1, descending=True, stable=True)
  zipf = torch.gather((1.0 / torch.arange(1, c + 1, dtype=logit_s.dtype)).repeat(n, 1), 1, torch.argsort(order, 1))
  keep = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
  nz = zipf[keep].reshape(n, -1)
  nz = nz / nz.sum(1, keepdim=True)
  loss_non = -(nz * torch.log_softmax(logit_s[keep].reshape(n, -1), 1)).sum(1)
  return alpha * loss_t + beta * loss_non + loss_weak


def test_uskd_matches_a_torch_transcription_of_the_official_loss():
  rng = np.random.default_rng(3)
  s = (2 * rng.normal(size=(16, 10))).astype(np.float32)
  w = (2 * rng.normal(size=(16, 10))).astype(np.float32)
  y = rng.integers(0, 10, 16).astype(np.int32)
  scores = np.array(pl.uskd_rank_scores(w, s, y))
  s_t = torch.from_numpy(s).requires_grad_()
  ref = _torch_uskd(s_t, torch.from_numpy(w), torch.from_numpy(y).long(), torch.from_numpy(scores), 0.1, 0.1, 0.1)
  ref.sum().backward()
  loss = lambda z: pl.uskd_loss_with_integer_labels(z, w, y, alpha=0.1, beta=0.1, mu=0.1)
  np.testing.assert_allclose(loss(s), ref.detach().numpy(), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(lambda z: loss(z).sum())(s), s_t.grad.numpy(), rtol=1e-5, atol=1e-7)
