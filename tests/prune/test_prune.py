"""Unit tests of paperlab.prune: exact counts, schedules, N:M validity, GraNet drop-and-regrow, PERP helpers,
jit with traced sparsity, and errors that name the argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paperlab.prune as pr


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 4)
  return {"hidden": {"kernel": jax.random.normal(k[0], (16, 12)), "bias": jax.random.normal(k[1], (12,))},
          "head": {"kernel": jax.random.normal(k[2], (12, 8)), "bias": jax.random.normal(k[3], (8,))}}


def test_gmp_schedule_hits_s_init_at_t0_and_s_final_after_n_steps():
  f = lambda t: float(pr.gmp_sparsity(t, 0.1, 0.9, t0=10, n=4, dt=5))
  assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(0.1)
  assert f(14) == pytest.approx(0.1)  # held between pruning steps
  assert f(15) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - 1 / 4) ** 3)
  assert f(30) == pytest.approx(0.9) and f(1000) == pytest.approx(0.9)
  s = np.asarray(jax.vmap(lambda t: pr.gmp_sparsity(t, 0.0, 0.8, 0, 10, 3))(jnp.arange(40)))
  assert np.all(np.diff(s) >= 0)


def test_cosine_death_rate_endpoints():
  assert float(pr.cosine_death_rate(0, 100)) == pytest.approx(0.5)
  assert float(pr.cosine_death_rate(100, 100)) == pytest.approx(0.005)
  assert float(pr.cosine_death_rate(50, 100, eta_min=0.0)) == pytest.approx(0.25)


@pytest.mark.parametrize("scope", pr.SCOPES)
def test_schedule_steps_give_exact_sparsity_under_jit_with_traced_sparsity(scope):
  params = _params()
  sel = pr.prunable(params)
  fn = jax.jit(lambda p, s: pr.magnitude_masks(p, s, scope=scope))
  for t in range(0, 30, 5):
    s = pr.gmp_sparsity(t, 0.0, 0.9, 0, 5, 5)
    m = fn(params, s)
    if scope == "global":
      n = 16 * 12 + 12 * 8
      assert int(round(float(pr.sparsity(m, sel)) * n)) == int(np.round(np.float32(s) * n))
    else:
      for k, n in (("hidden", 16 * 12), ("head", 12 * 8)):
        assert int(jnp.sum(~m[k]["kernel"])) == int(np.round(np.float32(s) * n))


def test_magnitude_mask_keeps_the_largest():
  params = _params()
  m = pr.magnitude_masks(params, 0.5, scope="layer")
  w = jnp.abs(params["hidden"]["kernel"])
  kept = m["hidden"]["kernel"]
  assert float(jnp.min(jnp.where(kept, w, jnp.inf))) >= float(jnp.max(jnp.where(kept, -jnp.inf, w)))


def test_nm_masks_keep_exactly_n_largest_per_group():
  params = _params()
  m = pr.nm_masks(params, 2, 4)["hidden"]["kernel"]
  groups = np.asarray(m).reshape(4, 4, 12)
  assert np.all(groups.sum(1) == 2)
  w = np.abs(np.asarray(params["hidden"]["kernel"])).reshape(4, 4, 12)
  kept_min = np.where(groups, w, np.inf).min(1)
  dropped_max = np.where(groups, -np.inf, w).max(1)
  assert np.all(kept_min >= dropped_max)


def test_erk_densities_sum_to_target_and_random_masks_are_exact():
  shapes = {"a": (64, 256), "b": (256, 256), "c": (256, 10)}
  d = pr.erk_densities(shapes, 0.1)
  total = sum(np.prod(s) for s in shapes.values())
  assert sum(d[k] * np.prod(s) for k, s in shapes.items()) == pytest.approx(0.1 * total)
  assert d["c"] > d["a"] > d["b"]
  params = {k: {"kernel": jnp.ones(s)} for k, s in shapes.items()}
  m = pr.random_masks(jax.random.key(0), params, {f"{k}/kernel": v for k, v in d.items()})
  for k, s in shapes.items():
    assert int(m[k]["kernel"].sum()) == round(d[k] * np.prod(s))


def test_drop_and_regrow_keeps_counts_and_grows_top_gradients():
  params = _params()
  masks = pr.magnitude_masks(params, 0.75, scope="layer")
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(9), x.shape), params)
  new = jax.jit(lambda p, m, g: pr.drop_and_regrow(p, m, g, 0.3))(params, masks, grads)
  for k in ("hidden", "head"):
    old, nw = np.asarray(masks[k]["kernel"]), np.asarray(new[k]["kernel"])
    assert old.sum() == nw.sum()
    w, g = np.abs(np.asarray(params[k]["kernel"])), np.abs(np.asarray(grads[k]["kernel"]))
    n_drop = int(np.ceil(0.3 * old.sum()))
    dropped_order = np.argsort(np.where(old, w, np.inf).ravel(), kind="stable")[:n_drop]
    after = old.ravel().copy()
    after[dropped_order] = False
    grow = np.argsort(np.where(after, np.inf, -g.ravel()), kind="stable")[:n_drop]
    expect = after.copy()
    expect[grow] = True
    np.testing.assert_array_equal(nw.ravel(), expect)


def test_granet_update_hits_target_sparsity_and_zeroes_pruned_weights():
  params = _params()
  masks = jax.tree.map(lambda x: jnp.ones(x.shape, bool), params)
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(3), x.shape), params)
  p, m = jax.jit(lambda p, m, g: pr.granet_update(p, m, g, sparsity=0.8, death_rate=0.5))(params, masks, grads)
  sel = pr.prunable(params)
  assert float(pr.sparsity(m, sel)) == pytest.approx(round(0.8 * 288) / 288)
  for x, k in zip(jax.tree.leaves(p), jax.tree.leaves(m)):
    assert np.all(np.asarray(x)[~np.asarray(k)] == 0)


def test_keep_pruned_zero_with_call_time_masks():
  params = _params()
  masks = pr.magnitude_masks(params, 0.5)
  tx = optax.chain(optax.adamw(0.1, weight_decay=0.1), pr.keep_pruned_zero())
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  u, _ = tx.update(grads, state, params, masks=masks)
  new = optax.apply_updates(params, u)
  assert all(np.all(np.asarray(x)[~np.asarray(k)] == 0) for x, k in zip(jax.tree.leaves(new), jax.tree.leaves(masks)))
  with pytest.raises(ValueError, match="needs masks"):
    pr.keep_pruned_zero().update(grads, state, params)


def test_perp_mask_lora_merge_keeps_the_zero_pattern():
  params = _params()
  masks = pr.magnitude_masks(params, 0.8)
  trainable = pr.perp_trainable(params)
  assert jax.tree.leaves(trainable) == [True, False, True, False]  # head bias, head kernel, hidden bias, kernel
  adapters = pr.mask_lora_init(jax.random.key(0), params, include="hidden", r=2)
  adapters = jax.tree.map(lambda a: a + 0.5, adapters)
  merged = pr.merge_mask_lora(pr.apply_masks(params, masks), masks, adapters)
  np.testing.assert_array_equal(np.asarray(merged["hidden"]["kernel"]) != 0, np.asarray(masks["hidden"]["kernel"]))
  assert 0 < pr.trainable_fraction(params, trainable, adapters) < 1


def test_errors_name_the_argument():
  params = _params()
  for bad in (1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match="sparsity"):
      pr.magnitude_masks(params, bad)
  with pytest.raises(ValueError, match="scope"):
    pr.magnitude_masks(params, 0.5, scope="tensor")
  with pytest.raises(ValueError, match="n must be"):
    pr.nm_masks(params, 5, 4)
  with pytest.raises(ValueError, match="m=5 must divide"):
    pr.nm_masks(params, 2, 5)
  with pytest.raises(ValueError, match="selects no prunable leaf"):
    pr.magnitude_masks(params, 0.5, include="decoder")
  with pytest.raises(ValueError, match="s_final"):
    pr.gmp_sparsity(0, 0.0, 1.0, 0, 1, 1)
  with pytest.raises(ValueError, match="dt must be"):
    pr.gmp_sparsity(0, 0.0, 0.5, 0, 1, 0)
  with pytest.raises(ValueError, match="death_rate"):
    pr.drop_and_regrow(params, pr.magnitude_masks(params, 0.5), params, 1.5)
  with pytest.raises(ValueError, match="density"):
    pr.erk_densities({"a": (2, 2)}, 0.0)
  with pytest.raises(ValueError, match="r must be"):
    pr.mask_lora_init(jax.random.key(0), params, include="head", r=9)


def test_find_knee_on_piecewise_curves_and_sweep_is_exact():
  flat_then_drop = [(0.0, 0.97), (0.3, 0.968), (0.5, 0.962), (0.6, 0.95), (0.7, 0.80)]
  assert pr.find_knee(flat_then_drop, tol=0.01) == 0.5
  assert pr.find_knee(flat_then_drop, tol=0.1) == 0.6
  assert pr.find_knee([(0.9, 0.1), (0.0, 0.5)], tol=0.01) == 0.0  # unsorted input, immediate drop
  params = _params()
  sel = pr.prunable(params)
  curve = pr.sparsity_sweep(params, lambda p: 1.0 - float(jnp.mean(jnp.asarray(
      [jnp.mean(x == 0) for x, c in zip(jax.tree.leaves(p), jax.tree.leaves(sel)) if c]))), [0.0, 0.5, 0.9])
  assert [s for s, _ in curve] == [0.0, 0.5, 0.9]
  with pytest.raises(ValueError, match="sparsity"):
    pr.sparsity_sweep(params, lambda p: 0.0, [1.0])


def test_score_mask_forward_is_w_times_mask_with_straight_through_score_gradient():
  w = jax.random.normal(jax.random.key(0), (6, 5))
  scores = jnp.abs(w)  # lottery jackpots' init: with no search step the mask is the magnitude mask
  out = pr.score_mask_forward(w, scores, 0.6)
  mag = pr.magnitude_masks({"w": w}, 0.6, scope="layer")["w"]
  np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.where(mag, w, 0.0)))
  assert int(jnp.sum(pr.score_mask(scores, 0.6))) == 30 - 18
  upstream = jax.random.normal(jax.random.key(1), w.shape)
  g_s, g_w = jax.grad(lambda s, w: jnp.sum(upstream * pr.score_mask_forward(w, s, 0.6)), argnums=(0, 1))(scores, w)
  np.testing.assert_allclose(g_s, upstream * w, rtol=1e-6)
  assert not np.any(np.asarray(g_w))  # the weights stay frozen
  with pytest.raises(ValueError, match="shape"):
    pr.score_mask_forward(w, scores[:2], 0.5)


def test_sparse_wide_masks_match_dense_flops():
  def mlp(widths):
    dims = [64, *widths, 10]
    return {f"l{i}": {"kernel": jnp.ones((a, b)), "bias": jnp.ones((b,))}
            for i, (a, b) in enumerate(zip(dims, dims[1:]))}

  assert pr.sparse_wide_width(128, 0.75) == 256
  dense, wide = mlp([128, 128]), mlp([256, 256])
  dens = pr.iso_flop_densities(dense, wide)
  assert dens == {"l0/kernel": 0.5, "l1/kernel": 0.25, "l2/kernel": 0.5}
  masks = pr.random_masks(jax.random.key(0), wide, dens)
  assert abs(pr.matmul_flops(wide, masks) / pr.matmul_flops(dense) - 1) <= 0.05
  with pytest.raises(ValueError, match="sparsity"):
    pr.sparse_wide_width(128, 1.0)
