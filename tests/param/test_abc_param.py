"""abc-parametrizations (Yang & Hu, "Feature Learning in Infinite-Width Neural Networks", arXiv:2011.14522): the
paper's tables, the abc-symmetry of SGD checked numerically, and muP's abc equal to paperlab's muP rules (those are
parity-tested against the ``mup`` package in tests/parity/test_param_mup.py)."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import param
from paperlab.models import MLP

# TP4 Sec. 3 (Yang & Hu 2021): (a, b, c) of the input, hidden and output layers, typed from the paper.
PAPER = {
    "sp": {"input": (0, 0, 0), "hidden": (0, 0.5, 0), "output": (0, 0.5, 0)},
    "ntk": {"input": (0, 0, 0), "hidden": (0.5, 0, 0), "output": (0.5, 0, 0)},
    "mup": {"input": (-0.5, 0.5, 0), "hidden": (0, 0.5, 0), "output": (0.5, 0.5, 0)},
}


def _mlp(width, depth=2, d_in=16, d_out=3):
  return nnx.eval_shape(lambda: MLP(d_in, [width] * depth, d_out, rngs=nnx.Rngs(0)))


def _zeros(shapes):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), param.param_shapes(shapes))


@pytest.mark.parametrize("kind", ["sp", "ntk", "mup"])
def test_exponents_and_numbers_follow_the_papers_table(kind):
  width, base = 256, 32
  spec = param.abc(_mlp(width), _mlp(base), kind=kind, bias_gain=0.5)
  roles = {"hidden/0/kernel": "input", "hidden/1/kernel": "hidden", "head/kernel": "output"}
  m = width / base
  sp_base = param.parametrize(_mlp(base), _mlp(base), delta=_mlp(width), kind="sp", bias_gain=0.5).rules
  for path, row in roles.items():
    a, b, c = PAPER[kind][row]
    assert spec.exponents[path] == (a, b, c), path
    r = spec.parametrization.rules[path]
    assert r.multiplier == pytest.approx(m ** -a) and r.lr_multiplier == pytest.approx(m ** -c)
    assert r.init_std == pytest.approx(sp_base[path].init_std * m ** -b)  # constants at the base: SP's
  # a bias is a weight from the constant input 1: the input layer's exponents
  assert spec.exponents["hidden/1/bias"] == PAPER[kind]["input"]
  # width-free leaves (the readout bias: fan-out 3 at every width) are unchanged
  assert spec.parametrization.rules["head/bias"].multiplier == 1.0
  assert spec.parametrization.rules["head/bias"].init_std == pytest.approx(0.5 / np.sqrt(base))


def test_sp_abc_is_parametrize_sp_at_every_width():
  # Flax's zero biases: a PyTorch-style bias std bias_gain/sqrt(fan_in) would itself shrink with width, while TP4
  # puts a bias with the input layer (b = 0) and keeps its base std.
  spec = param.abc(_mlp(512), _mlp(32), kind="sp")
  ref = param.parametrize(_mlp(512), _mlp(32), kind="sp", optimizer="sgd")
  for path, r in ref.rules.items():
    s = spec.parametrization.rules[path]
    assert (s.init_std, s.multiplier, s.lr_multiplier) == pytest.approx(
        (r.init_std, r.multiplier, r.lr_multiplier), rel=1e-6), path


@pytest.mark.parametrize("width", [64, 1024])
def test_mup_abc_is_paperlabs_mup_sgd_rules(width):
  """TP4's muP, shifted by theta = 1/2 on the input-like leaves and the readout, is exactly the TP5 Table 8 /
  ``mup`` package form that paperlab.param.parametrize(kind="mup", optimizer="sgd") implements (parity-tested
  against mup); unshifted it has the same effective init std ``mult * std`` and SGD LR ``mult^2 * lr``."""
  model, base = _mlp(width), _mlp(32)
  spec = param.abc(model, base, kind="mup", bias_gain=0.2)
  ref = param.parametrize(model, base, kind="mup", optimizer="sgd", bias_gain=0.2).rules
  gauge = param.abc_mup_package_gauge(spec).parametrization.rules
  for path, r in ref.items():
    g, s = gauge[path], spec.parametrization.rules[path]
    assert (g.init_std, g.multiplier, g.lr_multiplier) == pytest.approx(
        (r.init_std, r.multiplier, r.lr_multiplier), rel=1e-6), path
    assert s.multiplier * s.init_std == pytest.approx(r.multiplier * r.init_std, rel=1e-6), path
    assert s.multiplier ** 2 * s.lr_multiplier == pytest.approx(r.multiplier ** 2 * r.lr_multiplier, rel=1e-6)


def test_mean_field_is_mup_for_one_hidden_layer_and_undefined_deeper():
  mf = param.abc(_mlp(512, depth=1), _mlp(32, depth=1), kind="mf").parametrization.rules
  mup = param.abc(_mlp(512, depth=1), _mlp(32, depth=1), kind="mup").parametrization.rules
  for path in mf:  # same invariants a + b and c + 2a
    assert mf[path].multiplier * mf[path].init_std == pytest.approx(mup[path].multiplier * mup[path].init_std)
    assert mf[path].multiplier ** 2 * mf[path].lr_multiplier == pytest.approx(
        mup[path].multiplier ** 2 * mup[path].lr_multiplier)
  with pytest.raises(ValueError, match="'hidden/1/kernel'"):
    param.abc(_mlp(512), _mlp(32), kind="mf")


_X = jax.random.normal(jax.random.key(7), (32, 16))
_Y = jax.random.normal(jax.random.key(8), (32, 3))


@functools.cache
def _trainer(width, optimizer, steps=5):
  """One compiled program per (width, optimizer): the spec's stds, multipliers and LR multipliers are traced
  arrays (``apply_abc`` / ``scale_by_param_lr`` take pytrees of them), so every spec of a width shares it."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: MLP(16, [width] * 2, 3, rngs=nnx.Rngs(0))))

  @jax.jit
  def run(noise, stds, mults, lr_mults, lr):
    forward = param.apply_abc(lambda p, x: nnx.merge(graphdef, nnx.State(p))(x), mults)
    loss = lambda p: jnp.mean((forward(p, _X) - _Y) ** 2)
    tx = param.mu_sgd(lr, lr_mults) if optimizer == "sgd" else param.mu_adam(lr, lr_mults)
    params = jax.tree.map(jnp.multiply, noise, stds)  # init_params' draw: N(0, std^2) from shared noise

    def body(carry, _):
      params, state = carry
      value, grads = jax.value_and_grad(loss)(params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), value

    (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return losses, forward(params, _X)

  return run


def _trajectory(spec, key, lr=0.05, optimizer="sgd"):
  """Loss per step and final outputs of a 16-w-w-3 MLP trained by muSGD / muAdam under ``spec``."""
  width = spec.parametrization.rules["hidden/1/kernel"].shape[0]
  shapes = _zeros(_mlp(width))
  leaves, treedef = jax.tree.flatten(shapes)
  noise = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in
                                       zip(jax.random.split(key, len(leaves)), leaves)])
  arrays = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), tree)
  return _trainer(width, optimizer)(noise, arrays(spec.init_stds), arrays(spec.multipliers),
                                    arrays(spec.lr_multipliers), jnp.float32(lr))


