"""Parity of paperlab.losses (part A) with independent implementations: torchvision, timm,
pytorch-metric-learning, pytorch-optimizer, torch, scipy and scikit-learn. Tolerance: 1e-5 relative."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
import sklearn.metrics
import torch
import torch.nn.functional as F

import paperlab.losses as pl

RTOL = 1e-5


def _data(seed=0, n=16, c=7, scale=3.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(n, c))).astype(np.float32)
  labels = rng.integers(0, c, size=n).astype(np.int32)
  multi = (rng.random((n, c)) < 0.3).astype(np.float32)
  return logits, labels, multi


def _t(a):
  return torch.tensor(np.asarray(a))


def test_sigmoid_focal_matches_torchvision():
  from torchvision.ops import sigmoid_focal_loss as tv_focal

  logits, _, multi = _data()
  for alpha, gamma in [(0.25, 2.0), (0.5, 1.0), (0.75, 0.5)]:
    ref = tv_focal(_t(logits), _t(multi), alpha=alpha, gamma=gamma, reduction="none").numpy()
    ours = pl.sigmoid_focal_loss(logits, multi, alpha=alpha, gamma=gamma)
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-7)
    # The Poly-1 focal loss with epsilon = 0 is the same focal loss.
    ours_poly = pl.poly1_sigmoid_focal_loss(logits, multi, epsilon=0.0, gamma=gamma, alpha=alpha)
    np.testing.assert_allclose(ours_poly, ref, rtol=RTOL, atol=1e-7)


def test_sigmoid_focal_matches_pytorch_optimizer_focal_loss():
  from pytorch_optimizer.loss import FocalLoss

  logits, _, multi = _data(1)
  ref = FocalLoss(alpha=1.0, gamma=2.0)(_t(logits), _t(multi)).item()
  ours = float(jnp.mean(pl.sigmoid_focal_loss(logits, multi, alpha=None, gamma=2.0)))
  np.testing.assert_allclose(ours, ref, rtol=RTOL)


@pytest.mark.parametrize("epsilon,gamma,alpha", [(-1.0, 2.0, 0.25), (2.0, 0.0, None), (1.0, 1.5, 0.6)])
def test_poly1_sigmoid_focal_matches_timm(epsilon, gamma, alpha):
  from timm.loss import PolyBinaryCrossEntropy

  logits, _, multi = _data(2)
  ref = PolyBinaryCrossEntropy(epsilon=epsilon, gamma=gamma, alpha=alpha, reduction="none")(_t(logits), _t(multi))
  ours = pl.poly1_sigmoid_focal_loss(logits, multi, epsilon=epsilon, gamma=gamma, alpha=alpha)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=RTOL, atol=1e-6)


def test_poly_cross_entropy_with_integer_labels_matches_timm_and_optax():
  from timm.loss import PolyCrossEntropy

  logits, labels, _ = _data(3)
  ref = PolyCrossEntropy(epsilon=2.0, reduction="none")(_t(logits), _t(labels).long()).numpy()
  ours = pl.poly_loss_cross_entropy_with_integer_labels(logits, labels, epsilon=2.0)
  np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-6)
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  np.testing.assert_allclose(ours, optax.losses.poly_loss_cross_entropy(logits, onehot, epsilon=2.0), rtol=RTOL)


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(1.0, 4.0, 0.05), (0.0, 4.0, 0.05), (0.0, 2.0, 0.0)])
def test_asymmetric_loss_matches_timm(gamma_pos, gamma_neg, clip):
  from timm.loss import AsymmetricLossMultiLabel

  logits, _, multi = _data(4, scale=2.0)
  oracle = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="none")
  ref = oracle(_t(logits), _t(multi)).numpy()
  ours = pl.asymmetric_loss(logits, multi, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
  np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=1e-7)
  # The original ASL reduction: sum over batch and classes.
  summed = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum")
  np.testing.assert_allclose(float(jnp.sum(ours)), summed(_t(logits), _t(multi)).item(), rtol=RTOL)


def test_asymmetric_loss_gradients_match_timm():
  from timm.loss import AsymmetricLossMultiLabel

  logits, _, multi = _data(5, scale=2.0)
  x = _t(logits).requires_grad_(True)
  AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05, reduction="sum")(x, _t(multi)).backward()
  ours = jax.grad(lambda z: pl.asymmetric_loss(z, multi, gamma_pos=1.0, gamma_neg=4.0, clip=0.05).sum())(logits)
  np.testing.assert_allclose(ours, x.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("m,gamma", [(0.4, 80.0), (0.25, 256.0)])
def test_circle_loss_matches_pytorch_metric_learning(m, gamma):
  from pytorch_metric_learning.losses import CircleLoss

  rng = np.random.default_rng(6)
  emb = rng.normal(size=(24, 8)).astype(np.float32)
  labels = rng.integers(0, 4, size=24)
  ref = CircleLoss(m=m, gamma=gamma)(_t(emb), _t(labels)).item()
  per_anchor = np.asarray(pl.circle_loss_from_embeddings(emb, jnp.asarray(labels), m=m, gamma=gamma))
  # pytorch-metric-learning reduces with AvgNonZeroReducer.
  ours = per_anchor[per_anchor > 0].mean()
  np.testing.assert_allclose(ours, ref, rtol=RTOL)


def test_circle_loss_gradients_match_pytorch_metric_learning():
  from pytorch_metric_learning.losses import CircleLoss

  rng = np.random.default_rng(7)
  emb = rng.normal(size=(16, 6)).astype(np.float32)
  labels = rng.integers(0, 3, size=16)
  x = _t(emb).requires_grad_(True)
  CircleLoss(m=0.4, gamma=80)(x, _t(labels)).backward()

  def ours(e):
    per = pl.circle_loss_from_embeddings(e, jnp.asarray(labels), m=0.4, gamma=80.0)
    return jnp.sum(per) / jnp.sum(jax.lax.stop_gradient(per) > 0)

  np.testing.assert_allclose(jax.grad(ours)(emb), x.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_kd_loss_matches_torch_kl_div():
  logits, _, _ = _data(8)
  teacher = _data(9)[0]
  temperature = 4.0
  ref = F.kl_div(F.log_softmax(_t(logits) / temperature, -1), F.softmax(_t(teacher) / temperature, -1),
                 reduction="none").sum(-1) * temperature ** 2
  np.testing.assert_allclose(pl.kd_loss(logits, teacher, temperature=temperature), ref.numpy(), rtol=1e-4,
                             atol=1e-6)


def test_hl_gauss_target_matches_scipy_normal_cdf():
  targets = np.array([-3.1, -0.4, 0.0, 1.7, 3.9], np.float32)
  num_bins, lo, hi = 32, -4.0, 4.0
  sigma = 0.75 * (hi - lo) / num_bins
  edges = np.linspace(lo, hi, num_bins + 1)
  cdf = scipy.stats.norm.cdf((edges[None, :] - targets[:, None].astype(np.float64)) / sigma)
  ref = np.diff(cdf, axis=-1) / (cdf[:, -1:] - cdf[:, :1])
  np.testing.assert_allclose(pl.hl_gauss_target(targets, num_bins, lo, hi, sigma), ref, atol=2e-6)


def test_regression_losses_match_sklearn():
  rng = np.random.default_rng(10)
  y = rng.uniform(0.5, 3.0, size=200).astype(np.float32)
  p = (y + rng.normal(scale=0.5, size=200)).clip(0.01).astype(np.float32)
  for q in (0.1, 0.5, 0.9):
    np.testing.assert_allclose(jnp.mean(pl.pinball_loss(p, y, quantile=q)),
                               sklearn.metrics.mean_pinball_loss(y, p, alpha=q), rtol=RTOL)
  np.testing.assert_allclose(jnp.mean(pl.absolute_error(p, y)), sklearn.metrics.mean_absolute_error(y, p),
                             rtol=RTOL)
  np.testing.assert_allclose(jnp.mean(pl.absolute_percentage_error(p, y)),
                             sklearn.metrics.mean_absolute_percentage_error(y, p), rtol=RTOL)
  np.testing.assert_allclose(jnp.mean(pl.squared_log_error(p, y)), sklearn.metrics.mean_squared_log_error(y, p),
                             rtol=RTOL)


def test_neural_ndcg_at_low_temperature_matches_sklearn_ndcg():
  rng = np.random.default_rng(11)
  # Distinct scores with unit gaps: at temperature 1e-2 the relaxed permutation is the hard sort.
  scores = np.stack([rng.permutation(12) for _ in range(8)]).astype(np.float32)
  relevance = (rng.random((8, 12)) < 0.4).astype(np.float32)  # binary: 2^y - 1 = y, sklearn's linear gain
  relevance[:, 0] = 1.0
  for k in (None, 5):
    ref = [sklearn.metrics.ndcg_score(relevance[i:i + 1], scores[i:i + 1], k=k) for i in range(8)]
    ours = -pl.neural_ndcg_loss(scores, relevance, temperature=1e-2, k=k)
    np.testing.assert_allclose(ours, ref, rtol=RTOL)


def test_brier_score_matches_sklearn_in_the_binary_case():
  rng = np.random.default_rng(12)
  p1 = rng.random(300).astype(np.float32)
  y = (rng.random(300) < p1).astype(np.int32)
  probs = np.stack([1 - p1, p1], -1)
  # The multiclass Brier score sums over both classes: twice sklearn's binary score.
  np.testing.assert_allclose(pl.brier_score(probs, y), 2 * sklearn.metrics.brier_score_loss(y, p1), rtol=RTOL)
