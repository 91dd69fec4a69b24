"""AdaQuant and the mixed-precision bit allocation against independent oracles.

* AdaQuant (Hubara et al., arXiv:2006.10518) against a PyTorch transcription of the authors' official code,
  github:papers-submission/CalibTIP at commit 05354a94feec1c1fe5b642289b45784599d9a0b0: ``quantize_with_grad`` and
  ``Round`` of ``models/modules/quantize.py``, the ``QLinear`` forward with ``QuantThUpdate`` quantizers (the
  non-measure branch; ``equ_scale`` is ones and not trained, the bias is left unquantized as in paperlab), and the
  loop of ``adaquant`` in ``BERT-base/src/mse_optimization.py`` (four ``torch.optim.Adam`` groups, ``F.mse_loss``).
  The mini-batch is the whole calibration set (``randperm(N)[:N]`` only reorders the rows of a mean), so both sides
  see the same data every step. Tolerance: 1e-6 on the quantizer, then 2e-5 on the parameters after 20 steps (float32
  on both sides: a code that flips on a rounding tie would show as a much larger error).
* The integer program (arXiv:2006.10518, Eq. 5-7) against brute-force enumeration of all ``3^L`` allocations for
  ``L <= 6``: the same optimum (a closed form).
* Hutchinson's per-layer Hessian trace (Schaefer et al., arXiv:2306.04879; HAWQ-V2) against the exact block traces
  of the Hessian that ``torch.autograd.functional.hessian`` computes for the same small network: within 5% at
  ``n_probe=256`` (the catalogue's bound; a statistical estimate, seeded).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from paperlab.quant import adaquant as aq  # noqa: E402
from paperlab.quant import bitalloc  # noqa: E402

torch.set_default_dtype(torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# transcription of CalibTIP @ 05354a9


class Round(torch.autograd.Function):
  """models/modules/quantize.py ``Round`` (out-of-place)."""

  @staticmethod
  def forward(ctx, input):  # pylint: disable=arguments-differ
    return input.clone().round_()

  @staticmethod
  def backward(ctx, grad_output):  # pylint: disable=arguments-differ
    return grad_output


def quantize_with_grad(input, rng, zp, num_bits, signed=True):
  """models/modules/quantize.py ``quantize_with_grad`` with ``dequantize=True``, ``stochastic=False``."""
  output = input.clone()
  qmin = -(2. ** (num_bits - 1)) if signed else 0.
  qmax = qmin + 2. ** num_bits - 1.
  running_range = rng.clamp(min=1e-6, max=1e5)
  scale = running_range / (qmax - qmin)
  running_zero_point_round = Round.apply(qmin - zp / scale)
  zero_point = (qmin - running_zero_point_round.clamp(qmin, qmax)) * scale
  output = output.add(qmin * scale - zero_point).div(scale)
  output = Round.apply(output.clamp(qmin, qmax))
  output = output.mul(scale).add(zero_point - qmin * scale)
  return output


class QLinear(torch.nn.Module):
  """``QLinear`` (measure=False, perC=True): input quantizer per tensor, weight quantizer per output row."""

  def __init__(self, weight, bias, w_range, w_zp, x_range, x_zp, bits, act_bits):
    super().__init__()
    self.weight = torch.nn.Parameter(weight.clone())
    self.bias = torch.nn.Parameter(bias.clone())
    self.w_range = torch.nn.Parameter(w_range.clone())  # quantize_weight.running_range, (out, 1)
    self.w_zp = torch.nn.Parameter(w_zp.clone())
    self.x_range = torch.nn.Parameter(x_range.clone())  # quantize_input.running_range, (1,)
    self.x_zp = torch.nn.Parameter(x_zp.clone())
    self.bits, self.act_bits = bits, act_bits

  def forward(self, input):
    qinput = quantize_with_grad(input, self.x_range, self.x_zp, self.act_bits)
    qweight = quantize_with_grad(self.weight, self.w_range, self.w_zp, self.bits)
    return torch.nn.functional.linear(qinput, qweight, self.bias)


def official_adaquant(layer, cached_inps, cached_outs, lr_in=1e-1, lr_qpw=1e-3, lr_w=1e-5, lr_b=1e-3, iters=100):
  """BERT-base/src/mse_optimization.py ``adaquant`` (batch = all cached samples; no progress bar or test MSE)."""
  opt_w = torch.optim.Adam([layer.weight], lr=lr_w)
  opt_bias = torch.optim.Adam([layer.bias], lr=lr_b)
  opt_qparams_in = torch.optim.Adam([layer.x_range, layer.x_zp], lr=lr_in)
  opt_qparams_w = torch.optim.Adam([layer.w_range, layer.w_zp], lr=lr_qpw)
  losses = []
  for _ in range(iters):
    qout = layer(cached_inps)
    loss = torch.nn.functional.mse_loss(qout, cached_outs)
    losses.append(loss.item())
    for o in (opt_w, opt_bias, opt_qparams_in, opt_qparams_w):
      o.zero_grad()
    loss.backward()
    for o in (opt_w, opt_bias, opt_qparams_in, opt_qparams_w):
      o.step()
  return np.asarray(losses)


def _problem(seed=0, n=96, d_in=24, d_out=12):
  rng = np.random.default_rng(seed)
  w = (rng.standard_normal((d_in, d_out)) * 0.2).astype(np.float32)
  b = (rng.standard_normal(d_out) * 0.1).astype(np.float32)
  x = np.maximum(rng.standard_normal((n, d_in)), 0).astype(np.float32) * 2.0  # post-ReLU inputs
  y = (x @ w + b + 0.01 * rng.standard_normal((n, d_out))).astype(np.float32)
  return w, b, x, y


@pytest.mark.parametrize("bits", [4, 3])
def test_quantizer_matches_official_quantize_with_grad(bits):
  w, _, x, _ = _problem(1)
  w_range, w_off = aq.weight_qparams(jnp.asarray(w))
  ours = np.asarray(aq.fake_quantize_range(w, w_range, w_off, bits))
  theirs = quantize_with_grad(torch.tensor(w.T), torch.tensor(np.asarray(w_range))[:, None],
                              torch.tensor(np.asarray(w_off))[:, None], bits).numpy().T
  np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
  # the per-tensor input grid, from the official measure pass (mean of per-sample min / max)
  x_range, x_off = aq.input_qparams(jnp.asarray(x))
  xt = torch.tensor(x)
  np.testing.assert_allclose(float(x_range), float(xt.max(1)[0].mean() - 0.0), rtol=1e-6)
  ours_x = np.asarray(aq.fake_quantize_range(x, x_range, x_off, bits))
  theirs_x = quantize_with_grad(xt, torch.tensor([float(x_range)]), torch.tensor([float(x_off)]), bits).numpy()
  np.testing.assert_allclose(ours_x, theirs_x, atol=1e-6, rtol=0)


def test_quantizer_gradients_match_official_straight_through():
  w, _, _, _ = _problem(2)
  w_range, w_off = aq.weight_qparams(jnp.asarray(w))
  w_range = w_range * 0.8  # some weights clipped, so the clamp's zero gradient shows
  g = np.asarray(jax.random.normal(jax.random.key(0), w.shape))
  ours = jax.grad(lambda a, r, o: jnp.sum(aq.fake_quantize_range(a, r, o, 3) * g), argnums=(0, 1, 2))(
      jnp.asarray(w), w_range, w_off)
  wt = torch.tensor(w.T, requires_grad=True)
  rt = torch.tensor(np.asarray(w_range)[:, None], requires_grad=True)
  ot = torch.tensor(np.asarray(w_off)[:, None], requires_grad=True)
  (quantize_with_grad(wt, rt, ot, 3) * torch.tensor(g.T)).sum().backward()
  np.testing.assert_allclose(np.asarray(ours[0]), wt.grad.numpy().T, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ours[1]), rt.grad.numpy()[:, 0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(ours[2]), ot.grad.numpy()[:, 0], atol=1e-5, rtol=1e-5)


def test_adaquant_matches_official_loop():
  w, b, x, y = _problem(3)
  iters = 20
  lr = dict(lr_w=1e-3, lr_b=1e-3, lr_w_qparams=1e-3, lr_x_qparams=1e-2)  # larger weight steps so weights move
  res = aq.adaquant_layer(w, x, y, bias=b, bits=4, act_bits=4, iters=iters, batch_size=None, keep_best=False, **lr)
  w_range, w_off = aq.weight_qparams(jnp.asarray(w))
  x_range, x_off = aq.input_qparams(jnp.asarray(x))
  layer = QLinear(torch.tensor(w.T), torch.tensor(b), torch.tensor(np.asarray(w_range))[:, None],
                  torch.tensor(np.asarray(w_off))[:, None], torch.tensor([float(x_range)]),
                  torch.tensor([float(x_off)]), 4, 4)
  losses = official_adaquant(layer, torch.tensor(x), torch.tensor(y), lr_in=lr["lr_x_qparams"],
                             lr_qpw=lr["lr_w_qparams"], lr_w=lr["lr_w"], lr_b=lr["lr_b"], iters=iters)
  np.testing.assert_allclose(np.asarray(res.losses), losses, rtol=1e-4)
  p = res.params
  assert float(np.abs(np.asarray(p.kernel) - w).max()) > 1e-3  # the weights did move
  np.testing.assert_allclose(np.asarray(p.kernel), layer.weight.detach().numpy().T, atol=2e-5)
  np.testing.assert_allclose(np.asarray(p.bias), layer.bias.detach().numpy(), atol=2e-5)
  np.testing.assert_allclose(np.asarray(p.w_range), layer.w_range.detach().numpy()[:, 0], atol=2e-5)
  np.testing.assert_allclose(np.asarray(p.w_offset), layer.w_zp.detach().numpy()[:, 0], atol=2e-5)
  np.testing.assert_allclose(float(p.x_range), float(layer.x_range.detach()[0]), atol=2e-5)
  np.testing.assert_allclose(float(p.x_offset), float(layer.x_zp.detach()[0]), atol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# the integer program against enumeration


@pytest.mark.parametrize("layers", [1, 3, 6])
def test_ip_optimum_equals_brute_force_enumeration(layers):
  rng = np.random.default_rng(layers)
  bits = (2, 4, 8)
  for _ in range(5):
    delta = rng.random((layers, 3)) * np.array([4.0, 1.0, 0.1])  # fewer bits, larger degradation
    cost = bitalloc.allocation_cost(rng.integers(10, 500, layers), bits)
    budget = float(rng.uniform(cost[:, 0].sum(), cost[:, 2].sum()))
    ours = bitalloc.bit_allocation_ip(delta, cost, budget)
    feasible = [js for js in itertools.product(range(3), repeat=layers)
                if sum(cost[l, j] for l, j in enumerate(js)) <= budget]
    best = min(feasible, key=lambda js: sum(delta[l, j] for l, j in enumerate(js)))
    assert tuple(ours) == best
    assert sum(cost[l, j] for l, j in enumerate(ours)) <= budget


# ---------------------------------------------------------------------------------------------------------------
# Hutchinson's trace against the exact Hessian


def test_hutchinson_trace_within_5_percent_of_exact_torch_hessian():
  """A small softmax-regression layer (kernel 8x4 and bias): both blocks' traces within 5% (seeded probes)."""
  import optax  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = rng.standard_normal((512, 8)).astype(np.float32)
  y = rng.integers(0, 4, 512)
  w = (rng.standard_normal((8, 4)) * 0.5).astype(np.float32)
  b = np.zeros(4, np.float32)

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(x @ p["kernel"] + p["bias"], y).mean()

  est = jax.jit(lambda p, k: bitalloc.hessian_trace(loss, p, k, n_probe=256))(
      {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}, jax.random.key(0))
  xt, yt = torch.tensor(x), torch.tensor(y)

  def tloss(k, c):
    return torch.nn.functional.cross_entropy(xt @ k + c, yt)

  h = torch.autograd.functional.hessian(tloss, (torch.tensor(w), torch.tensor(b)))
  exact = {"kernel": float(torch.diagonal(h[0][0].reshape(32, 32)).sum()),
           "bias": float(torch.diagonal(h[1][1]).sum())}
  for k in exact:
    assert abs(float(est[k]) - exact[k]) <= 0.05 * abs(exact[k]), (k, float(est[k]), exact[k])
