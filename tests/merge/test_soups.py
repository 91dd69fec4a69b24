"""Unit tests for paperlab.merge.soups: uniform/greedy soups, DiWA, Model Stock, BCWI selection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.merge as pm


def _models(n, seed=0):
  keys = jax.random.split(jax.random.key(seed), n)
  return [{"w": jax.random.normal(k, (5, 4)), "b": jax.random.normal(jax.random.fold_in(k, 1), (4,))} for k in keys]


def test_uniform_soup_is_order_invariant_mean():
  ms = _models(4)
  a = pm.uniform_soup(ms)
  b = pm.uniform_soup(ms[::-1])
  np.testing.assert_allclose(a["w"], b["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(a["w"], np.mean([m["w"] for m in ms], 0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(pm.diwa(ms)["w"], a["w"], rtol=1e-6)


def test_greedy_soup_with_a_constant_score_keeps_every_ingredient():
  ms = _models(4)
  soup, selected = pm.greedy_soup(ms, lambda p: 1.0)
  assert sorted(selected) == [0, 1, 2, 3]
  np.testing.assert_allclose(soup["w"], pm.uniform_soup(ms)["w"], rtol=1e-5, atol=1e-6)


def test_greedy_soup_rejects_ingredients_that_hurt_the_score():
  target = {"w": jnp.ones((5, 4)), "b": jnp.ones(4)}
  good = [jax.tree.map(lambda x, s=s: x + 0.1 * s, target) for s in (1.0, -1.0, 0.5)]
  bad = jax.tree.map(lambda x: x + 10.0, target)
  score = lambda p: -float(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target))))
  soup, selected = pm.greedy_soup([good[0], bad, good[1], good[2]], score)
  assert 1 not in selected
  assert selected[0] == 3  # the best single ingredient (smallest offset) comes first
  assert score(soup) >= max(score(m) for m in good)
  _, sel = pm.greedy_soup(good, score, order=[1, 0, 2])
  assert sel[0] == 1
  with pytest.raises(ValueError, match="order"):
    pm.greedy_soup(good, score, order=[0, 0])


def test_model_stock_with_aligned_task_vectors_returns_the_finetune():
  base = {"w": jnp.zeros((3, 3))}
  ft = {"w": jnp.arange(9.0).reshape(3, 3)}
  out, ratios = pm.model_stock(base, [ft, ft], return_ratios=True)
  np.testing.assert_allclose(out["w"], ft["w"], rtol=1e-6)
  assert ratios["w"].shape == () and float(ratios["w"]) == pytest.approx(1.0)


def test_model_stock_with_orthogonal_task_vectors_returns_the_base():
  base = {"w": jnp.ones(4)}
  a = {"w": base["w"] + jnp.array([1.0, 0, 0, 0])}
  b = {"w": base["w"] + jnp.array([0, 1.0, 0, 0])}
  np.testing.assert_allclose(pm.model_stock(base, [a, b])["w"], base["w"], atol=1e-6)


def test_model_stock_ratio_is_in_unit_interval_for_positive_cosines():
  base = {"w": jnp.zeros((6, 5))}
  shared = jax.random.normal(jax.random.key(0), (6, 5))
  fts = [{"w": shared + 0.5 * jax.random.normal(jax.random.key(i + 1), (6, 5))} for i in range(2)]
  _, ratios = pm.model_stock(base, fts, filter_wise=True, return_ratios=True)
  assert ratios["w"].shape == (5,)  # one per output channel of a Flax (in, out) kernel
  assert bool(jnp.all((ratios["w"] >= 0) & (ratios["w"] <= 1)))
  with pytest.raises(ValueError, match="at least 2"):
    pm.model_stock(base, fts[:1])


def test_model_stock_filter_wise_treats_a_vector_as_one_row():
  """A bias is one row: one ratio from the angle between the whole vectors. Per element, each angle would be 0 or
  180 degrees and t = k cos / (1 + (k - 1) cos) would be 1 or, for 3 models, -3 (extrapolation)."""
  base = {"b": jnp.zeros(4)}
  fts = [{"b": jnp.array([1.0, 1.0, -1.0, 0.5])}, {"b": jnp.array([1.0, -1.0, 1.0, 0.5])},
         {"b": jnp.array([1.0, 1.0, 1.0, -0.5])}]
  out, ratios = pm.model_stock(base, fts, filter_wise=True, return_ratios=True)
  offs = np.stack([np.asarray(f["b"]) for f in fts])
  unit = offs / np.linalg.norm(offs, axis=1, keepdims=True)
  cos = np.mean([unit[i] @ unit[j] for i in range(3) for j in range(i + 1, 3)])
  t = 3 * cos / (1 + 2 * cos)
  assert ratios["b"].shape == ()
  np.testing.assert_allclose(ratios["b"], t, rtol=1e-6)
  np.testing.assert_allclose(out["b"], t * offs.mean(0), rtol=1e-6, atol=1e-7)


def test_model_stock_rejects_bad_layout():
  base = {"w": jnp.zeros((2, 2))}
  with pytest.raises(ValueError, match="layout"):
    pm.model_stock(base, [base, base], filter_wise=True, layout="jax")


def test_bcwi_select_returns_the_best_interpolation():
  old = {"w": jnp.zeros(3)}
  new = {"w": jnp.ones(3)}
  params, alpha, scores = pm.bcwi_select(old, new, [0.0, 0.3, 0.6, 1.0], lambda p: -abs(float(p["w"][0]) - 0.6))
  assert alpha == 0.6 and len(scores) == 4
  np.testing.assert_allclose(params["w"], 0.6, rtol=1e-6)
  with pytest.raises(ValueError, match="alphas"):
    pm.bcwi_select(old, new, [1.5], lambda p: 0.0)


def _tiny_finetune_setup():
  import optax
  from paperlab import models, train
  graphdef, init = train.make_init(lambda r: models.MLP(6, [8], 3, rngs=r), optax.adam(1e-3))
  state = init(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (40, 6))
  y = jnp.argmax(x[:, :3], -1)
  return graphdef, state, (x, y)


def test_finetune_grid_checkpoints_follow_one_trajectory_and_zero_lr_keeps_the_init():
  graphdef, state, data = _tiny_finetune_setup()
  hp = jnp.asarray([[0.0, 0.0, 0.0, 0.0], [1e-2, 1e-4, 0.1, 0.5]])
  keys = jax.random.split(jax.random.key(2), 2)
  final = pm.finetune_grid(graphdef, state.params, state.model_state, data, hp, keys, num_steps=12, batch_size=8)
  ckpts = pm.finetune_grid(graphdef, state.params, state.model_state, data, hp, keys, num_steps=12, batch_size=8,
                           num_checkpoints=3)
  for f, c, p0 in zip(jax.tree.leaves(final), jax.tree.leaves(ckpts), jax.tree.leaves(state.params)):
    assert c.shape == (2, 3) + p0.shape
    np.testing.assert_allclose(c[:, -1], f, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(f[0], p0)  # lr = 0: adamw moves nothing
  assert any(not np.allclose(f[1], p0) for f, p0 in zip(jax.tree.leaves(final), jax.tree.leaves(state.params)))
  # stacked inits: row k starts from init k
  stacked = jax.tree.map(lambda a: jnp.stack([a, a + 1.0]), state.params)
  out = pm.finetune_grid(graphdef, stacked, state.model_state, data, hp[:1].repeat(2, 0), keys, num_steps=4,
                         batch_size=8, params_axis=0)
  for o, s in zip(jax.tree.leaves(out), jax.tree.leaves(stacked)):
    np.testing.assert_array_equal(o, s)


def test_finetune_grid_validates_its_arguments():
  graphdef, state, data = _tiny_finetune_setup()
  keys = jax.random.split(jax.random.key(2), 2)
  with pytest.raises(ValueError, match="hparams"):
    pm.finetune_grid(graphdef, state.params, state.model_state, data, jnp.zeros((2, 3)), keys, num_steps=4,
                     batch_size=8)
  with pytest.raises(ValueError, match="keys"):
    pm.finetune_grid(graphdef, state.params, state.model_state, data, jnp.zeros((3, 4)), keys, num_steps=4,
                     batch_size=8)
  with pytest.raises(ValueError, match="num_checkpoints"):
    pm.finetune_grid(graphdef, state.params, state.model_state, data, jnp.zeros((2, 4)), keys, num_steps=5,
                     batch_size=8, num_checkpoints=2)
