"""muP for K-FAC / Shampoo (Ishikawa & Karakida, arXiv:2312.12226): the closed-form multipliers, the plug into
paperlab.param's API, and the catalogue's property -- under the muP-K-FAC spec the one-step feature change is
width-independent within 1.5x for widths 128..2048 on a fixed batch (and not with a width-independent damping);
the same for the Shampoo spec over widths 128..512."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import param
from paperlab.models import MLP

D_IN, D_OUT, BATCH, BASE = 16, 4, 32, 64


def _mlp(width):
  return nnx.eval_shape(lambda: MLP(D_IN, [width, width], D_OUT, activation="tanh", rngs=nnx.Rngs(0)))


def _layers(tree):
  return [tree["hidden"][0], tree["hidden"][1], tree["head"]]


@pytest.mark.parametrize("method", ["kfac", "shampoo"])
def test_multipliers_are_the_closed_forms(method):
  n = 512
  spec = param.second_order_mup(_mlp(n), _mlp(BASE), method=method)
  m = n / BASE
  lr = [k["kernel"] for k in _layers(spec.lr_multipliers)]
  d_in = [k["kernel"] for k in _layers(spec.damping_in)]
  d_out = [k["kernel"] for k in _layers(spec.damping_out)]
  if method == "kfac":  # Table 1: width-independent LRs; damping follows the factors' eigenvalues
    np.testing.assert_allclose(lr, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(d_in, [1.0, m, m])
    np.testing.assert_allclose(d_out, [1 / m, 1 / m, 1.0])
  else:  # Shampoo: input sqrt(m), hidden 1, readout 1/sqrt(m); epsilon ~ |h|^2 |delta|^2
    np.testing.assert_allclose(lr, [math.sqrt(m), 1.0, 1 / math.sqrt(m)])
    np.testing.assert_allclose(d_in, [1 / m, 1.0, m])
    np.testing.assert_allclose(d_out, d_in)
  assert all(b["bias"] == 1.0 for b in _layers(spec.lr_multipliers))
  stds = [k["kernel"] for k in _layers(spec.parametrization.init_stds)]
  # muP init in Tensor Programs V Table 3 form: sigma/sqrt(fan_in), readout sigma sqrt(base_fan_in)/fan_in (not 0)
  np.testing.assert_allclose(stds, [1 / math.sqrt(D_IN), 1 / math.sqrt(n), math.sqrt(BASE) / n], rtol=1e-12)
  assert all(r.multiplier == 1.0 for r in spec.parametrization.rules.values())


def test_at_the_base_shapes_every_multiplier_is_one_and_the_init_is_sp():
  spec = param.second_order_mup(_mlp(BASE), _mlp(BASE), method="kfac", delta=_mlp(2 * BASE))
  for tree in (spec.lr_multipliers, spec.damping_in, spec.damping_out):
    assert set(jax.tree.leaves(tree)) == {1.0}
  sp = param.parametrize(_mlp(BASE), _mlp(BASE), kind="sp")
  assert jax.tree.leaves(spec.parametrization.init_stds) == jax.tree.leaves(sp.init_stds)
  with pytest.raises(ValueError, match="method"):
    param.second_order_mup(_mlp(BASE), _mlp(BASE), method="adam")


def test_the_spec_plugs_into_init_params_and_scale_by_param_lr():
  spec = param.second_order_mup(_mlp(256), _mlp(BASE), method="shampoo")
  shapes = param.param_shapes(_mlp(256))
  params = param.init_params(jax.random.key(0), shapes, spec.parametrization)
  assert abs(float(np.std(np.asarray(params["head"]["kernel"]))) - math.sqrt(BASE) / 256) < 0.1 * math.sqrt(BASE) / 256
  ones = jax.tree.map(jnp.ones_like, params)
  updates, _ = param.scale_by_param_lr(spec.parametrization).update(ones, optax.EmptyState())
  assert float(updates["hidden"][0]["kernel"][0, 0]) == pytest.approx(2.0)  # sqrt(256 / 64)


def _one_step_feature_change(width, method, *, lr, rho_a=1.0, rho_b=1.0, control=True):
  """RMS change of each layer's output after one K-FAC / Shampoo step (explicit factors, MSE loss) on a fixed batch,
  with the spec's LR and damping multipliers and with width-independent ones: ``(spec (layers,), flat (layers,))``."""
  model = _mlp(width)
  spec = param.second_order_mup(model, _mlp(BASE), method=method)
  # one jitted init per width instead of one eager XLA compile per op and shape (the CPU budget); same draws
  shapes = param.param_shapes(model)
  params = jax.jit(lambda key: param.init_params(key, shapes, spec.parametrization))(jax.random.key(2))
  x = jax.random.normal(jax.random.key(0), (BATCH, D_IN))
  y = jax.random.normal(jax.random.key(1), (BATCH, D_OUT))

  def forward(layers, shifts):
    h, inputs = x, []
    for i, layer in enumerate(layers):
      inputs.append(h)
      h = h @ layer["kernel"] + layer["bias"] + shifts[i]
      h = jnp.tanh(h) if i < 2 else h
    return h, inputs

  def loss(layers, shifts):
    return 0.5 * jnp.sum((forward(layers, shifts)[0] - y) ** 2) / BATCH

  ones = jax.tree.map(lambda _: 1.0, spec.damping_in)

  @jax.jit  # one program per width for both damping rules (the tables are traced)
  def step(params, damping_in, damping_out, lrs):
    layers = _layers(params)
    shifts = [jnp.zeros((BATCH, layer["kernel"].shape[1])) for layer in layers]
    grads, deltas = jax.grad(loss, argnums=(0, 1))(layers, shifts)
    _, inputs = forward(layers, shifts)
    new = []
    for i, layer in enumerate(layers):
      g = grads[i]["kernel"]
      if method == "kfac":
        a = inputs[i].T @ inputs[i] / BATCH
        b = deltas[i].T @ deltas[i] * BATCH  # E over examples of the per-example output gradients' outer product
      else:
        a, b = g @ g.T, g.T @ g
      da = rho_a * _layers(damping_in)[i]["kernel"]
      db = rho_b * _layers(damping_out)[i]["kernel"]
      update = param.kronecker_precondition(g, a, b, damping_a=da, damping_b=db,
                                            exponent=1.0 if method == "kfac" else 0.25)
      new.append({**layer, "kernel": layer["kernel"] - lr * _layers(lrs)[i]["kernel"] * update})
    outs_old = forward(layers, shifts)
    outs_new = forward(new, shifts)
    feats_old = outs_old[1][1:] + [outs_old[0]]
    feats_new = outs_new[1][1:] + [outs_new[0]]
    return jnp.stack([jnp.sqrt(jnp.mean((n - o) ** 2)) for n, o in zip(feats_new, feats_old)])

  return (np.asarray(step(params, spec.damping_in, spec.damping_out, spec.lr_multipliers)),
          np.asarray(step(params, ones, ones, ones)) if control else None)


