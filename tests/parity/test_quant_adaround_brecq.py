"""AdaRound against a PyTorch transcription of the maintained implementation in BRECQ.

Oracle: https://github.com/yhhhli/BRECQ at commit e455d62e93c70351961f8991c913b59435bd165f (MIT):
``quant/adaptive_rounding.py`` (``AdaRoundQuantizer``: ``get_soft_targets``, ``init_alpha``, the
``learned_hard_sigmoid`` forward), ``quant/block_recon.py`` (``LinearTempDecay``), ``quant/layer_recon.py``
(``LossFunction`` with ``round_loss='relaxation'``, ``rec_loss='mse'``, and the loop of ``layer_reconstruction``:
``torch.optim.Adam`` with its default lr 1e-3 over ``alpha``) and ``quant/quant_layer.py`` (``lp_loss``), transcribed
below. Left out: the CUDA device, ``linklink`` all-reduce, the prints, activation quantization and the Fisher losses.
The mini-batch is the whole calibration set (``batch_size = N``: BRECQ's ``randperm(N)[:N]`` only reorders the rows
of a mean), so both sides see the same data every step.

Layout: BRECQ's ``weight`` is PyTorch's ``(out, in)`` with a per-output-channel ``delta``/``zero_point`` of shape
``(out, 1)``; paperlab's kernel is ``(in, out)`` with ``scale``/``zero`` of shape ``(1, out)``.

Tolerance: 1e-6 absolute (float32 on both sides) on h(V), the regulariser (relative), beta, one Adam step of V,
and V after 10 steps that cross the end of the warm-up.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from paperlab.quant import adaround as ar  # noqa: E402
from paperlab.quant import rtn  # noqa: E402


# ---------------------------------------------------------------------------------------------------------------
# transcription of BRECQ @ e455d62


class AdaRoundQuantizer(torch.nn.Module):
  """quant/adaptive_rounding.py, round_mode='learned_hard_sigmoid' (the only learned mode)."""

  def __init__(self, delta, zero_point, n_bits, weight_tensor):
    super().__init__()
    self.n_bits = n_bits
    self.delta = delta
    self.zero_point = zero_point
    self.n_levels = 2 ** n_bits
    self.soft_targets = False
    self.gamma, self.zeta = -0.1, 1.1
    self.init_alpha(x=weight_tensor.clone())

  def forward(self, x):
    x_floor = torch.floor(x / self.delta)
    if self.soft_targets:
      x_int = x_floor + self.get_soft_targets()
    else:
      x_int = x_floor + (self.alpha >= 0).float()
    x_quant = torch.clamp(x_int + self.zero_point, 0, self.n_levels - 1)
    return (x_quant - self.zero_point) * self.delta

  def get_soft_targets(self):
    return torch.clamp(torch.sigmoid(self.alpha) * (self.zeta - self.gamma) + self.gamma, 0, 1)

  def init_alpha(self, x):
    x_floor = torch.floor(x / self.delta)
    rest = (x / self.delta) - x_floor
    alpha = -torch.log((self.zeta - self.gamma) / (rest - self.gamma) - 1)
    self.alpha = torch.nn.Parameter(alpha)


class LinearTempDecay:
  """quant/block_recon.py."""

  def __init__(self, t_max, rel_start_decay=0.2, start_b=10, end_b=2):
    self.t_max = t_max
    self.start_decay = rel_start_decay * t_max
    self.start_b = start_b
    self.end_b = end_b

  def __call__(self, t):
    if t < self.start_decay:
      return self.start_b
    rel_t = (t - self.start_decay) / (self.t_max - self.start_decay)
    return self.end_b + (self.start_b - self.end_b) * max(0.0, (1 - rel_t))


def lp_loss(pred, tgt, p=2.0):
  """quant/quant_layer.py, reduction='none'."""
  return (pred - tgt).abs().pow(p).sum(1).mean()


class LossFunction:
  """quant/layer_recon.py, round_loss='relaxation', rec_loss='mse', decay_start=0."""

  def __init__(self, quantizer, weight, max_count, b_range, warmup, p=2.0):
    self.quantizer = quantizer
    self.weight = weight
    self.loss_start = max_count * warmup
    self.p = p
    self.temp_decay = LinearTempDecay(max_count, rel_start_decay=warmup, start_b=b_range[0], end_b=b_range[1])
    self.count = 0

  def __call__(self, pred, tgt):
    self.count += 1
    rec_loss = lp_loss(pred, tgt, p=self.p)
    b = self.temp_decay(self.count)
    if self.count < self.loss_start:
      round_loss = 0
    else:
      round_vals = self.quantizer.get_soft_targets()
      round_loss = self.weight * (1 - ((round_vals - .5).abs() * 2).pow(b)).sum()
    return rec_loss + round_loss


def brecq_layer_reconstruction(weight, bias, delta, zero_point, n_bits, x, y, iters, weight_reg, b_range, warmup):
  """layer_reconstruction's loop for a Linear layer without activation; returns alpha after ``iters`` steps."""
  q = AdaRoundQuantizer(delta, zero_point, n_bits, weight)
  q.soft_targets = True
  optimizer = torch.optim.Adam([q.alpha])
  loss_func = LossFunction(q, weight_reg, iters, b_range, warmup)
  for _ in range(iters):
    idx = torch.randperm(x.size(0))[:x.size(0)]
    optimizer.zero_grad()
    out = torch.nn.functional.linear(x[idx], q(weight), bias)
    err = loss_func(out, y[idx])
    err.backward()
    optimizer.step()
  return q.alpha.detach()


