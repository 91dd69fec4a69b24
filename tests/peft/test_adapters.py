"""Unit tests of paperlab.peft: shapes, dtypes, jit, errors, merge / unmerge, the unmerged LoRA forward, and that
adapter training touches only adapter parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import paperlab.peft as pp
from paperlab import train
from paperlab.models import MLP


def _model(seed=0):
  return MLP(8, [16, 16], 4, rngs=nnx.Rngs(seed))


def _params(seed=0):
  return nnx.to_pure_dict(nnx.split(_model(seed), nnx.Param, ...)[1])


def _nonzero(adapters, seed=1):
  leaves, treedef = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


INITS = {
    "lora": lambda p: pp.lora_init(jax.random.key(0), p, include="hidden", r=4),
    "dora": lambda p: pp.dora_init(jax.random.key(0), p, include="hidden", r=4),
    "loha": lambda p: pp.loha_init(jax.random.key(0), p, include="hidden", r=4),
    "bone": lambda p: pp.bone_init(p, include="hidden", r=4),
    "bat": lambda p: pp.bone_init(p, include="hidden/1", r=4, variant="bat"),
}


def test_lora_init_shapes_dtypes_and_zero_b():
  a = pp.lora_init(jax.random.key(0), _params(), include=r"hidden/\d/kernel", r=3)
  assert sorted(a) == ["hidden/0/kernel", "hidden/1/kernel"]
  assert a["hidden/0/kernel"]["lora_A"].shape == (3, 8) and a["hidden/0/kernel"]["lora_B"].shape == (16, 3)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(a))
  assert not np.any(np.asarray(a["hidden/1/kernel"]["lora_B"]))
  b16 = pp.lora_init(jax.random.key(0), _params(), include="head", r=2, dtype=jnp.bfloat16)
  assert b16["head/kernel"]["lora_A"].dtype == jnp.bfloat16


def test_orthogonal_a_has_orthonormal_rows():
  a = pp.lora_init(jax.random.key(0), _params(), include="hidden/1", r=4, a_init="orthogonal")["hidden/1/kernel"]
  np.testing.assert_allclose(a["lora_A"] @ a["lora_A"].T, np.eye(4), atol=1e-5)


@pytest.mark.parametrize("kind", sorted(INITS))
def test_every_adapter_starts_at_the_base_model(kind):
  params = _params()
  out = pp.apply_adapters(params, INITS[kind](params))
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(out)):
    np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("kind", ["lora", "loha", "bone", "bat"])
def test_unmerge_inverts_merge(kind):
  params = _params()
  adapters = jax.tree.map(lambda a: 0.3 * a, _nonzero(INITS[kind](params)))
  merged = jax.jit(lambda p, a: pp.merge_adapters(p, a, alpha=4.0))(params, adapters)
  assert not np.allclose(merged["hidden"][1]["kernel"], params["hidden"][1]["kernel"])
  back = pp.unmerge_adapters(merged, adapters, alpha=4.0)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_dora_unmerge_is_refused():
  params = _params()
  with pytest.raises(ValueError, match="DoRA"):
    pp.unmerge_adapters(params, INITS["dora"](params))


def test_dora_columns_have_the_magnitude_as_norm():
  params = _params()
  a = _nonzero(INITS["dora"](params))
  w = pp.apply_adapters(params, a)["hidden"][0]["kernel"]
  np.testing.assert_allclose(jnp.linalg.norm(w, axis=0), a["hidden/0/kernel"]["lora_magnitude_vector"], rtol=1e-5)


def test_lora_merged_forward_equals_unmerged_adapter_forward():
  params = _params()
  adapters = _nonzero(INITS["lora"](params))
  x = jax.random.normal(jax.random.key(5), (7, 8))
  graphdef = nnx.split(_model())[0]
  merged = nnx.merge(graphdef, pp.merge_adapters(params, adapters))(x)
  adapted = pp.with_adapters(_model(), adapters)
  assert isinstance(adapted.hidden[0], pp.AdaptedLinear)
  np.testing.assert_allclose(adapted(x), merged, atol=1e-6, rtol=1e-6)
  np.testing.assert_allclose(pp.adapters_from_params(nnx.state(adapted, nnx.Param))["hidden/0/kernel"]["lora_A"],
                             adapters["hidden/0/kernel"]["lora_A"])


@pytest.mark.parametrize("kind", ["dora", "loha", "bone"])
def test_adapted_linear_matches_merged_forward(kind):
  params = _params()
  adapters = jax.tree.map(lambda a: 0.5 * a, _nonzero(INITS[kind](params)))
  x = jax.random.normal(jax.random.key(5), (7, 8))
  merged = nnx.merge(nnx.split(_model())[0], pp.merge_adapters(params, adapters))(x)
  np.testing.assert_allclose(pp.with_adapters(_model(), adapters)(x), merged, atol=1e-5, rtol=1e-5)


def _digits_batch():
  return jax.random.normal(jax.random.key(0), (32, 8)), jax.random.randint(jax.random.key(1), (32,), 0, 4)


def test_with_adapters_trains_only_the_adapter_params():
  base = _params()
  base_adapters = INITS["lora"](base)

  def model_fn(rngs):
    m = _model()
    return pp.with_adapters(m, base_adapters)

  tx = optax.adamw(1e-2, weight_decay=0.1)
  graphdef, init = train.make_init(model_fn, tx)
  state = init(jax.random.key(0))
  assert sorted(pp.adapters_from_params(state.params)) == ["hidden/0/kernel", "hidden/1/kernel"]
  assert set(jax.tree.leaves(jax.tree.map(lambda x: x.ndim, state.params))) == {2}  # only A and B are trainable
  step = jax.jit(train.make_train_step(graphdef, train.classification_loss, tx))
  new, _ = step(state, _digits_batch(), jax.random.key(2))
  for x, y in zip(jax.tree.leaves(state.model_state), jax.tree.leaves(new.model_state)):
    np.testing.assert_array_equal(x, y)  # the frozen base kernels and biases are bit-identical
  assert not np.allclose(new.params["hidden"][0]["lora_B"], 0.0)


def test_train_only_gives_base_params_no_update_and_asymmetric_lora_keeps_a():
  params = _params()
  graphdef = nnx.split(_model())[0]
  x, y = _digits_batch()
  tree = {"base": params, "adapters": INITS["lora"](params)}

  def loss(t):
    logits = nnx.merge(graphdef, pp.apply_adapters(t["base"], t["adapters"]))(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  for include, frozen in [("^adapters/", "^base/"), ("lora_B$", "^base/|lora_A$")]:
    tx = pp.train_only(optax.adamw(1e-2, weight_decay=0.1), include)

    @jax.jit
    def step(t, opt):
      updates, opt = tx.update(jax.grad(loss)(t), opt, t)
      return optax.apply_updates(t, updates), opt

    t, opt = tree, tx.init(tree)
    for _ in range(3):
      t, opt = step(t, opt)
    frozen_mask = pp_path_mask(t, frozen)
    for keep, a, b in zip(jax.tree.leaves(frozen_mask), jax.tree.leaves(tree), jax.tree.leaves(t)):
      if keep:
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(t["adapters"]["hidden/0/kernel"]["lora_B"], 0.0)


def pp_path_mask(tree, regex):
  from paperlab._tree import path_mask
  return path_mask(tree, include=regex)


def test_fedpara_hadamard_reaches_rank_r_squared():
  keys = jax.random.split(jax.random.key(0), 4)
  x1, y1, x2, y2 = (jax.random.normal(k, (64, 8)) for k in keys)
  w = pp.hadamard_lowrank(x1, y1, x2, y2)
  assert np.linalg.matrix_rank(np.asarray(w, np.float64)) == 64
  x1, y1 = np.asarray(x1, np.float64), np.asarray(y1, np.float64)
  assert np.linalg.matrix_rank(x1 @ y1.T) == 8  # a LoRA factor with the same r
  np.testing.assert_allclose(pp.pfedpara(w, jnp.zeros_like(w)), w)


def test_errors_name_the_argument():
  params = _params()
  with pytest.raises(ValueError, match="matches no 2-D kernel"):
    pp.lora_init(jax.random.key(0), params, include="decoder", r=2)
  with pytest.raises(ValueError, match="r=9 exceeds min"):
    pp.lora_init(jax.random.key(0), params, include="hidden/0", r=9)
  with pytest.raises(ValueError, match="r must be a positive int"):
    pp.loha_init(jax.random.key(0), params, include="hidden/0", r=0)
  with pytest.raises(ValueError, match="a_init"):
    pp.lora_init(jax.random.key(0), params, include="hidden/0", r=2, a_init="xavier")
  with pytest.raises(ValueError, match="must divide"):
    pp.bone_init(params, include="hidden/0", r=3)
  with pytest.raises(ValueError, match="not a 2-D leaf"):
    pp.apply_adapters(params, {"decoder/kernel": INITS["lora"](params)["hidden/0/kernel"]})
  with pytest.raises(ValueError, match="expected"):
    pp.apply_adapters(params, {"hidden/1/kernel": INITS["lora"](params)["hidden/0/kernel"]})
  with pytest.raises(ValueError, match="none of LoRA"):
    pp.adapter_kind({"lora_A": jnp.zeros((2, 2))})
  with pytest.raises(ValueError, match="matches no leaf"):
    pp.train_only(optax.sgd(0.1), "nothing").init(params)
  with pytest.raises(ValueError, match="not nnx.Linear kernels"):
    pp.with_adapters(_model(), {"x/kernel": {}})


def test_io_round_trip_is_bit_exact(tmp_path):
  params = _params()
  adapters = _nonzero(INITS["dora"](params))
  pp.save_adapters(adapters, tmp_path / "a.safetensors")
  back = pp.load_adapters(tmp_path / "a.safetensors")
  assert sorted(back) == sorted(adapters)
  for k in adapters:
    for n in adapters[k]:
      np.testing.assert_array_equal(back[k][n], adapters[k][n])
  assert "base_model.model.hidden.0.lora_A.weight" in pp.adapter_state_dict(adapters)


def test_eva_components_match_numpy_svd_and_rho_one_is_uniform():
  x = np.asarray(jax.random.normal(jax.random.key(0), (50, 6)) * jnp.arange(1, 7), np.float64)
  comps, ratio = pp.eva_components(jnp.asarray(x, jnp.float32), 3)
  vt = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:3]
  np.testing.assert_allclose(np.abs(np.sum(np.asarray(comps) * vt, 1)), 1.0, atol=1e-4)
  assert np.all(np.diff(np.asarray(ratio)) <= 0) and float(ratio.sum()) < 1
  ratios = {"a": np.array([0.5, 0.4, 0.1]), "b": np.array([0.9, 0.05, 0.01])}
  assert pp.eva_rank_distribution(ratios, 1, rho=1.0) == {"a": 1, "b": 1}
  assert pp.eva_rank_distribution(ratios, 1, rho=2.0) == {"a": 1, "b": 1}
  assert pp.eva_rank_distribution(ratios, 2, rho=2.0) == {"a": 3, "b": 1}  # top 4 of 0.9b .5a .4a .1a .05b
  assert pp.eva_rank_distribution({"a": np.array([0.5, 0.4, 0.3, 0.2]), "b": np.array([0.9, 0.01, 0.0, 0.0])},
                                  2, rho=2.0) == {"a": 3, "b": 1}
  with pytest.raises(ValueError, match="rho"):
    pp.eva_rank_distribution(ratios, 1, rho=0.5)
  with pytest.raises(ValueError, match="k must be"):
    pp.eva_components(jnp.ones((4, 3)), 5)
  with pytest.raises(ValueError, match="not a 2-D kernel"):
    pp.eva_init({"decoder/kernel": jnp.ones((4, 8))}, _params(), r=1)


def test_rank1_components_sum_to_b_diag_c_a_and_prune_keeps_top_budget():
  ks = jax.random.split(jax.random.key(0), 6)
  ad = {f"l{i}/kernel": {"lora_A": jax.random.normal(ks[2 * i], (4, 8)),
                         "lora_B": jax.random.normal(ks[2 * i + 1], (6, 4)), "c": jnp.arange(1.0, 5.0) * (i + 1)}
        for i in range(2)}
  a = ad["l0/kernel"]
  by_sum = sum(a["c"][i] * jnp.outer(a["lora_B"][:, i], a["lora_A"][i]) for i in range(4)).T
  np.testing.assert_allclose(pp.rank1_delta(a["lora_A"], a["lora_B"], a["c"]), by_sum, rtol=1e-5, atol=1e-5)
  pruned, keep = pp.dynamic_rank_prune(ad, 3)
  assert sum(int(k.sum()) for k in keep.values()) == 3
  scores = np.concatenate([np.asarray(pp.component_importance(**ad[p])) for p in sorted(ad)])
  kept = np.concatenate([np.asarray(keep[p]) for p in sorted(ad)])
  assert scores[kept].min() >= scores[~kept].max()
  assert all(np.all(np.asarray(pruned[p]["c"])[~np.asarray(keep[p])] == 0) for p in ad)
  with pytest.raises(ValueError, match="budget"):
    pp.dynamic_rank_prune(ad, 9)
