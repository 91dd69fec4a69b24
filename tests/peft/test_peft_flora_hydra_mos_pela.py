"""Unit tests of the FLoRA, Hydra, MoS and PELA adapters: start at the base model, merged forward equals the
adapter forward (1e-6), unmerge inverts merge, training touches only adapter parameters, jit, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import paperlab.peft as pp
from paperlab.models import MLP


_GRAPHDEF, _STATE = nnx.split(MLP(8, [16, 16], 12, rngs=nnx.Rngs(0)))
_PARAMS = jax.tree.map(np.asarray, nnx.to_pure_dict(_STATE))


def _params():
  return jax.tree.map(np.array, _PARAMS)


def _noisy(tree, seed=1, scale=0.2):  # host noise: no per-leaf XLA dispatch in the tests
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + scale * rng.standard_normal(np.shape(x)).astype(np.float32), tree)


X = np.random.default_rng(9).standard_normal((5, 16)).astype(np.float32)


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------------------------------------------- FLoRA


def test_flora_starts_at_base_and_merged_forward_equals_adapter_forward():
  params = _params()
  ad = pp.flora_init(jax.random.key(0), params, include=r"hidden/\d/kernel", r=(3, 5))
  assert sorted(ad) == ["hidden/0/kernel", "hidden/1/kernel"]
  a = ad["hidden/1/kernel"]
  assert a["flora_core"].shape == (3, 5) and a["flora_factor_0"].shape == (16, 3) and a["flora_factor_1"].shape == (16, 5)
  assert not np.any(np.asarray(a["flora_core"]))  # zero core: the model starts at the base
  assert _same(pp.apply_flora(params, ad), params)
  ad = _noisy(ad)
  w = params["hidden"][1]["kernel"]

  @jax.jit
  def run(params, ad):
    merged = pp.apply_flora(params, ad, scale=4.0)
    return (merged, X @ merged["hidden"][1]["kernel"], pp.flora_linear(X, w, ad["hidden/1/kernel"], 4.0),
            pp.unmerge_flora(merged, ad, scale=4.0)["hidden"][1]["kernel"])

  merged, y_merged, y_adapter, w_back = run(params, ad)
  np.testing.assert_allclose(y_merged, y_adapter, atol=1e-6)
  np.testing.assert_allclose(w_back, w, atol=1e-6)
  assert np.array_equal(merged["head"]["kernel"], params["head"]["kernel"])


def test_flora_on_a_conv_kernel_keeps_a_4d_core():
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 6))}, "dense": {"kernel": jnp.ones((6, 2))}}
  ad = pp.flora_init(jax.random.key(0), params, include="conv", r=(2, 2, 3, 3))
  assert ad["conv/kernel"]["flora_core"].shape == (2, 2, 3, 3)
  core = jnp.ones((2, 2, 3, 3))
  ad["conv/kernel"]["flora_core"] = core
  f = [ad["conv/kernel"][f"flora_factor_{i}"] for i in range(4)]
  want = jnp.einsum("abcd,ia,jb,kc,ld->ijkl", core, *f)  # the Tucker product, axis by axis
  np.testing.assert_allclose(pp.apply_flora(params, ad)["conv"]["kernel"], 1.0 + want, atol=1e-5)


def test_flora_errors():
  params = _params()
  with pytest.raises(ValueError, match="matches no kernel"):
    pp.flora_init(jax.random.key(0), params, include="nothing", r=2)
  with pytest.raises(ValueError, match=r"r\[1\]=17 exceeds 16"):
    pp.flora_init(jax.random.key(0), params, include="hidden/1", r=(2, 17))
  with pytest.raises(ValueError, match="one rank per axis"):
    pp.flora_init(jax.random.key(0), params, include="hidden/1", r=(2, 2, 2))
  with pytest.raises(ValueError, match="factors"):
    pp.flora_delta(jnp.zeros((2, 2)), [jnp.zeros((4, 2)), jnp.zeros((4, 3))])
  ad = pp.flora_init(jax.random.key(0), params, include="hidden/1", r=2)
  with pytest.raises(ValueError, match="not a leaf of params"):
    pp.apply_flora(params, {"hidden/7/kernel": ad["hidden/1/kernel"]})
  with pytest.raises(ValueError, match="shape"):
    pp.apply_flora(params, {"hidden/0/kernel": ad["hidden/1/kernel"]})  # (8, 16) kernel, (16, 16) factors


# ---------------------------------------------------------------------------------------------------- Hydra


def test_hydra_merges_kernel_and_bias_and_unmerges():
  params = _noisy(_params(), seed=5)  # non-zero biases
  ad = pp.hydra_init(jax.random.key(0), params, include="hidden/1|head", r_par=2, r_seq=3)
  a = ad["head/kernel"]
  assert a["hydra_par_A"].shape == (2, 16) and a["hydra_par_B"].shape == (12, 2)
  assert a["hydra_seq_A"].shape == (3, 12) and a["hydra_seq_B"].shape == (12, 3)
  assert _same(pp.apply_hydra(params, ad), params)  # zero B: starts at the base
  ad = _noisy(ad)
  w, b = params["head"]["kernel"], params["head"]["bias"]

  @jax.jit
  def run(params, ad):
    merged = pp.apply_hydra(params, ad)
    return (merged, X @ merged["head"]["kernel"] + merged["head"]["bias"], pp.hydra_linear(X, w, b, ad["head/kernel"]),
            pp.unmerge_hydra(merged, ad))

  merged, y_merged, y_adapter, back = run(params, ad)
  np.testing.assert_allclose(y_merged, y_adapter, atol=1e-6)
  assert not np.allclose(merged["head"]["bias"], b)  # the sequential branch reads the bias too
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_allclose(x, y, atol=1e-5)


def test_hydra_errors():
  params = _params()
  with pytest.raises(ValueError, match="r_seq=13 exceeds 12"):
    pp.hydra_init(jax.random.key(0), params, include="head", r_seq=13)
  with pytest.raises(ValueError, match="r_par must be a positive int"):
    pp.hydra_init(jax.random.key(0), params, include="head", r_par=0)
  ad = pp.hydra_init(jax.random.key(0), params, include="hidden/1", r_par=2, r_seq=2)
  with pytest.raises(ValueError, match="expected"):
    pp.apply_hydra(params, {"head/kernel": ad["hidden/1/kernel"]})


# ---------------------------------------------------------------------------------------------------- PELA


def test_pela_rank_init_and_low_rank_forward():
  params = _params()
  assert pp.pela_rank((16, 16)) == 4 and pp.pela_rank((64, 32), 1.5) == 14
  f = pp.pela_init(params, include="kernel")  # head (16 -> 12) kept: 12 >= min_out
  assert sorted(f) == ["head/kernel", "hidden/0/kernel", "hidden/1/kernel"]
  assert f["hidden/1/kernel"]["pela_A"].shape == (4, 16) and f["hidden/1/kernel"]["pela_B"].shape == (16, 4)
  assert sorted(pp.pela_init(params, include="kernel", min_out=13)) == ["hidden/0/kernel", "hidden/1/kernel"]
  w = params["hidden"][1]["kernel"]
  u, s, vh = np.linalg.svd(np.asarray(w))
  np.testing.assert_allclose(pp.pela_kernel(f["hidden/1/kernel"]), (u[:, :4] * s[:4]) @ vh[:4], atol=1e-5)
  b = params["hidden"][1]["bias"]
  run = jax.jit(lambda p, f: (X @ pp.apply_pela(p, f)["hidden"][1]["kernel"] + b, pp.pela_linear(X, f["hidden/1/kernel"], b)))
  y_merged, y_adapter = run(params, f)
  np.testing.assert_allclose(y_merged, y_adapter, atol=1e-6)
  full = pp.pela_init(params, include="hidden/1", rank=16)
  assert float(pp.pela_weight_regularizer(params, full, eps=0.0)) < 1e-9  # full rank rebuilds W exactly
  assert float(pp.pela_weight_regularizer(params, f)) > 1e-4


def test_pela_feature_loss_is_mean_mse_and_stops_teacher_gradient():
  s, t = [jnp.ones((2, 3)), jnp.zeros((4,))], [jnp.zeros((2, 3)), jnp.full((4,), 2.0)]
  assert float(pp.pela_feature_loss(s, t)) == pytest.approx((1.0 + 4.0) / 2)
  g = jax.grad(lambda tt: pp.pela_feature_loss(s, tt))(t)
  assert all(not np.any(np.asarray(x)) for x in g)


def test_pela_errors():
  params = _params()
  with pytest.raises(ValueError, match="compress_ratio=100"):
    pp.pela_init(params, include="hidden/1", compress_ratio=100.0)
  with pytest.raises(ValueError, match="compress_ratio must lie"):
    pp.pela_rank((4, 4), 0.0)
  with pytest.raises(ValueError, match="rank=17"):
    pp.pela_init(params, include="hidden/1", rank=17)
  with pytest.raises(ValueError, match="min_out"):
    pp.pela_init(params, include="head", min_out=100)
  with pytest.raises(ValueError, match="equally long"):
    pp.pela_feature_loss([jnp.zeros(2)], [])


# ---------------------------------------------------------------------------------------------------- MoS


def test_mos_assembles_lora_from_shared_and_private_shards():
  params = _params()
  shards, routing = pp.mos_init(jax.random.key(0), params, include=r"hidden/\d/kernel", r=4, pool_size=6,
                                shards_per_vector=2, private=3)
  # widths: hidden/0 (8 -> 16), hidden/1 (16 -> 16): A pools of length 4 and 8, one B pool of length 8
  assert sorted(shards["shared"]) == ["A/4", "A/8", "B/8"] and shards["shared"]["B/8"].shape == (6, 8)
  assert shards["private"]["hidden/1/kernel"]["A"].shape == (3, 8)
  assert pp.mos_num_params(shards) == 6 * (4 + 8 + 8) + 3 * (4 + 8) + 3 * (8 + 8)  # shared pools + private shards
  for r in routing.values():
    for idx in r.values():
      assert idx.shape == (8,) and len(set(idx.tolist())) == 8 and set(range(3)) <= set(idx.tolist())
  shards = _noisy(shards)
  w = params["hidden"][1]["kernel"]

  @jax.jit
  def run(shards):
    lora = pp.mos_to_lora(shards, routing, r=4)
    a, b = lora["hidden/1/kernel"]["lora_A"], lora["hidden/1/kernel"]["lora_B"]
    merged = pp.apply_adapters(params, lora)
    return a, X @ merged["hidden"][1]["kernel"], X @ w + (pp.DEFAULT_ALPHA / 4) * ((X @ a.T) @ b.T)

  a, y_merged, y_adapter = run(shards)
  rt = routing["hidden/1/kernel"]["A"]
  pool = np.concatenate([shards["private"]["hidden/1/kernel"]["A"], shards["shared"]["A/8"]])
  np.testing.assert_array_equal(a[2], np.concatenate([pool[rt[4]], pool[rt[5]]]))  # row k = slots 2k, 2k+1
  np.testing.assert_allclose(y_merged, y_adapter, atol=1e-6)


def test_mos_starts_at_base_and_shared_shards_sum_gradients_of_layers():
  params = _params()
  shards, routing = pp.mos_init(jax.random.key(1), params, include=r"hidden/1/kernel|head", r=2, pool_size=4)
  assert _same(pp.apply_adapters(params, pp.mos_to_lora(shards, routing, 2)), params)
  shards = _noisy(shards)
  target = jax.random.normal(jax.random.key(3), (5, 16))

  def loss(sh, paths):
    lora = pp.mos_to_lora(sh, {p: routing[p] for p in paths}, 2)
    p = pp.apply_adapters(params, lora)
    return jnp.sum((X @ p["hidden"][1]["kernel"] - target) ** 2) + jnp.sum(X @ p["head"]["kernel"])

  grads = jax.jit(lambda sh: [jax.grad(loss)(sh, paths) for paths in (("hidden/1/kernel", "head/kernel"),
                                                                       ("hidden/1/kernel",), ("head/kernel",))])
  both, g1, g2 = grads(shards)
  np.testing.assert_allclose(both["shared"]["A/16"], g1["shared"]["A/16"] + g2["shared"]["A/16"], rtol=1e-5,
                             atol=1e-5)
  assert np.any(np.asarray(g1["shared"]["A/16"])) and np.any(np.asarray(g2["shared"]["A/16"]))


def test_mos_errors():
  params = _params()
  with pytest.raises(ValueError, match="cannot fill"):
    pp.mos_init(jax.random.key(0), params, include="hidden/1", r=4, pool_size=3)
  with pytest.raises(ValueError, match="must divide the width 8"):
    pp.mos_init(jax.random.key(0), params, include="hidden/0", r=2, pool_size=8, shards_per_vector=3)
  with pytest.raises(ValueError, match="private=9 exceeds"):
    pp.mos_init(jax.random.key(0), params, include="hidden/1", r=4, pool_size=8, private=9)
  with pytest.raises(ValueError, match="r=17 exceeds"):
    pp.mos_init(jax.random.key(0), params, include="hidden/1", r=17, pool_size=40)


# ---------------------------------------------------------------------------------------------------- training


def test_training_updates_only_the_adapter_parameters():
  """One jitted step trains the four kinds at once (one loss per kind, summed): the base stays bit-identical,
  every kind's parameters move, and the loss of each kind falls."""
  params = _params()
  key = jax.random.key(0)
  mos, routing = pp.mos_init(key, params, include="hidden", r=2, pool_size=4, private=1)
  adapters = {"flora": pp.flora_init(key, params, include="hidden", r=2),
              "hydra": pp.hydra_init(key, params, include="hidden", r_par=2, r_seq=2),
              "mos": mos, "pela": pp.pela_init(params, include="hidden/1")}
  fwd = {"flora": pp.apply_flora, "hydra": pp.apply_hydra, "pela": pp.apply_pela,
         "mos": lambda p, a: pp.apply_adapters(p, pp.mos_to_lora(a, routing, 2))}
  xs, ys = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32), np.arange(32) % 12

  def losses(tree):
    return {k: optax.softmax_cross_entropy_with_integer_labels(
        nnx.merge(_GRAPHDEF, fwd[k](tree["base"], tree["adapters"][k]))(xs), ys).mean() for k in fwd}

  tree = {"base": params, "adapters": adapters}
  opt = pp.train_only(optax.adam(1e-2), "^adapters/")

  @jax.jit
  def train(tree):
    state = opt.init(tree)
    new = tree
    for _ in range(2):
      g = jax.grad(lambda t: sum(losses(t).values()))(new)
      u, state = opt.update(g, state, new)
      new = optax.apply_updates(new, u)
    return new, losses(tree), losses(new)

  new, before, after = train(tree)
  assert _same(new["base"], params)  # base bit-identical
  for k in fwd:
    assert not _same(new["adapters"][k], adapters[k]), k  # adapters moved
    assert float(after[k]) < float(before[k]), k
