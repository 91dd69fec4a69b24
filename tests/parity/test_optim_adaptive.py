"""Adafactor / AdamW / SGDW against the PyTorch references (torch.optim.Adafactor, torch.optim.AdamW,
pytorch_optimizer.SGDW), 100 steps on a least-squares problem with a 64x32 matrix and a vector, each side taking
its own gradients. Tolerance: relative error (per leaf) <= 1e-5 in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import pytorch_optimizer as po
import torch

from paperlab import optim

torch.set_num_threads(1)

STEPS = 100
RTOL = 1e-5


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(48, 64)).astype(np.float32)
  y = (x @ rng.normal(size=(64, 32)) + rng.normal(size=32)).astype(np.float32)
  w0 = (0.1 * rng.normal(size=(64, 32))).astype(np.float32)
  b0 = (0.1 * rng.normal(size=32)).astype(np.float32)
  return x, y, w0, b0


def _run_torch(make_opt, make_sched=None, steps=STEPS):
  x, y, w0, b0 = (torch.tensor(a) for a in _data())
  params = [torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())]
  opt = make_opt(params)
  sched = make_sched(opt) if make_sched else None
  for _ in range(steps):
    opt.zero_grad()
    torch.mean((x @ params[0] + params[1] - y) ** 2).backward()
    opt.step()
    if sched:
      sched.step()
  return {"w": params[0].detach().numpy(), "b": params[1].detach().numpy()}


def _run_jax(tx, steps=STEPS):
  x, y, w0, b0 = (jnp.asarray(a) for a in _data())
  loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(body, (params, tx.init(params)), None, length=steps)[0][0]

  return run({"w": w0, "b": b0})


def _assert_close(ours, ref):
  for k in ref:
    err = float(np.linalg.norm(np.asarray(ours[k]) - ref[k]) / np.linalg.norm(ref[k]))
    assert err <= RTOL, f"{k}: relative error {err:.2e}"


@pytest.mark.parametrize("max_step,steps", [(1e-2, STEPS), (0.3, 20)])
def test_adafactor_paper_matches_torch_adafactor(max_step, steps):
  """Factored second moment, t^-0.8 decay, update clipping d=1, relative step min(max_step, 1/sqrt(t)), eps2=1e-3.

  With max_step=0.3 the 1/sqrt(t) branch is active from t=12; that case runs 20 steps only, because steps of 30%
  of RMS(W) make this least-squares iteration oscillate and float32 rounding then grows past 1e-5 (by step 50).
  """
  ref = _run_torch(lambda ps: torch.optim.Adafactor(ps, lr=max_step, beta2_decay=-0.8, eps=(1e-30, 1e-3), d=1.0,
                                                    weight_decay=0.0), steps=steps)
  tx = optim.adafactor_paper() if max_step == 1e-2 else optim.adafactor_paper(optim.adafactor_relative_step(max_step))
  _assert_close(_run_jax(tx, steps), ref)


def test_optax_adamw_matches_torch_adamw():
  ref = _run_torch(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1))
  _assert_close(_run_jax(optax.adamw(1e-2, weight_decay=0.1)), ref)


def test_adamw_paper_with_cosine_multiplier_matches_torch_adamw_with_lambda_lr():
  """Paper: eta_t multiplies both alpha*Adam and lambda; torch's lr schedule does the same with lambda = lr*wd."""
  alpha, wd = 1e-2, 0.1
  cosine = lambda t: 0.5 * (1 + math.cos(math.pi * t / STEPS))
  ref = _run_torch(lambda ps: torch.optim.AdamW(ps, lr=alpha, weight_decay=wd),
                   lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, cosine))
  ours = _run_jax(optim.adamw_paper(alpha, schedule=optax.cosine_decay_schedule(1.0, STEPS),
                                    weight_decay=alpha * wd))
  _assert_close(ours, ref)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdw_matches_pytorch_optimizer_sgdw(nesterov):
  alpha, lam = 1e-2, 1e-3
  ref = _run_torch(lambda ps: po.SGDW(ps, lr=alpha, momentum=0.9, weight_decay=lam / alpha, nesterov=nesterov))
  _assert_close(_run_jax(optim.sgdw(alpha, momentum=0.9, weight_decay=lam, nesterov=nesterov)), ref)
