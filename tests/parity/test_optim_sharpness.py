"""SAM family parity with ``pytorch_optimizer`` 4.1.0: SAM, ASAM, GSAM, WSAM (both modes), FriendlySAM, LookSAM.

Problem: a tanh MLP (dense -> LayerNorm -> tanh -> dense) with cross-entropy, 5 fixed batches cycled, 100 steps,
base optimizer SGD with momentum 0.9 (``torch.optim.SGD`` / ``optax.sgd``). Each side computes its gradients of the
same loss at its own parameters (PyTorch (out, in) weights map to Flax (in, out) kernels by transposition).
Tolerance: relative error (per leaf, Frobenius) <= 1e-5 in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
import pytorch_optimizer as po
import torch
import torch.nn.functional as F

from paperlab import optim

torch.set_num_threads(1)  # tiny tensors: threads only add contention

STEPS = 100
RTOL = 1e-5
LR = 0.05
_TRANSPOSED = ("w1", "w2")


def _init_torch():
  g = torch.Generator().manual_seed(0)
  return {"w1": torch.randn(16, 6, generator=g) * 0.5, "b1": torch.randn(16, generator=g) * 0.1,
          "ln_scale": 1 + 0.1 * torch.randn(16, generator=g), "ln_bias": 0.1 * torch.randn(16, generator=g),
          "w2": torch.randn(4, 16, generator=g) * 0.5, "b2": torch.randn(4, generator=g) * 0.1}


def _batch(step):
  g = torch.Generator().manual_seed(500 + step % 5)
  x = torch.randn(24, 6, generator=g)
  return x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0.3).long()


def _torch_loss(p, x, y):
  h = torch.tanh(F.layer_norm(F.linear(x, p["w1"], p["b1"]), (16,), p["ln_scale"], p["ln_bias"]))
  return F.cross_entropy(F.linear(h, p["w2"], p["b2"]), y)


def _jax_loss(p, x, y):
  h = x @ p["w1"] + p["b1"]
  mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
  h = jnp.tanh((h - mean) / jnp.sqrt(var + 1e-5) * p["ln_scale"] + p["ln_bias"])
  return optax.softmax_cross_entropy_with_integer_labels(h @ p["w2"] + p["b2"], y).mean()


def _to_flax(p):
  return {k: jnp.asarray(v.detach().numpy().T if k in _TRANSPOSED else v.detach().numpy()) for k, v in p.items()}


def _run_torch(make_opt, protocol="closure"):
  """``protocol``: 'closure' (grads at w first, then step(closure)), 'wsam' (step(closure) computes both),
  'gsam' (step(closure) with a closure returning (outputs, loss))."""
  params = {k: torch.nn.Parameter(v.clone()) for k, v in _init_torch().items()}
  opt = make_opt(list(params.values()))
  for step in range(STEPS):
    x, y = _batch(step)

    def closure():
      opt.zero_grad()
      with torch.enable_grad():
        loss = _torch_loss(params, x, y)
        loss.backward()
      return (None, loss.detach()) if protocol == "gsam" else loss

    if protocol == "closure":
      closure()
    opt.step(closure)
  return _to_flax(params)


def _run_jax(tx):
  xs, ys = zip(*[_batch(s) for s in range(5)])
  xs = jnp.stack([jnp.asarray(x.numpy()) for x in xs])
  ys = jnp.stack([jnp.asarray(y.numpy()) for y in ys])

  @jax.jit
  def run(params):
    def body(carry, step):
      params, state = carry
      grad_fn = lambda p: jax.grad(_jax_loss)(p, xs[step % 5], ys[step % 5])
      updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(STEPS))[0][0]

  return run(_to_flax(_init_torch()))


def _assert_close(ours, ref):
  for k in ref:
    err = float(jnp.linalg.norm(ours[k] - ref[k]) / jnp.linalg.norm(ref[k]))
    assert err <= RTOL, f"{k}: relative error {err:.2e}"


def _sgd():
  return optax.sgd(LR, momentum=0.9)


class _TorchSGD(torch.optim.SGD):
  def __init__(self, params, **kw):
    super().__init__(params, lr=LR, momentum=0.9)


@pytest.mark.parametrize("adaptive,rho", [(False, 0.05), (True, 0.5)])
def test_sam_and_asam_match_pytorch_optimizer(adaptive, rho):
  ref = _run_torch(lambda ps: po.SAM(ps, _TorchSGD, rho=rho, adaptive=adaptive))
  ours = _run_jax(optim.sam(_sgd(), rho=rho, adaptive=adaptive, eta=0.0))
  _assert_close(ours, ref)


def test_gsam_matches_pytorch_optimizer():
  def make(ps):
    base = torch.optim.SGD(ps, lr=LR, momentum=0.9)
    sched = po.ProportionScheduler(torch.optim.lr_scheduler.ConstantLR(base, factor=1.0), max_lr=LR, min_lr=LR,
                                   max_value=0.1, min_value=0.1)
    return po.GSAM(ps, base, model=torch.nn.Identity(), rho_scheduler=sched, alpha=0.4)

  ref = _run_torch(make, protocol="gsam")
  ours = _run_jax(optim.gsam(_sgd(), rho=0.1, alpha=0.4))
  _assert_close(ours, ref)


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_matches_pytorch_optimizer(decouple):
  ref = _run_torch(lambda ps: po.WSAM(torch.nn.Identity(), ps, _TorchSGD, rho=0.05, gamma=0.9, decouple=decouple),
                   protocol="wsam")
  ours = _run_jax(optim.wsam(_sgd(), rho=0.05, gamma=0.9, decouple=decouple, learning_rate=LR))
  _assert_close(ours, ref)


def test_friendly_sam_matches_pytorch_optimizer():
  ref = _run_torch(lambda ps: po.FriendlySAM(ps, _TorchSGD, rho=0.05, sigma=1.0, lmbda=0.9))
  ours = _run_jax(optim.friendly_sam(_sgd(), rho=0.05, sigma=1.0, lmbda=0.9))
  _assert_close(ours, ref)


def test_looksam_matches_pytorch_optimizer():
  ref = _run_torch(lambda ps: po.LookSAM(ps, _TorchSGD, rho=0.1, k=5, alpha=0.7))
  ours = _run_jax(optim.looksam(_sgd(), rho=0.1, k=5, alpha=0.7))
  _assert_close(ours, ref)
