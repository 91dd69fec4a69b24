"""Parity of the momentum-family optimizers with independent code.

Grams and Gravity against ``pytorch_optimizer`` (>= 100 steps, float32, rel. error <= 1e-5) on one deterministic
problem with a conv kernel, a dense kernel, a bias and a norm scale; each framework computes its own gradients.
MoMo / MoMo-Adam and complex momentum against the papers' updates written out in NumPy (no PyTorch package ships
them: ``momo-opt`` is not installed here).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import Grams, Gravity

from paperlab import optim

STEPS = 120


def _problem(seed: int = 0):
  rng = np.random.default_rng(seed)
  params = {
      "conv": rng.normal(0, 0.3, (3, 3, 2, 4)).astype(np.float32),  # Flax HWIO
      "dense": rng.normal(0, 0.3, (4 * 6 * 6, 3)).astype(np.float32),
      "bias": rng.normal(0, 0.1, (3,)).astype(np.float32),
      "scale": (1 + rng.normal(0, 0.1, (4,))).astype(np.float32),
  }
  x = rng.normal(0, 1, (8, 8, 8, 2)).astype(np.float32)  # NHWC
  y = rng.normal(0, 1, (8, 3)).astype(np.float32)
  return params, x, y


def _jax_loss(p, x, y):
  h = jax.lax.conv_general_dilated(x, p["conv"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jnp.tanh(h * p["scale"])
  out = h.reshape(h.shape[0], -1) @ p["dense"] + p["bias"]
  return jnp.mean(jnp.square(out - y))


def _torch_loss(p, x, y):
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)
  h = torch.nn.functional.conv2d(xt, p["conv"].permute(3, 2, 0, 1))
  h = torch.tanh(h.permute(0, 2, 3, 1) * p["scale"])
  out = h.reshape(h.shape[0], -1) @ p["dense"] + p["bias"]
  return torch.mean(torch.square(out - torch.from_numpy(y)))


def _run_jax(opt, params, x, y, steps=STEPS, state=None):
  params = jax.tree.map(jnp.asarray, params)
  state = opt.init(params) if state is None else state

  @jax.jit
  def step(params, state):
    g = jax.grad(_jax_loss)(params, x, y)
    u, state = opt.update(g, state, params)
    return optax.apply_updates(params, u), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


def _run_torch(make_opt, params, x, y, steps=STEPS, prepare=None):
  tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
  opt = make_opt(list(tp.values()))
  if prepare is not None:
    prepare(opt, tp)
  for _ in range(steps):
    opt.zero_grad()
    _torch_loss(tp, x, y).backward()
    opt.step()
  return {k: v.detach().numpy() for k, v in tp.items()}


def _max_rel_err(a, b):
  return max(float(np.linalg.norm(np.asarray(a[k]) - b[k]) / np.linalg.norm(b[k])) for k in b)


def _gradient_stream(params, steps, seed=0):
  """Gradients that change sign often (a drifting sinusoid plus noise), independent of the parameters, so a
  sign-based update (Grams) is compared without the chaos of feeding back ulp-level differences."""
  rng = np.random.default_rng(seed)
  t = np.arange(steps, dtype=np.float64)[:, None]
  out = []
  for _ in range(steps):
    out.append({})
  for k, v in params.items():
    n = v.size
    amp, freq, phase = rng.uniform(0.1, 2, n), rng.uniform(0.05, 0.5, n), rng.uniform(0, 6.3, n)
    g = amp * np.sin(freq * t + phase) + 0.3 * rng.normal(size=(steps, n)) + 0.2
    for i in range(steps):
      out[i][k] = g[i].reshape(v.shape).astype(np.float32)
  return out


def _stream_jax(opt, params, grads):
  params = jax.tree.map(jnp.asarray, params)
  state = opt.init(params)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*opt.update(g, s, p)))
  for g in grads:
    params, state = step(params, state, g)
  return params


def _stream_torch(topt_cls, params, grads, **kw):
  tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
  opt = topt_cls(list(tp.values()), **kw)
  for g in grads:
    for k, p in tp.items():
      p.grad = torch.from_numpy(g[k])
    opt.step()
  return {k: v.detach().numpy() for k, v in tp.items()}


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_grams_update_rule_matches_pytorch_optimizer_over_100_steps(weight_decay):
  params, _, _ = _problem()
  grads = _gradient_stream(params, 100)
  ours = _stream_jax(optim.grams(1e-2, eps=1e-6, weight_decay=weight_decay), params, grads)
  ref = _stream_torch(Grams, params, grads, lr=1e-2, eps=1e-6, weight_decay=weight_decay, weight_decouple=True)
  assert _max_rel_err(ours, ref) <= 1e-5
  assert _max_rel_err(params, ref) > 1e-2  # the optimizer really moved the weights


def test_grams_training_matches_pytorch_optimizer_over_20_steps():
  # Closed loop (each framework differentiates its own model). Longer runs drift apart: once the training
  # gradient hovers around zero, ulp-level differences flip sign(g) and Grams' update jumps by 2*lr*|u|.
  params, x, y = _problem()
  ours = _run_jax(optim.grams(1e-3, eps=1e-6, weight_decay=0.05), params, x, y, steps=20)
  ref = _run_torch(lambda ps: Grams(ps, lr=1e-3, eps=1e-6, weight_decay=0.05), params, x, y, steps=20)
  assert _max_rel_err(ours, ref) <= 1e-5


def test_gravity_matches_pytorch_optimizer_with_copied_v0():
  params, x, y = _problem(1)
  lr = 0.05
  opt = optim.gravity(lr, alpha=0.01, beta=0.9, key=jax.random.key(3))
  state = opt.init(jax.tree.map(jnp.asarray, params))
  v0 = state[0].velocity
  # V_0 ~ N(0, (alpha/lr)^2): check the scale before copying it into torch.
  std = float(np.std(np.concatenate([np.ravel(v) for v in jax.tree.leaves(v0)])))
  assert 0.7 * 0.01 / lr < std < 1.3 * 0.01 / lr

  def prepare(topt, tp):
    for k, p in tp.items():
      topt.state[p]["v"] = torch.from_numpy(np.array(v0[k]))

  ours = _run_jax(opt, params, x, y, state=state)
  ref = _run_torch(lambda ps: Gravity(ps, lr=lr, alpha=0.01, beta=0.9, foreach=False), params, x, y, prepare=prepare)
  assert _max_rel_err(ours, ref) <= 1e-5
  assert _max_rel_err(params, ref) > 1e-2


# ---------------------------------------------------------------------------------- MoMo: the paper's update in NumPy


def _momo_numpy(grad_fn, loss_fn, x0, steps, lr, beta=0.9, b2=None, eps=1e-8, lb=0.0, wd=0.0):
  """MoMo (Schaipp et al. 2024, Alg. 1) / MoMo-Adam (Alg. 2) with proximal weight decay, in float64 NumPy."""
  x = x0.astype(np.float64)
  d = np.zeros_like(x)
  v = np.zeros_like(x)
  fbar = gamma = 0.0
  for k in range(1, steps + 1):
    g, f = grad_fn(x), loss_fn(x)
    b = beta if (b2 is not None or k > 1) else 0.0  # MoMo starts its averages at the first sample
    d = b * d + (1 - b) * g
    fbar = b * fbar + (1 - b) * f
    gamma = b * gamma + (1 - b) * g @ x
    if b2 is None:
      rho, precond = 1.0, np.ones_like(x)
    else:
      rho = 1 - beta**k
      v = b2 * v + (1 - b2) * g * g
      precond = eps + np.sqrt(v / (1 - b2**k))
    norm2 = d @ (d / precond)
    t = max((1 + lr * wd) * (fbar - rho * lb - gamma) + d @ x, 0.0) / norm2
    tau = min(lr / rho, t)
    x = (x - tau * d / precond) / (1 + lr * wd)
  return x


def _logreg():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(64, 6))
  labels = (a @ rng.normal(size=6) + 0.3 * rng.normal(size=64) > 0).astype(np.float64)

  def loss(w):
    z = a @ w
    return float(np.mean(np.logaddexp(0, z) - labels * z) + 0.0)

  def grad(w):
    return a.T @ (1 / (1 + np.exp(-(a @ w))) - labels) / len(labels)

  def jloss(w):
    z = jnp.asarray(a, jnp.float32) @ w
    return jnp.mean(jax.nn.softplus(z) - jnp.asarray(labels, jnp.float32) * z)

  return loss, grad, jloss, rng.normal(0, 0.5, 6)


def _run_value_opt(opt, jloss, x0, steps):
  x = jnp.asarray(x0, jnp.float32)
  state = opt.init(x)

  @jax.jit
  def step(x, state):
    f, g = jax.value_and_grad(jloss)(x)
    u, state = opt.update(g, state, x, value=f)
    return x + u, state

  for _ in range(steps):
    x, state = step(x, state)
  return np.asarray(x)


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("lr", [0.3, 10.0])  # small lr: capped steps; large lr: the Polyak step is active
def test_momo_matches_paper_update(lr, wd):
  loss, grad, jloss, x0 = _logreg()
  want = _momo_numpy(grad, loss, x0, 100, lr, wd=wd)
  got = _run_value_opt(optim.momo(lr, weight_decay=wd), jloss, x0, 100)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_momo_adam_matches_paper_update(wd):
  loss, grad, jloss, x0 = _logreg()
  want = _momo_numpy(grad, loss, x0, 100, 0.5, b2=0.999, wd=wd)
  got = _run_value_opt(optim.momo_adam(0.5, weight_decay=wd), jloss, x0, 100)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ours,theirs", [(lambda: optim.momo(5.0), lambda: optax.contrib.momo(5.0)),
                                         (lambda: optim.momo_adam(0.5), lambda: optax.contrib.momo_adam(0.5))])
def test_momo_without_weight_decay_equals_optax_contrib(ours, theirs):
  _, _, jloss, x0 = _logreg()
  a = _run_value_opt(ours(), jloss, x0, 100)
  b = _run_value_opt(theirs(), jloss, x0, 100)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_momo_weight_decay_is_proximal_unlike_optax_contrib():
  # The paper (and momo-opt) divide the whole step by (1 + lr*wd); optax.contrib divides only x.
  _, _, jloss, x0 = _logreg()
  a = _run_value_opt(optim.momo(5.0, weight_decay=0.1), jloss, x0, 20)
  b = _run_value_opt(optax.contrib.momo(5.0, weight_decay=0.1), jloss, x0, 20)
  assert np.max(np.abs(a - b)) > 1e-3


# ----------------------------------------------------------------------------------------- complex momentum in NumPy


def test_complex_momentum_matches_complex_arithmetic_on_bilinear_game():
  beta = 0.9 * np.exp(1j * np.pi / 8)
  alpha = 0.05
  w = np.array([1.0, 1.0])
  mu = np.zeros(2, complex)
  for _ in range(200):  # min_x max_y x*y: each player's own-loss gradient (y, -x)
    g = np.array([w[1], -w[0]])
    mu = beta * mu - g
    w = w + np.real(alpha * mu)
  opt = optim.complex_momentum(alpha, beta_abs=0.9, beta_phase=np.pi / 8)
  p = jnp.array([1.0, 1.0])
  state = opt.init(p)
  for _ in range(200):
    u, state = opt.update(jnp.stack([p[1], -p[0]]), state)
    p = p + u
  np.testing.assert_allclose(np.asarray(p), w, rtol=1e-4, atol=1e-6)
