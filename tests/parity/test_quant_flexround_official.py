"""FlexRound against a PyTorch transcription of the official code.

Oracle: https://github.com/onliwad101/FlexRound_LRQ at commit 59d4665145e340c0dd69627467799c53009f0833,
``quant/UniformAffineQuantizer.py`` (``round_ste``, ``lp_loss``, ``calculate_qparams``, the ``mode='flexround'``
parameters ``delta1 = log(delta)``, ``delta2 = 0`` (element-wise), ``delta3 = 0`` (per output channel) and the
asymmetric / symmetric ``forward``), transcribed below, with the min-max initial grid of the released scripts
(``clipping=False``: ``perform_2D_search`` runs zero search steps and keeps the channel min/max clamped around 0).
The optimizer is ``torch.optim.Adam`` as in ``REM_fast`` (lr 2.5e-3 of the W3/W4 scripts).

Layout: official ``weight`` ``(out, in)``, ``delta1``/``delta3`` ``(out, 1)``; paperlab's kernel ``(in, out)`` with
``log_s1``/``log_s3`` ``(1, out)``. Tolerance: 1e-6 absolute (float32 both sides) on the quantized weight, the
gradients of the three scales and the scales after three Adam steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from paperlab.quant import flexround as fr  # noqa: E402


class round_ste(torch.autograd.Function):  # noqa: N801 (the official name)

  @staticmethod
  def forward(ctx, inputs):
    return torch.round(inputs)

  @staticmethod
  def backward(ctx, grad_output):
    return grad_output


def lp_loss(pred, tgt, p=2.0):
  return (pred - tgt).abs().pow(p).sum(1).mean()


class FlexRoundQuantizer(torch.nn.Module):
  """UniformAffineQuantizer(mode='flexround', channel_wise=True, clipping=False)."""

  def __init__(self, org_weight, n_bits, symmetric):
    super().__init__()
    self.sym = symmetric
    self.n_bits = n_bits
    self.n_levels = 2 ** n_bits
    self.eps = torch.tensor(1e-8, dtype=torch.float32)
    x_min, x_max = torch.aminmax(org_weight, dim=1)
    x_max = torch.max(x_max, torch.zeros_like(x_max))
    x_min = torch.min(x_min, torch.zeros_like(x_min))
    delta, zero_point = self.calculate_qparams(x_min, x_max)
    self.delta, self.zero_point = delta.reshape(-1, 1), zero_point.reshape(-1, 1)
    self.delta1 = torch.nn.Parameter(torch.log(self.delta).detach())
    self.delta2 = torch.nn.Parameter(torch.zeros_like(org_weight))
    self.delta3 = torch.nn.Parameter(torch.zeros_like(org_weight[:, 0].unsqueeze(-1)))

  def calculate_qparams(self, min_val, max_val):
    quant_min, quant_max = 0., self.n_levels - 1
    min_val_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_val_pos = torch.max(max_val, torch.zeros_like(max_val))
    if not self.sym:
      scale = (max_val_pos - min_val_neg) / float(quant_max - quant_min)
      scale = torch.max(scale, self.eps)
      zero_point = quant_min - torch.round(min_val_neg / scale)
      zero_point = torch.clamp(zero_point, quant_min, quant_max)
    else:
      scale = 2 * torch.max(max_val_pos, torch.abs(min_val_neg)) / float(quant_max - quant_min)
      scale = torch.max(scale, self.eps)
      zero_point = torch.zeros_like(scale)
    return scale, zero_point

  def forward(self, x):
    x_int = round_ste.apply(x / (self.delta1 + self.delta2 + self.delta3).exp())
    if not self.sym:
      x_quant = torch.clamp(x_int, -self.zero_point, self.n_levels - 1 - self.zero_point)
    else:
      x_quant = torch.clamp(x_int, - 2 ** (self.n_bits - 1), 2 ** (self.n_bits - 1) - 1)
    return x_quant * self.delta1.exp()


def _data():
  rng = np.random.default_rng(0)
  w = (0.3 * rng.standard_normal((12, 6))).astype(np.float32)
  x = rng.standard_normal((40, 12)).astype(np.float32)
  return w, x


def _perturbed(bits, symmetric):
  """Both sides at the same non-trivial point (scales moved off their init)."""
  w, x = _data()
  q = FlexRoundQuantizer(torch.tensor(w.T), bits, symmetric)
  rng = np.random.default_rng(1)
  with torch.no_grad():
    q.delta1.add_(torch.tensor(0.05 * rng.standard_normal((6, 1)), dtype=torch.float32))
    q.delta2.add_(torch.tensor(0.2 * rng.standard_normal((6, 12)), dtype=torch.float32))
    q.delta3.add_(torch.tensor(0.1 * rng.standard_normal((6, 1)), dtype=torch.float32))
  p0 = fr.flexround_init(jnp.asarray(w), bits=bits, symmetric=symmetric)
  np.testing.assert_allclose(np.asarray(p0.log_s1), np.log(q.delta.numpy()).T, atol=1e-6)
  p = p0._replace(log_s1=jnp.asarray(q.delta1.detach().numpy().T), log_s2=jnp.asarray(q.delta2.detach().numpy().T),
                  log_s3=jnp.asarray(q.delta3.detach().numpy().T))
  return w, x, q, p


@pytest.mark.parametrize("bits,symmetric", [(3, False), (4, True)])
def test_forward_and_gradients_match_official(bits, symmetric):
  w, x, q, p = _perturbed(bits, symmetric)
  y = x @ w
  w_ref = q(torch.tensor(w.T))
  np.testing.assert_allclose(np.asarray(fr.flexround_apply(jnp.asarray(w), p, bits, symmetric)),
                             w_ref.detach().numpy().T,
                             atol=1e-6)
  loss = lp_loss(torch.nn.functional.linear(torch.tensor(x), w_ref), torch.tensor(y))
  loss.backward()
  train = {"log_s1": p.log_s1, "log_s2": p.log_s2, "log_s3": p.log_s3}
  fixed = {"log_s4": p.log_s4, "zero": p.zero}
  val, g = jax.value_and_grad(fr._flex_loss)(train, fixed, jnp.asarray(w), jnp.asarray(x), jnp.asarray(y),
                                              jnp.float32(bits), symmetric)
  np.testing.assert_allclose(float(val), float(loss), rtol=1e-6)
  for name, ref in (("log_s1", q.delta1), ("log_s2", q.delta2), ("log_s3", q.delta3)):
    assert float(np.abs(ref.grad.numpy()).max()) > 0
    np.testing.assert_allclose(np.asarray(g[name]), ref.grad.numpy().T, atol=1e-6, err_msg=name)


def test_adam_steps_match_official():
  w, x = _data()
  y = x @ w
  q = FlexRoundQuantizer(torch.tensor(w.T), 3, False)
  opt = torch.optim.Adam([q.delta1, q.delta2, q.delta3], lr=2.5e-3)
  for _ in range(3):
    opt.zero_grad()
    lp_loss(torch.nn.functional.linear(torch.tensor(x), q(torch.tensor(w.T))), torch.tensor(y)).backward()
    opt.step()
  p0 = fr.flexround_init(jnp.asarray(w), bits=3)
  p, _ = fr._optimize(p0, jnp.asarray(w), jnp.asarray(x), jnp.asarray(y), jax.random.key(0), jnp.float32(3),
                      jnp.float32(2.5e-3), iters=3, batch_size=None, train_s4=False)
  for name, ref in (("log_s1", q.delta1), ("log_s2", q.delta2), ("log_s3", q.delta3)):
    np.testing.assert_allclose(np.asarray(getattr(p, name)), ref.detach().numpy().T, atol=1e-6, err_msg=name)
  assert float(jnp.max(jnp.abs(p.log_s2))) > 1e-3  # the steps moved S2
