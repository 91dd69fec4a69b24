"""AdamP / SGDP parity with the official PyTorch package ``adamp`` (clovaai, 0.3.0).

The deterministic problem: conv -> GroupNorm -> relu -> dense -> LayerNorm -> relu -> dense(logits) with
cross-entropy, so the conv kernel and the first dense kernel are scale-invariant (they get projected), the logits
kernel is not, and biases / norm scales are vectors (never projected). PyTorch keeps its (out, in, ...) tensors;
the JAX side keeps Flax layouts (Dense (in, out), Conv (H, W, in, out)) and the two are mapped by transposition.
Both sides take their gradient of the same loss (written in each framework) at their *own* parameters, 100 steps.
Learning rates are small enough (AdamP 1e-3, SGDP 1e-2) that float32 rounding is not amplified chaotically:
plain optax.adam / optax.sgd against torch.optim on this problem stay below 2e-6 at these rates.
Tolerance: relative error (per leaf, Frobenius) <= 1e-5 in float32.
"""

from __future__ import annotations

import adamp as adamp_official
import jax
import jax.numpy as jnp
import optax
import pytest
import pytorch_optimizer
import torch
import torch.nn.functional as F

from paperlab import optim

torch.set_num_threads(1)  # tiny tensors: threads only add contention

STEPS = 100
RTOL = 1e-5

# Flax layout <-> PyTorch layout for each leaf.

_TO_FLAX = {"conv_kernel": (2, 3, 1, 0), "dense1_kernel": (1, 0), "dense2_kernel": (1, 0)}


def _init_torch(seed=0):
  g = torch.Generator().manual_seed(seed)
  r = lambda *s, scale=0.3: (torch.randn(*s, generator=g) * scale).float()
  return {"conv_kernel": r(4, 2, 3, 3), "conv_bias": r(4, scale=0.1), "gn_scale": 1 + r(4, scale=0.1),
          "gn_bias": r(4, scale=0.1), "dense1_kernel": r(8, 4 * 4 * 4), "dense1_bias": r(8, scale=0.1),
          "ln_scale": 1 + r(8, scale=0.1), "ln_bias": r(8, scale=0.1), "dense2_kernel": r(3, 8),
          "dense2_bias": r(3, scale=0.1)}


def _loss(p, x, y):
  h = F.conv2d(x, p["conv_kernel"], p["conv_bias"])
  h = torch.relu(F.group_norm(h, 2, p["gn_scale"], p["gn_bias"]))
  h = F.linear(h.flatten(1), p["dense1_kernel"], p["dense1_bias"])
  h = torch.relu(F.layer_norm(h, (8,), p["ln_scale"], p["ln_bias"]))
  return F.cross_entropy(F.linear(h, p["dense2_kernel"], p["dense2_bias"]), y)


def _batch(step):
  g = torch.Generator().manual_seed(1000 + step % 7)
  return torch.randn(12, 2, 6, 6, generator=g), torch.randint(0, 3, (12,), generator=g)


def _to_flax(p):
  return {k: jnp.asarray(v.detach().numpy().transpose(_TO_FLAX[k]) if k in _TO_FLAX else v.detach().numpy())
          for k, v in p.items()}


def _jax_loss(p, x, y):
  """The same network in JAX on Flax-layout params (x arrives NCHW as in PyTorch)."""
  h = jax.lax.conv_general_dilated(x.transpose(0, 2, 3, 1), p["conv_kernel"], (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["conv_bias"]
  b, hh, ww, c = h.shape
  hg = h.reshape(b, hh, ww, 2, c // 2)
  mean = hg.mean(axis=(1, 2, 4), keepdims=True)
  var = ((hg - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  h = ((hg - mean) / jnp.sqrt(var + 1e-5)).reshape(h.shape) * p["gn_scale"] + p["gn_bias"]
  h = jax.nn.relu(h).transpose(0, 3, 1, 2).reshape(b, -1)  # PyTorch's (C, H, W) flatten order
  h = h @ p["dense1_kernel"] + p["dense1_bias"]
  mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  h = jax.nn.relu((h - mean) / jnp.sqrt(var + 1e-5) * p["ln_scale"] + p["ln_bias"])
  logits = h @ p["dense2_kernel"] + p["dense2_bias"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _run_torch(make_opt):
  params = {k: torch.nn.Parameter(v.clone()) for k, v in _init_torch().items()}
  opt = make_opt(list(params.values()))
  for step in range(STEPS):
    opt.zero_grad()
    _loss(params, *_batch(step)).backward()
    opt.step()
  return _to_flax(params)


def _run_jax(tx):
  batches = [_batch(s) for s in range(7)]
  xs = jnp.stack([jnp.asarray(b[0].numpy()) for b in batches])
  ys = jnp.stack([jnp.asarray(b[1].numpy()) for b in batches])

  @jax.jit
  def run(params):
    def body(carry, step):
      params, state = carry
      grads = jax.grad(_jax_loss)(params, xs[step % 7], ys[step % 7])
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(STEPS))[0][0]

  return run(_to_flax(_init_torch()))


def _assert_close(ours, ref):
  for k in ref:
    err = float(jnp.linalg.norm(ours[k] - ref[k]) / jnp.linalg.norm(ref[k]))
    assert err <= RTOL, f"{k}: relative error {err:.2e}"


def _projection_happens():
  """The conv kernel and dense1 kernel are projected at step 0 and the logits kernel is not (the test is not vacuous)."""
  params = _to_flax(_init_torch())
  x, y = _batch(0)
  grads = jax.grad(_jax_loss)(params, jnp.asarray(x.numpy()), jnp.asarray(y.numpy()))
  _, projected = optim.projection_direction(grads, grads, params)
  assert bool(projected["conv_kernel"]) and bool(projected["dense1_kernel"])
  assert not bool(projected["dense2_kernel"])


@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (True, 0.1)])
def test_adamp_matches_official(nesterov, weight_decay):
  _projection_happens()
  ref = _run_torch(lambda ps: adamp_official.AdamP(ps, lr=1e-3, nesterov=nesterov, weight_decay=weight_decay))
  ours = _run_jax(optim.adamp(1e-3, nesterov=nesterov, weight_decay=weight_decay))
  _assert_close(ours, ref)


@pytest.mark.parametrize("nesterov,weight_decay", [(False, 1e-2), (True, 1e-2)])
def test_sgdp_matches_official(nesterov, weight_decay):
  # Without Nesterov the official code projects its momentum buffer in place: project_buffer=True mirrors that.
  ref = _run_torch(lambda ps: adamp_official.SGDP(ps, lr=0.01, momentum=0.9, nesterov=nesterov,
                                                  weight_decay=weight_decay))
  ours = _run_jax(optim.sgdp(0.01, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay,
                             project_buffer=True))
  _assert_close(ours, ref)


def test_sgdp_default_matches_pytorch_optimizer():
  """The default keeps the raw momentum buffer (paper Alg. 2), as pytorch_optimizer.SGDP does."""
  ref = _run_torch(lambda ps: pytorch_optimizer.SGDP(ps, lr=0.01, momentum=0.9, weight_decay=1e-2))
  ours = _run_jax(optim.sgdp(0.01, momentum=0.9, weight_decay=1e-2))
  _assert_close(ours, ref)
