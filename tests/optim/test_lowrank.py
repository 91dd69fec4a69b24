"""Unit tests for paperlab.optim.lowrank: GaLore-style subspace state, FRUGAL, Online Subspace Descent, WeLore."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import optim

PARAMS = {"dense": {"kernel": jnp.ones((12, 6)), "bias": jnp.zeros(6)}, "wide": jnp.ones((4, 10))}


def _grads(seed=0):
  leaves, treedef = jax.tree.flatten(PARAMS)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


class TestJit(chex.TestCase):

  @chex.variants(with_jit=True)  # eager mode is exercised by the other tests
  def test_aliases_jit(self):
    for opt in (optim.galore(1e-2, rank=2, update_proj_gap=2), optim.frugal(1e-2, update_proj_gap=2),
                optim.frugal(1e-2, projection="random", weight_decay=0.1),
                optim.frugal(1e-2, projection="columns", density=0.5),
                optim.online_subspace_descent(1e-2, rank=2)):
      state = opt.init(PARAMS)
      update = self.variant(opt.update)
      for i in range(2):
        u, state = update(_grads(i), state, PARAMS)
      chex.assert_trees_all_equal_shapes_and_dtypes(u, PARAMS)
      chex.assert_tree_all_finite(u)


def test_split_gradient_is_an_orthogonal_decomposition():
  g = jax.random.normal(jax.random.key(0), (12, 6))
  for method in ("svd", "random", "columns"):
    basis = optim.galore_basis(g, 2, method, jax.random.key(1))
    g_sf, g_free = optim.split_gradient(g, basis)
    np.testing.assert_allclose(g_sf + g_free, g, atol=1e-6)
    assert abs(float(jnp.sum(g_sf * g_free))) < 1e-4
    np.testing.assert_allclose(basis.T @ basis, jnp.eye(2), atol=1e-5)


def test_galore_update_lies_in_the_gradient_subspace():
  opt = optim.scale_by_galore(rank=2, update_proj_gap=100)
  g = _grads()
  u, state = opt.update(g, opt.init(PARAMS))
  for name, leaf in (("wide", u["wide"]), ("kernel", u["dense"]["kernel"])):
    basis = state.basis["wide"] if name == "wide" else state.basis["dense"]["kernel"]
    _, outside = optim.split_gradient(leaf, basis)
    assert float(jnp.max(jnp.abs(outside))) < 1e-5
  assert state.basis["dense"]["bias"] is None


def test_frugal_with_full_density_coordinate_subspace_is_adam():
  opt = optim.frugal(1e-2, density=1.0, projection="columns", update_proj_gap=1000)
  adam = optax.adam(1e-2)
  s1, s2 = opt.init(PARAMS), adam.init(PARAMS)
  up1, up2 = jax.jit(opt.update), jax.jit(adam.update)
  for i in range(5):
    u1, s1 = up1(_grads(i), s1, PARAMS)
    u2, s2 = up2(_grads(i), s2, PARAMS)
  chex.assert_trees_all_close(u1, u2, atol=1e-6)


def test_frugal_residual_gets_sign_descent():
  opt = optim.scale_by_frugal(rank=2, state_full=optax.scale(0.0))
  g = _grads()
  u, state = opt.update(g, opt.init(PARAMS))
  _, free = optim.split_gradient(g["wide"], state.basis["wide"])
  np.testing.assert_array_equal(u["wide"], jnp.sign(free))
  np.testing.assert_array_equal(u["dense"]["bias"], 0.0)  # non-matrix leaves are fully state-full


def test_frugal_resets_state_full_optimizer_when_the_subspace_changes():
  opt = optim.scale_by_frugal(rank=2, update_proj_gap=2)
  state = opt.init(PARAMS)
  counts = []
  for i in range(4):
    _, state = opt.update(_grads(i), state)
    counts.append(int(state.inner_state.count))
  assert counts == [1, 2, 1, 2]


def test_full_rank_mask_keeps_leaf_unprojected():
  opt = optim.scale_by_frugal(rank=1, full_rank_mask={"dense": {"kernel": True, "bias": False}, "wide": False})
  state = opt.init(PARAMS)
  assert state.basis["dense"]["kernel"] is None and state.basis["wide"] is not None


def test_online_pca_converges_to_top_singular_subspace():
  key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
  u, _ = jnp.linalg.qr(jax.random.normal(key1, (64, 32)))
  v, _ = jnp.linalg.qr(jax.random.normal(key2, (32, 32)))
  s = jnp.concatenate([jnp.array([10.0, 8.0, 6.0, 5.0]), jnp.linspace(1.0, 0.1, 28)])
  g = (u * s) @ v.T  # 64 x 32 -> right projection: the basis lives in R^32 (columns of v)
  basis, _ = jnp.linalg.qr(jax.random.normal(key3, (32, 4)))
  step = jax.jit(lambda b, _: (optim.online_pca_step(b, g, 0.5), None))
  basis, _ = jax.lax.scan(step, basis, None, length=2000)
  q, _ = jnp.linalg.qr(basis)
  cosines = jnp.linalg.svd(q.T @ v[:, :4], compute_uv=False)
  assert float(jnp.sqrt(1 - jnp.min(cosines) ** 2)) <= 1e-3


def test_online_subspace_descent_moves_the_basis_every_step():
  opt = optim.scale_by_online_subspace_descent(rank=2, proj_lr=0.5)
  state = opt.init(PARAMS)
  _, state = opt.update(_grads(0), state)
  b1 = state.basis["wide"]
  _, state = opt.update(_grads(1), state)
  assert float(jnp.max(jnp.abs(state.basis["wide"] - b1))) > 1e-4


def test_low_rank_factorize_error_is_eckart_young():
  w = jax.random.normal(jax.random.key(0), (30, 20))
  factors, mask = optim.low_rank_factorize({"w": w}, {"w": 5})
  a, b = factors["w"]
  s = jnp.linalg.svd(w, compute_uv=False)
  np.testing.assert_allclose(jnp.linalg.norm(w - a @ b), jnp.sqrt(jnp.sum(s[5:] ** 2)), rtol=1e-4)
  assert mask["w"]
  dense, mask = optim.low_rank_factorize({"w": w}, {"w": 15})  # 15 * 50 >= 600: stays dense
  assert not mask["w"] and dense["w"] is w


def test_welore_ranks_are_non_uniform_and_meet_the_budget():
  key1, key2 = jax.random.split(jax.random.key(0))
  low = jax.random.normal(key1, (40, 3)) @ jax.random.normal(key2, (3, 40)) + 0.01 * jax.random.normal(key1, (40, 40))
  full = jax.random.normal(key2, (40, 40))
  params = {"low": low, "full": full, "bias": jnp.ones(40)}
  ranks = optim.welore_ranks(params, target_ratio=0.5)
  assert ranks["bias"] is None
  assert ranks["low"] <= 4 < ranks["full"]
  used = sum(min(k * 80, 1600) for k in (ranks["low"], ranks["full"]))
  assert used <= 0.5 * 3200 and (min((ranks["full"] + 1) * 80, 1600) + ranks["low"] * 80) > 0.5 * 3200
  assert float(optim.stable_rank(low)) < 3.5 < float(optim.stable_rank(full))


@pytest.mark.parametrize("make,arg", [
    (lambda: optim.frugal(-1.0), "learning_rate"),
    (lambda: optim.frugal(1e-2, density=0.0), "density"),
    (lambda: optim.frugal(1e-2, density=1.5), "density"),
    (lambda: optim.frugal(1e-2, projection="qr"), "projection"),
    (lambda: optim.frugal(1e-2, update_proj_gap=0), "update_proj_gap"),
    (lambda: optim.galore(1e-2, rank=0), "rank"),
    (lambda: optim.scale_by_galore(scale=0.0), "scale"),
    (lambda: optim.online_subspace_descent(1e-2, proj_lr=-1.0), "proj_lr"),
    (lambda: optim.welore_ranks({"w": jnp.ones((3, 3))}, target_ratio=0.0), "target_ratio"),
    (lambda: optim.galore_basis(jnp.ones((3, 3)), 1, "random"), "key"),
])
def test_invalid_hyperparameters_raise_naming_them(make, arg):
  with pytest.raises(ValueError, match=arg):
    make()


def test_rank_must_be_an_int():
  with pytest.raises(TypeError, match="rank"):
    optim.galore(1e-2, rank=2.5)
