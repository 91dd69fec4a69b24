"""Parity of losses part B with independent implementations: PyTorch's weighted cross-entropy and a dense
PyTorch CLIP loss (values and autograd gradients), LibMTL's uncertainty-weighting formula under torch autograd,
and a NumPy transcription of the MFTCoder CoBa weight computation (unbounded Python lists, np.linalg.lstsq)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paperlab import losses


def test_power_law_weighted_cross_entropy_matches_torch_weighted_mean():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 12)).astype(np.float32)
  labels = rng.integers(0, 12, 64)
  weights = np.asarray(losses.power_law_token_weights(rng.integers(0, 500, 12).astype(np.float32), alpha=0.5))
  ours = losses.weighted_softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels),
                                                                   jnp.asarray(weights)).mean()
  ref = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), weight=torch.tensor(weights), reduction="mean")
  np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5)


def test_logit_adjusted_cross_entropy_matches_torch():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(16, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 16)
  prior = rng.dirichlet(np.ones(5)).astype(np.float32)
  ours = losses.logit_adjusted_softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits), jnp.asarray(labels), jnp.log(jnp.asarray(prior)), tau=0.7)
  ref = F.cross_entropy(torch.tensor(logits) + 0.7 * torch.log(torch.tensor(prior)), torch.tensor(labels),
                        reduction="none")
  np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiled_contrastive_loss_matches_torch_clip_loss(symmetric):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(300, 16)).astype(np.float32)
  y = (x + 0.7 * rng.normal(size=x.shape)).astype(np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  t = 0.05

  xt, yt = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
  tt = torch.tensor(t, requires_grad=True)
  logits = xt @ yt.T / tt
  target = torch.arange(300)
  ref = F.cross_entropy(logits, target)
  if symmetric:
    ref = 0.5 * (ref + F.cross_entropy(logits.T, target))
  ref.backward()

  fn = lambda a, b, c: losses.tiled_contrastive_loss(a, b, c, tile_size=64, symmetric=symmetric).mean()  # noqa: E731
  val, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(jnp.asarray(x), jnp.asarray(y), jnp.float32(t))
  np.testing.assert_allclose(float(val), ref.item(), rtol=1e-5)
  for ours, theirs in zip(grads, (xt.grad, yt.grad, tt.grad)):
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-4, atol=1e-6)


def test_uncertainty_weighting_matches_libmtl_uw_formula_and_gradients():
  # LibMTL.weighting.UW: loss = (losses / (2 * exp(s)) + s / 2).sum(), s a learnable vector.
  task_losses = np.array([0.3, 2.0, 7.5], np.float32)
  s = np.array([-0.5, 0.2, 1.3], np.float32)
  s_t = torch.tensor(s, requires_grad=True)
  l_t = torch.tensor(task_losses, requires_grad=True)
  ref = (l_t / (2 * s_t.exp()) + s_t / 2).sum()
  ref.backward()
  names = ["a", "b", "c"]

  def ours(lv, tl):
    return losses.uncertainty_weighted(dict(zip(names, tl)), dict(zip(names, lv)))[0]

  val, (g_s, g_l) = jax.value_and_grad(ours, argnums=(0, 1))(list(jnp.asarray(s)), list(jnp.asarray(task_losses)))
  np.testing.assert_allclose(float(val), ref.item(), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g_s), s_t.grad.numpy(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(g_l), l_t.grad.numpy(), rtol=1e-5)


class _CoBaOracle:
  """NumPy transcription of MFTCoder's CoBaStatus.compute_per_task_weight for one task group, fed normalised
  validation losses; histories are unbounded Python lists."""

  def __init__(self, k, warmup, n, tau):
    self.k, self.warmup, self.n, self.tau = k, warmup, n, tau
    self.first = None
    self.losses, self.slopes, self.max_slopes = [], [], []

  @staticmethod
  def _slope(y):
    if len(y) < 2:
      return 0.0
    a = np.stack([np.arange(len(y), dtype=np.float64), np.ones(len(y))], 1)
    return float(np.linalg.lstsq(a, np.asarray(y, np.float64), rcond=None)[0][0])

  def step(self, val):
    val = np.asarray(val, np.float64)
    if self.first is None:
      self.first = val
    self.losses.append(val / self.first)
    t = len(self.losses)
    if t <= self.warmup:
      return np.full(self.k, 1 / self.k)
    window = np.array(self.losses[-self.n:])
    slopes = np.array([self._slope(window[:, i]) for i in range(self.k)])
    self.slopes.append(slopes)
    self.max_slopes.append(self._slope(window.max(1)))
    hist = np.array(self.max_slopes)
    z = -len(hist) * hist / np.abs(hist).sum() * self.tau
    df = min(np.exp(z - z.max())[-1] / np.exp(z - z.max()).sum() * len(hist), 1.0)
    softmax = lambda v: np.exp(v - v.max()) / np.exp(v - v.max()).sum()  # noqa: E731
    rcs = softmax(self.k * slopes / np.abs(slopes).sum())
    sh = np.array(self.slopes[-self.n:])
    acs = softmax((-sh.shape[0] * sh / np.abs(sh).sum(0, keepdims=True))[-1])
    w = softmax(self.k * (df * rcs + (1 - df) * acs))
    floor = 1 / (5 * self.k)
    if (w < floor).any():
      w = w * (1 - floor * self.k) + floor
    return w


def test_coba_matches_a_numpy_transcription_of_the_official_weights():
  rng = np.random.default_rng(3)
  t = np.arange(70)
  curves = np.stack([np.exp(-0.03 * t), np.exp(-0.01 * t) + 0.02 * np.maximum(t - 35, 0),
                     1.5 * np.exp(-0.05 * t) + 0.1], 1)
  curves = curves * (1 + 0.01 * rng.normal(size=curves.shape))
  oracle = _CoBaOracle(3, warmup=5, n=100, tau=5.0)
  bal = losses.coba(3, warmup_steps=5, history_length=100)
  state, update = bal.init(), jax.jit(bal.update)
  for row in curves:
    w, state = update(jnp.asarray(row, jnp.float32), state)
    np.testing.assert_allclose(np.asarray(w), oracle.step(row), rtol=2e-3, atol=2e-4)