@pytest.mark.parametrize("kind", ["mup", "ntk"])
def test_abc_shift_leaves_the_sgd_trajectory_invariant(kind):
  """TP4 Eq. 5: (a, b, c) -> (a + theta, b - theta, c - 2 theta) changes neither the function nor its SGD
  dynamics: five SGD steps give the same losses and outputs (rtol 1e-5, float32) for theta = 1/2 everywhere and a
  per-layer theta; a shift that leaves c alone (breaking the symmetry) gives another trajectory."""
  spec = param.abc(_mlp(128), _mlp(16), kind=kind, bias_gain=0.5)
  key = jax.random.key(0)
  losses, out = _trajectory(spec, key)
  assert float(losses[-1]) < float(losses[0])
  for shifted in (param.abc_shift(spec, 0.5), param.abc_shift(spec, {"hidden/0": -1.0, "head": 0.5})):
    assert shifted.exponents["hidden/0/kernel"] != spec.exponents["hidden/0/kernel"]
    s_losses, s_out = _trajectory(shifted, key)
    np.testing.assert_allclose(s_losses, losses, rtol=1e-5)
    np.testing.assert_allclose(s_out, out, rtol=1e-5, atol=1e-6)
  a, b, c = spec.exponents["head/kernel"]
  assert param.abc_shift(spec, 0.5).exponents["head/kernel"] == (a + 0.5, b - 0.5, c - 1.0)
  broken = param.abc_from_exponents(_mlp(128), _mlp(16), {f"^{re.escape(p)}$": (ea + 0.5, eb - 0.5, ec)
                                                           for p, (ea, eb, ec) in spec.exponents.items()},
                                    bias_gain=0.5)
  b_losses, _ = _trajectory(broken, key)
  np.testing.assert_allclose(b_losses[0], losses[0], rtol=1e-5)  # same function at init ...
  assert not np.allclose(b_losses[1:], losses[1:], rtol=1e-3)  # ... different dynamics


def test_adam_shift_moves_c_by_theta_and_keeps_adams_trajectory():
  spec = param.abc(_mlp(128), _mlp(16), kind="mup")
  shifted = param.abc_shift(spec, 0.5, optimizer="adam")
  assert shifted.exponents["hidden/1/kernel"] == (0.5, 0.0, -0.5)
  losses, _ = _trajectory(spec, jax.random.key(1), lr=1e-3, optimizer="adam")
  s_losses, _ = _trajectory(shifted, jax.random.key(1), lr=1e-3, optimizer="adam")
  np.testing.assert_allclose(s_losses, losses, rtol=1e-4)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="kind"):
    param.abc(_mlp(64), _mlp(32), kind="nngp")
  spec = param.abc(_mlp(64), _mlp(32))
  with pytest.raises(ValueError, match="theta"):
    param.abc_shift(spec, float("nan"))
  with pytest.raises(ValueError, match="selects no parameter"):
    param.abc_shift(spec, {"encoder": 0.5})
  with pytest.raises(ValueError, match="optimizer"):
    param.abc_shift(spec, 0.5, optimizer="lion")
  with pytest.raises(ValueError, match=r"\(a, b, c\)"):
    param.abc_from_exponents(_mlp(64), _mlp(32), {"head": (0.5, 0.5)})
