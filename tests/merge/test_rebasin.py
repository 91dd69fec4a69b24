"""Re-basin: permutation specs, weight/activation matching, REPAIR."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import merge
from paperlab.models import CNN, MLP, CharTransformer
from paperlab.train import make_init


def _init(model_fn, seed=0):
  graphdef, init = make_init(model_fn, optax.sgd(0.1))
  return graphdef, jax.jit(init)(jax.random.key(seed))


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name", ["mlp_layernorm", "cnn", "transformer"])
def test_permuted_network_computes_the_same_function(name):
  model_fn, spec_fn, x = {
      "mlp_layernorm": (lambda r: MLP(8, [6, 5], 3, norm="layer", rngs=r), merge.mlp_spec,
                        jax.random.normal(jax.random.key(1), (4, 8))),
      "cnn": (lambda r: CNN(1, (4, 6), 3, rngs=r), merge.cnn_spec, jax.random.normal(jax.random.key(1), (2, 8, 8, 1))),
      "transformer": (lambda r: CharTransformer(11, 8, 2, 2, 6, rngs=r), merge.transformer_spec,
                      jax.random.randint(jax.random.key(1), (2, 6), 0, 11)),
  }[name]
  graphdef, state = _init(model_fn)
  spec = spec_fn(state.params)
  perms = merge.random_permutation(jax.random.key(2), spec, state.params)
  permuted = jax.jit(lambda p: merge.apply_permutation(spec, perms, p))(state.params)
  apply = jax.jit(merge.model_apply(graphdef, state.model_state))
  assert _max_diff(state.params, permuted) > 1e-3  # something really moved
  np.testing.assert_allclose(apply(permuted, x), apply(state.params, x), atol=1e-5)


def test_mlp_spec_with_batchnorm_permutes_statistics_too():
  graphdef, state = _init(lambda r: MLP(8, [6], 3, norm="batch", rngs=r))
  stats = jax.tree.map(lambda v: v + jnp.arange(v.shape[0], dtype=v.dtype), state.model_state)
  spec = merge.mlp_spec(state.params)
  perms = merge.random_permutation(jax.random.key(0), spec, state.params)
  x = jax.random.normal(jax.random.key(1), (5, 8))
  p2, s2 = merge.apply_permutation(spec, perms, state.params), merge.apply_permutation(spec, perms, stats)
  f = jax.jit(lambda p, s: merge.model_apply(graphdef, s)(p, x))
  np.testing.assert_allclose(f(p2, s2), f(state.params, stats), atol=1e-5)


def test_weight_matching_recovers_a_cnn_permutation():
  _, state = _init(lambda r: CNN(1, (4, 6), 3, rngs=r))
  spec = merge.cnn_spec(state.params)
  perms = merge.random_permutation(jax.random.key(3), spec, state.params)
  permuted = merge.apply_permutation(spec, perms, state.params)
  found = merge.weight_matching(0, spec, state.params, permuted)
  assert _max_diff(merge.apply_permutation(spec, found, permuted), state.params) == 0.0


def test_permutation_keeps_singular_values():
  _, state = _init(lambda r: MLP(8, [7, 6], 3, rngs=r))
  spec = merge.mlp_spec(state.params)
  permuted = merge.apply_permutation(spec, merge.random_permutation(jax.random.key(0), spec, state.params),
                                     state.params)
  for k in ("0", "1"):
    s1 = np.linalg.svd(state.params["hidden"][int(k)]["kernel"], compute_uv=False)
    s2 = np.linalg.svd(permuted["hidden"][int(k)]["kernel"], compute_uv=False)
    np.testing.assert_allclose(s1, s2, rtol=1e-5)


def test_weight_matching_does_not_decrease_the_inner_product():
  _, a = _init(lambda r: MLP(8, [16, 16], 3, rngs=r), seed=0)
  _, b = _init(lambda r: MLP(8, [16, 16], 3, rngs=r), seed=1)
  spec = merge.mlp_spec(a.params)
  aligned = merge.apply_permutation(spec, merge.weight_matching(jax.random.key(0), spec, a.params, b.params), b.params)
  inner = lambda p, q: sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q)))
  assert inner(a.params, aligned) > inner(a.params, b.params)


def test_activation_matching_recovers_the_permutation_from_captured_inputs():
  graphdef, state = _init(lambda r: MLP(8, [12, 10], 3, rngs=r))
  spec = merge.mlp_spec(state.params)
  perms = merge.random_permutation(jax.random.key(5), spec, state.params)
  permuted = merge.apply_permutation(spec, perms, state.params)
  x = jax.random.normal(jax.random.key(1), (256, 8))

  @jax.jit
  def acts(p):  # input of layer l+1 carries the permutation of hidden layer l
    _, io = merge.capture_layer_io(graphdef, p, x)
    return {"hidden/0": io["hidden/1"][0], "hidden/1": io["head"][0]}

  found = merge.activation_matching(spec, acts(state.params), acts(permuted))
  np.testing.assert_allclose(merge.apply_permutation(spec, found, permuted)["hidden"][1]["kernel"],
                             state.params["hidden"][1]["kernel"])


def test_invert_permutation_undoes_it():
  _, state = _init(lambda r: MLP(8, [6], 3, rngs=r))
  spec = merge.mlp_spec(state.params)
  perms = merge.random_permutation(jax.random.key(0), spec, state.params)
  back = merge.apply_permutation(spec, merge.invert_permutation(perms), merge.apply_permutation(spec, perms, state.params))
  assert _max_diff(back, state.params) == 0.0


@functools.cache  # one pair for the seven tests below (read-only: no test writes into these trees)
def _two_models():
  graphdef, a = _init(lambda r: MLP(8, [16, 16], 3, rngs=r), seed=0)
  _, b = _init(lambda r: MLP(8, [16, 16], 3, rngs=r), seed=1)
  return graphdef, a.params, b.params, jax.random.normal(jax.random.key(7), (128, 8))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_repair_at_an_endpoint_is_the_identity(alpha):
  graphdef, pa, pb, x = _two_models()
  end = pa if alpha == 0.0 else pb
  repaired = merge.repair(graphdef, end, pa, pb, alpha, x)
  assert _max_diff(repaired, end) < 1e-4


@pytest.mark.parametrize("mode", ["both", "rescale", "reshift"])
def test_repair_matches_the_interpolated_statistics(mode):
  graphdef, pa, pb, x = _two_models()
  merged = merge.interpolate(pa, pb, 0.5)
  repaired = merge.repair(graphdef, merged, pa, pb, 0.5, x, mode=mode)
  capture = jax.jit(lambda p: merge.capture_layer_io(graphdef, p, x)[1])
  io = {k: capture(p) for k, p in (("a", pa), ("b", pb), ("m", merged),
                                                                   ("r", repaired))}
  for layer in ("hidden/0", "hidden/1"):
    stats = {k: (v[layer][1].mean(0), v[layer][1].std(0)) for k, v in io.items()}
    mu_t = 0.5 * (stats["a"][0] + stats["b"][0])
    sd_t = 0.5 * (stats["a"][1] + stats["b"][1])
    want_mu = mu_t if mode != "rescale" else None
    want_sd = sd_t if mode != "reshift" else stats["m"][1] if layer == "hidden/0" else None
    if want_mu is not None:
      np.testing.assert_allclose(stats["r"][0], want_mu, atol=1e-4)
    if want_sd is not None:
      np.testing.assert_allclose(stats["r"][1], want_sd, atol=1e-4, rtol=1e-4)
  np.testing.assert_array_equal(repaired["head"]["kernel"], merged["head"]["kernel"])


def test_repair_is_a_no_op_when_statistics_already_match():
  graphdef, pa, _, x = _two_models()
  assert _max_diff(merge.repair(graphdef, pa, pa, pa, 0.3, x), pa) < 1e-4


def test_errors_name_the_problem():
  graphdef, pa, pb, x = _two_models()
  spec = merge.mlp_spec(pa)
  with pytest.raises(ValueError, match="does not list"):
    merge.weight_matching(0, merge.permutation_spec({"hidden/0/kernel": (None, "p")}), pa, pb)
  bad = jax.tree.map(lambda v: v, pb)
  bad["hidden"][0]["kernel"] = jnp.zeros((8, 5))
  with pytest.raises(ValueError, match="hidden/0/kernel"):
    merge.weight_matching(0, spec, pa, bad)
  with pytest.raises(ValueError, match="max_iter"):
    merge.weight_matching(0, spec, pa, pb, max_iter=0)
  with pytest.raises(ValueError, match="mode"):
    merge.repair(graphdef, pa, pa, pb, 0.5, x, mode="scale")
  with pytest.raises(ValueError, match="alpha"):
    merge.repair(graphdef, pa, pa, pb, 1.5, x)
  with pytest.raises(ValueError, match="mlp_spec"):
    merge.mlp_spec({"w": jnp.zeros(3)})
  with pytest.raises(ValueError, match="missing"):
    merge.activation_matching(spec, {}, {})


def test_nnx_state_params_work_like_plain_dicts():
  from flax import nnx
  model = MLP(8, [6, 5], 3, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  spec = merge.mlp_spec(params)
  perms = merge.random_permutation(jax.random.key(0), spec, params)
  permuted = merge.apply_permutation(spec, perms, params)
  assert isinstance(permuted, nnx.State)
  x = jnp.ones((2, 8))
  np.testing.assert_allclose(nnx.merge(graphdef, permuted)(x), model(x), atol=1e-5)
  found = merge.weight_matching(0, spec, params, permuted)
  assert _max_diff(merge.apply_permutation(spec, found, permuted), params) == 0.0
  repaired = merge.repair(graphdef, params, params, permuted, 0.5, jax.random.normal(jax.random.key(1), (16, 8)))
  assert isinstance(repaired, nnx.State)
  grams = merge.gram_matrices(graphdef, params, x)
  assert isinstance(merge.regmean_merge([params, permuted], [grams, grams]), nnx.State)
