"""Unit tests of paperlab.param.parametrization: roles, rules, init, multipliers, the optax transform, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import param, train
from paperlab.models import CNN, MLP


def _mlp(width, depth=2):
  """Shapes only (building a real model is slow on a loaded CPU, and the rules need only shapes)."""
  return nnx.eval_shape(lambda: MLP(64, [width] * depth, 10, rngs=nnx.Rngs(0)))


def _zeros(shapes):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), param.param_shapes(shapes))


def _shape(fn):
  return nnx.eval_shape(fn)


@pytest.fixture(scope="module")
def mup_adam_256():
  return param.parametrize(_mlp(256), _mlp(32))


def test_roles_are_inferred_from_shapes_against_the_base(mup_adam_256):
  roles = {k: r.role for k, r in mup_adam_256.rules.items()}
  assert roles == {"hidden/0/kernel": "input", "hidden/0/bias": "bias", "hidden/1/kernel": "hidden",
                   "hidden/1/bias": "bias", "head/kernel": "output", "head/bias": "bias"}
  assert param.infer_roles(_mlp(32), _mlp(32)) == {k: ("bias" if k.endswith("bias") else "fixed")
                                                                    for k in roles}
  # at the base width a delta model marks the width dimensions, as in mup
  delta = param.infer_roles(_mlp(32), _mlp(32), delta=_mlp(64))
  assert delta == roles


def test_conv_and_embedding_roles():
  cnn = param.infer_roles(_shape(lambda: CNN(1, (64, 64), 10, rngs=nnx.Rngs(0))),
                          _shape(lambda: CNN(1, (16, 16), 10, rngs=nnx.Rngs(0))))
  assert cnn["convs/0/kernel"] == "input" and cnn["convs/1/kernel"] == "hidden" and cnn["head/kernel"] == "output"
  p = param.parametrize(_shape(lambda: CNN(1, (64, 64), 10, rngs=nnx.Rngs(0))),
                        _shape(lambda: CNN(1, (16, 16), 10, rngs=nnx.Rngs(0))))
  r = p.rules["convs/1/kernel"]
  assert r.fan_in == 9 * 64 and r.fan_in_mult == 4.0 and r.lr_multiplier == 0.25


def test_mup_adam_table(mup_adam_256):
  r = mup_adam_256.rules
  m = 256 / 32
  assert r["hidden/1/kernel"].lr_multiplier == pytest.approx(1 / m)
  assert r["hidden/0/kernel"].lr_multiplier == 1.0 and r["head/kernel"].lr_multiplier == 1.0
  assert r["head/kernel"].multiplier == pytest.approx(1 / m)
  assert r["head/kernel"].init_std == pytest.approx(1 / math.sqrt(32))  # 1/sqrt(base fan_in)
  assert r["hidden/1/kernel"].init_std == pytest.approx(1 / math.sqrt(256))


def test_mup_at_base_shapes_is_sp():
  base = _mlp(32)
  delta = _mlp(64)
  for opt in ("adam", "sgd"):
    mup = param.parametrize(_mlp(32), base, delta=delta, optimizer=opt)
    sp = param.parametrize(_mlp(32), base, delta=delta, kind="sp", optimizer=opt)
    for k in mup.rules:
      a, b = mup.rules[k], sp.rules[k]
      assert (a.init_std, a.multiplier, a.lr_multiplier) == pytest.approx((b.init_std, b.multiplier,
                                                                             b.lr_multiplier)), k


def test_mup_sgd_table():
  p = param.parametrize(_mlp(256), _mlp(32), optimizer="sgd")
  r = p.rules
  assert r["hidden/0/kernel"].lr_multiplier == 8.0  # eta * fan_out
  assert r["hidden/1/kernel"].lr_multiplier == 1.0  # eta
  assert r["head/kernel"].lr_multiplier == 8.0  # eta / fan_in, with the 1/fan_in multiplier: abc-shift
  assert r["hidden/0/bias"].lr_multiplier == 8.0 and r["head/bias"].lr_multiplier == 1.0


def test_ntk_and_umup_rules():
  ntk = param.parametrize(_mlp(256), _mlp(32), kind="ntk").rules
  assert ntk["hidden/1/kernel"].init_std == 1.0 and ntk["hidden/1/kernel"].multiplier == pytest.approx(1 / 16)
  assert ntk["hidden/1/bias"].multiplier == 0.1 and ntk["head/kernel"].lr_multiplier == 1.0
  u = param.parametrize(_mlp(256), _mlp(32), kind="umup").rules
  assert u["head/kernel"].multiplier == pytest.approx(1 / 256) and u["head/kernel"].lr_multiplier == 1.0
  assert u["hidden/1/kernel"].lr_multiplier == pytest.approx(1 / 16)


def test_role_override_and_errors():
  base = _mlp(32)
  p = param.parametrize(_mlp(256), base, roles={r"head/kernel": "hidden"})
  assert p.rules["head/kernel"].role == "hidden"
  with pytest.raises(ValueError, match="roles"):
    param.parametrize(_mlp(256), base, roles={"head": "readout"})
  with pytest.raises(ValueError, match="kind"):
    param.parametrize(_mlp(256), base, kind="mf")
  with pytest.raises(ValueError, match="optimizer"):
    param.parametrize(_mlp(256), base, optimizer="lion")
  with pytest.raises(ValueError, match="missing"):
    param.parametrize(_mlp(256, depth=3), base)
  with pytest.raises(ValueError, match="rank"):
    param.parametrize({"w": jnp.zeros((4, 4))}, {"w": jnp.zeros((4,))})
  # a width vector that is neither a bias nor a norm scale: the error names the path
  with pytest.raises(ValueError, match="'blocks/gain'"):
    param.parametrize({"blocks": {"gain": jnp.zeros((8,))}}, {"blocks": {"gain": jnp.zeros((4,))}})
  assert param.parametrize({"blocks": {"gain": jnp.zeros((8,))}}, {"blocks": {"gain": jnp.zeros((4,))}},
                           roles={"gain": "norm"}).rules["blocks/gain"].role == "norm"


def test_init_params_draws_the_rule_stds_and_jits():
  model = _mlp(512)
  p = param.parametrize(model, _mlp(32), bias_gain=1.0)
  params = _zeros(model)
  new = jax.jit(lambda k, x: param.init_params(k, x, p))(jax.random.key(0), params)
  assert jax.tree.structure(new) == jax.tree.structure(params)
  for k, r in p.rules.items():
    leaf = new
    for part in k.split("/"):
      leaf = leaf[int(part) if part.isdigit() else part]
    assert leaf.dtype == jnp.float32 and leaf.shape == r.shape
    if leaf.size > 1000:
      assert float(jnp.std(leaf)) == pytest.approx(r.init_std, rel=0.05), k


def test_multiplied_model_matches_apply_multipliers_and_differentiates():
  model = MLP(64, [64], 10, rngs=nnx.Rngs(0))
  p = param.parametrize(model, _shape(lambda: MLP(64, [32], 10, rngs=nnx.Rngs(0))))
  x = jax.random.normal(jax.random.key(1), (4, 64))
  graphdef, params = nnx.split(model, nnx.Param)
  pure = nnx.to_pure_dict(params)
  direct = nnx.merge(graphdef, param.apply_multipliers(pure, p))(x)
  np.testing.assert_allclose(param.multiplied(model, p)(x), direct, rtol=1e-6)
  g = nnx.grad(lambda m: jnp.sum(param.multiplied(m, p)(x)))(model)
  g_plain = nnx.grad(lambda m: jnp.sum(m(x)))(nnx.merge(graphdef, param.apply_multipliers(pure, p)))
  # d/dw of f(c w) = c f'(c w): the readout gradient is the multiplier times the plain one
  np.testing.assert_allclose(g["head"]["kernel"].value, 0.5 * g_plain["head"]["kernel"].value, rtol=1e-6)


def test_scale_by_param_lr_composes_under_inject_hyperparams_and_jit(mup_adam_256):
  params = _zeros(_mlp(256))
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optax.inject_hyperparams(param.mu_adam)(learning_rate=0.1, lr_multipliers=mup_adam_256)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.01)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  # Adam's first step is -lr * sign(g); times the multiplier
  np.testing.assert_allclose(updates["hidden"][1]["kernel"], -0.01 / 8, rtol=1e-5)
  np.testing.assert_allclose(updates["hidden"][0]["kernel"], -0.01, rtol=1e-5)
  chained = optax.chain(optax.scale_by_adam(), param.scale_by_param_lr(mup_adam_256.lr_multipliers), optax.scale(-1))
  u2, _ = chained.update(grads, chained.init(params), params)
  np.testing.assert_allclose(u2["hidden"][1]["kernel"], -1 / 8, rtol=1e-5)
  # nnx.State updates are matched by path too
  state_tree = nnx.state(_mlp(256), nnx.Param)  # ShapeDtypeStruct leaves: ones_like works on them
  out, _ = param.scale_by_param_lr(mup_adam_256).update(jax.tree.map(jnp.ones_like, state_tree), None)
  np.testing.assert_allclose(out["hidden"][1]["kernel"].value, 1 / 8)
  with pytest.raises(ValueError, match="lr_multipliers"):
    param.scale_by_param_lr({"a": -1.0})
  with pytest.raises(ValueError, match="no entry"):
    param.scale_by_param_lr({"a": 1.0}).update({"b": jnp.ones(2)}, None)


def test_train_step_with_multiplied_loss():
  p = param.parametrize(_mlp(64), _mlp(32))
  tx = param.mu_adam(1e-2, p, weight_decay=1e-4)  # the model built by make_init has the same paths
  graphdef, init = train.make_init(lambda rngs: MLP(64, [64, 64], 10, rngs=rngs), tx)
  loss = lambda model, batch, rng: train.classification_loss(param.multiplied(model, p), batch, rng)
  step = jax.jit(train.make_train_step(graphdef, loss, tx))
  state = init(jax.random.key(0))
  state = state._replace(params=param.init_params(jax.random.key(1), state.params, p))
  x = jax.random.normal(jax.random.key(2), (32, 64))
  y = jnp.arange(32) % 10
  losses = []
  for _ in range(20):
    state, metrics = step(state, (x, y), jax.random.key(3))
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]


def test_depth_mup_branch_scale_keeps_the_residual_stream_bounded():
  """Bordelon et al.'s property: with branch scale 1/sqrt(L) the residual stream's variance at init stays within
  1.5x across L in {4, 16, 64}; with unit branch scale it grows ~ L."""

  def stream_var(num_blocks, scaled):
    width = 128
    params = {"blocks": {i: {"kernel": jnp.zeros((width, width))} for i in range(num_blocks)}}
    base = {"blocks": {i: {"kernel": jnp.zeros((width, width))} for i in range(num_blocks)}}
    p = param.parametrize(params, base, kind="ntk", roles={"kernel": "hidden"})
    if scaled:
      p = param.depth_mup(p, num_blocks=num_blocks, base_blocks=1, branch=r"kernel$")
    w = param.apply_multipliers(param.init_params(jax.random.key(num_blocks), params, p), p)
    h = jax.random.normal(jax.random.key(0), (256, width))
    for i in range(num_blocks):
      h = h + jax.nn.relu(h) @ w["blocks"][i]["kernel"] * math.sqrt(2)
    return float(jnp.var(h))

  scaled = [stream_var(L, True) for L in (4, 16, 64)]
  plain = [stream_var(L, False) for L in (4, 16, 64)]
  assert max(scaled) / min(scaled) < 1.5, scaled
  assert plain[-1] / plain[0] > 100, plain  # grows geometrically without the branch scale


def test_depth_mup_adam_lr_factor_and_errors(mup_adam_256):
  p = param.depth_mup(mup_adam_256, num_blocks=16, base_blocks=4, branch=r"hidden/1/kernel", blocks=r"hidden/")
  assert p.rules["hidden/1/kernel"].multiplier == pytest.approx(0.5)
  assert p.rules["hidden/1/kernel"].lr_multiplier == pytest.approx(0.5 / 8)
  assert p.rules["head/kernel"].lr_multiplier == 1.0
  with pytest.raises(ValueError, match="selects no parameter"):
    param.depth_mup(mup_adam_256, num_blocks=4, branch=r"nothing")
  with pytest.raises(ValueError, match="num_blocks"):
    param.depth_mup(mup_adam_256, num_blocks=0, branch=r"hidden")