# ---------------------------------------------------------------------------------------------------------------


def _setup(bits=3):
  rng = np.random.default_rng(0)
  w = (0.3 * rng.standard_normal((12, 6))).astype(np.float32)  # (in, out)
  x = rng.standard_normal((40, 12)).astype(np.float32)
  b = (0.1 * rng.standard_normal(6)).astype(np.float32)
  grid = rtn.quantize_rtn(jnp.asarray(w), bits=bits)  # scale/zero (1, out)
  return w, x, b, np.asarray(grid.scale), np.asarray(grid.zero)


def test_rectified_sigmoid_regularizer_and_init_match_brecq():
  w, _, _, scale, zero = _setup()
  q = AdaRoundQuantizer(torch.tensor(scale.T), torch.tensor(zero.T), 3, torch.tensor(w.T))
  v = ar.init_rounding_logits(jnp.asarray(w), jnp.asarray(scale))
  np.testing.assert_allclose(np.asarray(v), q.alpha.detach().numpy().T, atol=1e-6)
  v = v + 0.7 * jnp.asarray(np.random.default_rng(1).standard_normal(w.shape), jnp.float32)
  q.alpha = torch.nn.Parameter(torch.tensor(np.asarray(v).T))
  h_ref = q.get_soft_targets().detach().numpy().T
  np.testing.assert_allclose(np.asarray(ar.rectified_sigmoid(v)), h_ref, atol=1e-6)
  for b in (20.0, 7.3, 2.0):
    ref = float((1 - ((q.get_soft_targets().detach() - .5).abs() * 2).pow(b)).sum())
    np.testing.assert_allclose(float(ar.rounding_regularizer(v, b)), ref, rtol=1e-6)
  # the soft forward and the hard rounding
  q.soft_targets = True
  np.testing.assert_allclose(np.asarray(ar.soft_quantized_kernel(jnp.asarray(w), v, scale, zero, 3)),
                             q(torch.tensor(w.T)).detach().numpy().T, atol=1e-6)
  q.soft_targets = False
  np.testing.assert_allclose(np.asarray(ar.soft_quantized_kernel(jnp.asarray(w), v, scale, zero, 3, hard=True)),
                             q(torch.tensor(w.T)).detach().numpy().T, atol=1e-6)


def test_beta_schedule_matches_linear_temp_decay():
  iters, warmup = 50, 0.2
  ref = LinearTempDecay(iters, rel_start_decay=warmup, start_b=20, end_b=2)
  counts = np.arange(1, iters + 1)
  beta, on = ar.annealed_beta(jnp.asarray(counts), iters, beta=(20.0, 2.0), warmup=warmup)
  np.testing.assert_allclose(np.asarray(beta), [ref(int(t)) for t in counts], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(on), (counts >= iters * warmup).astype(np.float32))


@pytest.mark.parametrize("iters,warmup", [(1, 0.0), (10, 0.2)])
def test_optimization_steps_match_brecq(iters, warmup):
  w, x, b, scale, zero = _setup()
  y = x @ w + b
  torch.manual_seed(0)
  alpha = brecq_layer_reconstruction(torch.tensor(w.T), torch.tensor(b), torch.tensor(scale.T), torch.tensor(zero.T),
                                     3, torch.tensor(x), torch.tensor(y), iters, 0.01, (20, 2), warmup)
  v, losses = ar.adaround_optimize(jnp.asarray(w), jnp.asarray(x), jnp.asarray(y), scale, zero, bits=3, iters=iters,
                                   lam=0.01, beta=(20.0, 2.0), warmup=warmup, lr=1e-3, bias=jnp.asarray(b))
  v0 = np.asarray(ar.init_rounding_logits(jnp.asarray(w), jnp.asarray(scale)))
  assert np.abs(np.asarray(v) - v0).max() > 1e-4  # the steps moved V
  # One Adam step moves an entry of V by up to lr = 1e-3; torch's and XLA's float32 arithmetic drift apart by up to
  # 1.2e-6 after 10 steps on the CI machine (entry [4, 0]), so 5e-6 still catches a missed or extra step.
  np.testing.assert_allclose(np.asarray(v), alpha.numpy().T, atol=5e-6)
  assert losses.shape == (iters,)
