"""Unit tests for paperlab.optim.conflict: PCGrad, ConFIG, Bloop (gradient surgery with an EMA)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import optim

PARAMS = {"kernel": jnp.zeros((5, 3)), "bias": jnp.zeros(3)}


def _stacked(m, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"kernel": jax.random.normal(k1, (m, 5, 3)), "bias": jax.random.normal(k2, (m, 3))}


def _vdot(a, b):
  return float(optax.tree.vdot(a, b))


def _slice(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def test_objective_grads_stacks_jacobian_rows():
  def losses(p, x):
    out = x @ p["kernel"] + p["bias"]
    return jnp.stack([jnp.sum(out**2), jnp.sum(out)])

  p = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
  x = jnp.arange(8.0).reshape(2, 4)
  g = optim.objective_grads(losses, p, x)
  chex.assert_trees_all_close(_slice(g, 1), jax.grad(lambda p: losses(p, x)[1])(p))
  chex.assert_trees_all_equal_shapes(_slice(g, 0), p)


def test_stack_objectives_builds_the_leading_axis():
  g = _stacked(3)
  chex.assert_trees_all_close(optim.stack_objectives([_slice(g, i) for i in range(3)]), g)


def test_list_valued_params_are_not_mistaken_for_objectives():
  params = [{"w": jnp.ones((2, 3))}, {"w": jnp.ones((3, 1))}]
  stacked = optim.objective_grads(lambda p: jnp.stack([jnp.sum(p[0]["w"]), jnp.sum(p[1]["w"] ** 2)]), params)
  out = optim.config_direction(stacked)
  chex.assert_trees_all_equal_shapes(out, params)


def test_project_out_removes_component_and_handles_zero():
  v, u = _slice(_stacked(2), 0), _slice(_stacked(2), 1)
  assert abs(_vdot(optim.project_out(v, u), u)) < 1e-4
  zero = jax.tree.map(jnp.zeros_like, u)
  chex.assert_trees_all_close(optim.project_out(v, zero), v)


def test_pcgrad_leaves_non_conflicting_gradients_untouched():
  a = {"w": jnp.array([1.0, 0.0])}
  b = {"w": jnp.array([1.0, 1.0])}
  out = optim.pcgrad_direction(optim.stack_objectives([a, b]), reduction="sum")
  np.testing.assert_allclose(out["w"], [2.0, 1.0], rtol=1e-6)


def test_pcgrad_projects_conflicting_pair_onto_normal_planes():
  a = {"w": jnp.array([1.0, 0.0])}
  b = {"w": jnp.array([-1.0, 1.0])}
  out = optim.pcgrad_direction(optim.stack_objectives([a, b]), reduction="sum")
  # a -> a - (<a,b>/|b|^2) b = (0.5, 0.5); b -> b - <b,a> a = (0, 1).
  np.testing.assert_allclose(out["w"], [0.5, 1.5], rtol=1e-6)
  assert float(out["w"] @ a["w"]) > 0 and float(out["w"] @ b["w"]) > 0


def test_config_gives_equal_cosines_and_positive_inner_products():
  g = _stacked(3, 4)
  d = optim.config_direction(g)
  norm_d = np.sqrt(_vdot(d, d))
  cos = [_vdot(d, _slice(g, i)) / norm_d / np.sqrt(_vdot(_slice(g, i), _slice(g, i))) for i in range(3)]
  np.testing.assert_allclose(cos, cos[0], rtol=1e-4)
  assert min(cos) > 0


def test_config_of_a_single_gradient_is_that_gradient():
  g = _stacked(1)
  chex.assert_trees_all_close(optim.config_direction(g), _slice(g, 0), rtol=1e-5)


def test_bloop_without_ema_is_orthogonal_to_main_gradient():
  g = _stacked(2, 1)
  main, aux = _slice(g, 0), _slice(g, 1)
  opt = optim.scale_by_bloop(aux_weight=0.7, ema_decay=0.0)
  d, _ = opt.update(main, opt.init(main), aux_grads=aux)
  diff = jax.tree.map(lambda a, b: a - b, d, main)
  assert abs(_vdot(diff, main)) < 1e-4 * _vdot(main, main)
  assert _vdot(diff, diff) > 1e-3


def test_bloop_solves_the_bilevel_least_squares_problem():
  # min ||w - w0||^2 over argmin ||Xw - y||^2 (underdetermined): w* = w0 + X^+(y - X w0).
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 25)).astype(np.float32)
  y = rng.normal(size=10).astype(np.float32)
  w0 = rng.normal(size=25).astype(np.float32)
  w_star = w0 + np.linalg.pinv(x) @ (y - x @ w0)
  main = lambda w: 0.5 * jnp.mean((x @ w - y) ** 2)
  aux = lambda w: 0.5 * jnp.sum((w - w0) ** 2)
  opt = optim.bloop(0.02, aux_weight=0.1, ema_decay=0.9)
  w = jnp.zeros(25)

  def body(carry, _):
    w, s = carry
    u, s = opt.update(jax.grad(main)(w), s, w, aux_grads=jax.grad(aux)(w))
    return (w + u, s), None

  (w, _), _ = jax.lax.scan(body, (w, opt.init(w)), None, length=4000)
  assert float(main(w)) < 1e-4
  assert np.linalg.norm(np.asarray(w) - w_star) < 0.05 * np.linalg.norm(w0 - w_star)


class TestTransforms(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_combiners_chain_with_adam_and_jit(self):
    for opt in (optim.config_multi(1e-2), optim.pcgrad(1e-2, key=3), optim.pcgrad(1e-2, key=None)):
      state = opt.init(PARAMS)
      update = self.variant(opt.update)
      u, state = update(_stacked(3), state, PARAMS)
      u, state = update(_stacked(3, 1), state, PARAMS)
      chex.assert_trees_all_equal_shapes_and_dtypes(u, PARAMS)
      chex.assert_tree_all_finite(u)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bloop_jits(self):
    opt = optim.bloop(0.1)
    g = _stacked(2)
    u, _ = self.variant(lambda m, s, a: opt.update(m, s, PARAMS, aux_grads=a))(_slice(g, 0), opt.init(PARAMS), _slice(g, 1))
    chex.assert_trees_all_equal_shapes_and_dtypes(u, PARAMS)


def test_pcgrad_random_orders_change_across_steps():
  opt = optim.scale_by_pcgrad(key=0)
  s = opt.init(PARAMS)
  _, s2 = opt.update(_stacked(3), s)
  assert not np.array_equal(jax.random.key_data(s.key), jax.random.key_data(s2.key))


@pytest.mark.parametrize("make,arg", [
    (lambda: optim.scale_by_bloop(aux_weight=-1.0), "aux_weight"),
    (lambda: optim.scale_by_bloop(ema_decay=1.0), "ema_decay"),
    (lambda: optim.pcgrad_direction(_stacked(2), reduction="max"), "reduction"),
    (lambda: optim.pcgrad_direction(_stacked(2), order=jnp.zeros((3, 3), int)), "order"),
    (lambda: optim.config_direction(_stacked(2), weights=jnp.ones(3)), "weights"),
    (lambda: optim.config_multi(-1.0), "learning_rate"),
    (lambda: optim.config_direction({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))}), "leading"),
    (lambda: optim.stack_objectives([]), "empty"),
    (lambda: optim.stack_objectives([{"a": jnp.ones(2)}, {"a": jnp.ones(3)}]), "shape"),
])
def test_invalid_arguments_raise_naming_them(make, arg):
  with pytest.raises(ValueError, match=arg):
    make()


def test_bloop_requires_aux_grads():
  opt = optim.scale_by_bloop()
  with pytest.raises(ValueError, match="aux_grads"):
    opt.update(PARAMS, opt.init(PARAMS))
