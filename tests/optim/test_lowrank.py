"""Unit tests for paperlab.optim.lowrank: GaLore-style subspace state, FRUGAL, Online Subspace Descent, WeLore."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import optim
from paperlab._tree import leaf_paths

PARAMS = {"dense": {"kernel": jnp.ones((12, 6)), "bias": jnp.zeros(6)}, "wide": jnp.ones((4, 10))}


def _grads(seed=0):
  leaves, treedef = jax.tree.flatten(PARAMS)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


class TestJit(chex.TestCase):

  # eager mode is exercised by the other tests; the default galore/frugal/online_subspace_descent aliases are
  # jitted by test_none_leaves_and_bf16_params_work and the inject_hyperparams test (each compile costs ~2 CPU-s)
  @chex.variants(with_jit=True)
  def test_aliases_jit(self):
    for opt in (optim.frugal(1e-2, projection="random", weight_decay=0.1),
                optim.frugal(1e-2, projection="columns", density=0.5)):
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


def test_frugal_resets_only_the_projected_leaves_state_when_the_subspace_changes():
  """Official FRUGAL (philip-zmushko/FRUGAL c7ebe4c2, GaloreOptimizer._update_states) re-initialises the state of
  the projected matrices only; biases and full-rank leaves keep one uninterrupted Adam."""
  opt = optim.scale_by_frugal(rank=2, update_proj_gap=2)
  state = opt.init(PARAMS)
  projected, full = [], []
  for i in range(4):
    _, state = opt.update(_grads(i), state)
    projected.append(int(state.inner_state.count))
    full.append(int(state.full_state.count))
  assert projected == [1, 2, 1, 2]
  assert full == [1, 2, 3, 4]
  # the bias leaf's update is plain Adam over the 4 steps
  adam = optax.scale_by_adam()
  s = adam.init(PARAMS["dense"]["bias"])
  opt_state = opt.init(PARAMS)
  for i in range(4):
    u, opt_state = opt.update(_grads(i), opt_state)
    ref, s = adam.update(_grads(i)["dense"]["bias"], s)
  np.testing.assert_allclose(u["dense"]["bias"], ref, rtol=1e-6)


def test_frugal_default_keeps_embeddings_and_head_full_rank():
  """Official ``prepare_proj_params`` leaves ``nn.Embedding``, ``lm_head`` and norms on AdamW; ours matches the
  path segments of ``FULL_RANK_PATTERN`` (checked on a real ``nnx.State``, whose paths end in ``.value``)."""
  from flax import nnx
  from paperlab.models import CharTransformer

  # shapes only (nnx.eval_shape / jax.eval_shape): which leaves get a basis depends on paths and ndim, not values
  model = nnx.eval_shape(lambda: CharTransformer(vocab_size=11, seq_len=8, d_model=16, num_heads=2, num_layers=1,
                                                 rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  treedef = jax.tree.structure(params)
  state = jax.eval_shape(optim.scale_by_frugal().init, params)
  flags = dict(zip(leaf_paths(params), [b is not None for b in treedef.flatten_up_to(state.basis)]))
  full_rank = {p for p, on in flags.items() if not on}
  projected = {p for p, on in flags.items() if on}
  assert {"embed/embedding", "pos", "head/kernel"} <= full_rank
  assert projected and all(p.startswith("blocks/") and p.endswith("kernel") for p in projected)
  assert any("qkv" in p for p in projected) and any("fc1" in p for p in projected)
  everything = jax.eval_shape(optim.scale_by_frugal(full_rank_mask=None).init, params)  # None: every 2-D leaf is projected
  two_d = [p for p, x in zip(leaf_paths(params), jax.tree.leaves(params)) if x.ndim == 2]
  assert sum(b is not None for b in treedef.flatten_up_to(everything.basis)) == len(two_d) > len(projected)


@pytest.mark.parametrize("make", [
    lambda: optim.frugal(1e-2, update_proj_gap=2, weight_decay=0.1),
    lambda: optim.galore(1e-2, rank=2, update_proj_gap=2, weight_decay=0.1),
    lambda: optim.online_subspace_descent(1e-2, rank=2, weight_decay=0.1),
], ids=["frugal", "galore", "osd"])
def test_none_leaves_and_bf16_params_work(make):
  params = {"w": jnp.ones((12, 6), jnp.bfloat16), "b": jnp.zeros(6, jnp.bfloat16), "aux": None, "v": jnp.ones((4, 10))}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape).astype(p.dtype), params)
  opt = make()
  state = opt.init(params)
  update = jax.jit(opt.update)
  for _ in range(3):
    u, state = update(grads, state, params)
  assert u["aux"] is None
  chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
  chex.assert_tree_all_finite(u)


@pytest.mark.parametrize("factory,static,kwargs", [
    (optim.frugal, ("density", "update_proj_gap", "projection", "rank"),
     dict(density=0.5, update_proj_gap=2, b1=0.8, state_free_scale=0.5)),
    (optim.galore, ("rank", "update_proj_gap"), dict(rank=2, update_proj_gap=2, scale=0.5, b2=0.99)),
    (optim.online_subspace_descent, ("rank", "update_proj_gap"),
     dict(rank=2, update_proj_gap=2, proj_lr=0.2, proj_weight_decay=0.05, scale=0.5)),
], ids=["frugal", "galore", "osd"])
def test_inject_hyperparams_jit_changes_learning_rate_and_weight_decay_between_steps(factory, static, kwargs):
  """Under ``inject_hyperparams(static_args=...)`` + ``jit`` the learning rate and weight decay are traced: one
  compilation serves every value, the update scales with the learning rate and the decay adds
  ``-lr * Δwd * params`` (closed form of decoupled weight decay)."""
  opt = optax.inject_hyperparams(factory, static_args=static)(learning_rate=1e-2, weight_decay=0.1, **kwargs)
  state = opt.init(PARAMS)
  traces = []

  @jax.jit
  def update(*args):
    traces.append(1)  # once per trace, i.e. per compilation
    return opt.update(*args)

  for i in range(3):  # steps with a changing learning rate
    state.hyperparams["learning_rate"] = jnp.asarray(1e-2 * (i + 1), jnp.float32)
    _, state = update(_grads(i), state, PARAMS)
  g = _grads(5)

  def with_hparams(lr, wd):
    hp = dict(state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32), weight_decay=jnp.asarray(wd, jnp.float32))
    return update(g, state._replace(hyperparams=hp), PARAMS)[0]

  u1, u2, u3 = with_hparams(1e-2, 0.1), with_hparams(3e-2, 0.1), with_hparams(1e-2, 0.4)
  chex.assert_trees_all_close(u2, jax.tree.map(lambda u: 3 * u, u1), rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(jax.tree.map(jnp.subtract, u3, u1),
                              jax.tree.map(lambda p: -1e-2 * 0.3 * p, PARAMS), rtol=1e-5, atol=1e-7)
  assert len(traces) == 1  # one compilation for every value


@pytest.mark.parametrize("factory,arg,static,kwargs", [
    (optim.frugal, "density", ("update_proj_gap",), {}),
    (optim.galore, "rank", ("update_proj_gap",), {"rank": 2}),
    (optim.online_subspace_descent, "update_proj_gap", ("rank",), {"rank": 2}),
])
def test_shape_setting_hyperparameters_must_be_static_under_inject_hyperparams(factory, arg, static, kwargs):
  with pytest.raises((TypeError, ValueError), match=f"^{arg} .*static_args"):
    optax.inject_hyperparams(factory, static_args=static)(learning_rate=1e-2, **kwargs).init(PARAMS)


def test_frugal_and_galore_default_learning_rates_are_the_papers():
  """FRUGAL: 1e-3 (official scripts/benchmark_c4); GaLore: 0.01 with scale 0.25 (LLaMA pre-training)."""
  g = _grads()
  for default, explicit in ((optim.frugal(), optim.frugal(1e-3)),
                            (optim.galore(rank=2), optim.galore(1e-2, rank=2, scale=0.25))):
    u1, _ = default.update(g, default.init(PARAMS), PARAMS)
    u2, _ = explicit.update(g, explicit.init(PARAMS), PARAMS)
    chex.assert_trees_all_equal(u1, u2)
  u_other, _ = optim.frugal(1e-2).update(g, optim.frugal(1e-2).init(PARAMS), PARAMS)
  assert not np.allclose(u_other["wide"], optim.frugal().update(g, optim.frugal().init(PARAMS), PARAMS)[0]["wide"])


def test_full_rank_mask_keeps_leaf_unprojected():
  opt = optim.scale_by_frugal(rank=1, full_rank_mask={"dense": {"kernel": True, "bias": False}, "wide": False})
  state = opt.init(PARAMS)
  assert state.basis["dense"]["kernel"] is None and state.basis["wide"] is not None


def test_online_pca_converges_to_top_singular_subspace():
  @jax.jit  # one program instead of a compile per eager op
  def subspace_error():
    key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
    u, _ = jnp.linalg.qr(jax.random.normal(key1, (64, 32)))
    v, _ = jnp.linalg.qr(jax.random.normal(key2, (32, 32)))
    s = jnp.concatenate([jnp.array([10.0, 8.0, 6.0, 5.0]), jnp.linspace(1.0, 0.1, 28)])
    g = (u * s) @ v.T  # 64 x 32 -> right projection: the basis lives in R^32 (columns of v)
    basis, _ = jnp.linalg.qr(jax.random.normal(key3, (32, 4)))
    basis, _ = jax.lax.scan(lambda b, _: (optim.online_pca_step(b, g, 0.5), None), basis, None, length=2000)
    q, _ = jnp.linalg.qr(basis)
    cosines = jnp.linalg.svd(q.T @ v[:, :4], compute_uv=False)
    return jnp.sqrt(1 - jnp.min(cosines) ** 2)

  assert float(subspace_error()) <= 1e-3


def test_online_subspace_descent_projects_with_the_current_basis_then_moves_it():
  """Official order (kyleliang919/Online-Subspace-Descent e694775, GaLoreProjector.project/project_back): G_t is
  projected with P_t; the AdamW step on P happens afterwards, and not at step 0."""
  opt = optim.scale_by_online_subspace_descent(rank=2, update_proj_gap=2)
  state = opt.init(PARAMS)
  g0 = _grads(0)
  _, state = opt.update(g0, state)
  p0 = state.basis["wide"]
  np.testing.assert_allclose(p0 @ p0.T, (lambda b: b @ b.T)(optim.galore_basis(g0["wide"], 2)), atol=1e-5)
  assert int(state.proj_state[0].count) == 0  # no projector step at step 0
  g1 = _grads(1)
  u1, state = opt.update(g1, state)
  _, outside = optim.split_gradient(u1["wide"], p0)  # projected with P_0, not the moved basis
  assert float(jnp.max(jnp.abs(outside))) < 1e-5
  assert float(jnp.max(jnp.abs(state.basis["wide"] - p0))) > 1e-3


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