@pytest.mark.parametrize("method,widths,lr,rho", [("kfac", (128, 512, 2048), 0.5, 1.0),
                                                   ("shampoo", (128, 512), 1e-2, 1e-3)])
def test_one_step_feature_change_is_width_independent_under_the_spec(method, widths, lr, rho):
  # the control at 128 and 512 only (width 2048 costs most of the CPU budget)
  runs = [_one_step_feature_change(n, method, lr=lr, rho_a=rho, rho_b=rho, control=n <= 512) for n in widths]
  spec = np.stack([r[0] for r in runs])  # (width, layer)
  flat = np.stack([r[1] for r in runs if r[1] is not None])
  ratio = spec.max(axis=0) / spec.min(axis=0)
  assert np.all(ratio < 1.5), (spec, ratio)
  assert np.all(spec > 1e-3)  # features do move (feature learning, not a vanishing step)
  # control: width-independent LRs and damping -> the first hidden features' change vanishes with width
  assert flat[0, 0] / flat[-1, 0] > 2.0, flat


def test_kronecker_precondition_errors_and_dtype():
  g = jnp.ones((3, 2), jnp.bfloat16)
  out = param.kronecker_precondition(g, jnp.eye(3), jnp.eye(2), damping_a=1.0, damping_b=1.0)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), 0.25, rtol=1e-2)  # (1+1)^-1 (1+1)^-1
  with pytest.raises(ValueError, match="grad"):
    param.kronecker_precondition(g, jnp.eye(2), jnp.eye(2), damping_a=1.0, damping_b=1.0)
  with pytest.raises(ValueError, match="damping_a"):
    param.kronecker_precondition(g, jnp.eye(3), jnp.eye(2), damping_a=-1.0, damping_b=1.0)
  with pytest.raises(ValueError, match="exponent"):
    param.kronecker_precondition(g, jnp.eye(3), jnp.eye(2), damping_a=1.0, damping_b=1.0, exponent=0.0)
