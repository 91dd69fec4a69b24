"""Re-basin of transformer blocks: attention heads, head dimensions, MLP units and the residual stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import merge
from paperlab.models import CharTransformer
from paperlab.train import make_init

HEADS = 4


def _transformer(qk_layernorm=False, seed=0):
  graphdef, init = make_init(lambda r: CharTransformer(11, 16, 2, HEADS, 6, qk_layernorm=qk_layernorm, rngs=r),
                             optax.sgd(0.1))
  # Generic parameters drawn on the host, with the model's tree and shapes: N(0, 0.5^2) everywhere, LayerNorm
  # scales around 1. Every leaf is nonzero and distinct, so each permutation really moves values (an init leaves
  # biases at 0 and scales at 1), and no XLA program is compiled for it (jitting the init and a per-leaf
  # perturbation cost ~15 CPU-s per model).
  shapes = jax.eval_shape(init, jax.random.key(0)).params
  rng = np.random.default_rng(seed)
  def draw(path, s):
    return jnp.asarray(float(jax.tree_util.keystr(path).endswith("['scale']")) + 0.5 * rng.standard_normal(s.shape),
                       s.dtype)
  return graphdef, jax.tree_util.tree_map_with_path(draw, shapes)


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_permuting_heads_and_head_dims_keeps_the_transformer_function(qk_layernorm):
  graphdef, params = _transformer(qk_layernorm)
  spec = merge.transformer_spec(params, num_heads=HEADS)
  perms = merge.random_permutation(jax.random.key(3), spec, params)
  assert not np.array_equal(perms["blocks/0/heads"], np.arange(HEADS))
  v = np.asarray(perms["blocks/0/v"])
  assert v.shape == (HEADS, 4) and len({tuple(r) for r in v}) > 1  # one permutation per head
  assert np.shape(perms["blocks/0/qk"]) == ((4,) if qk_layernorm else (HEADS, 4))
  permuted = jax.jit(lambda p, q: merge.apply_permutation(spec, q, p))(params, perms)
  x = jax.random.randint(jax.random.key(1), (3, 6), 0, 11)
  apply = jax.jit(merge.model_apply(graphdef))
  assert _max_diff(params, permuted) > 0.1
  np.testing.assert_allclose(apply(permuted, x), apply(params, x), atol=1e-5)


def test_q_and_k_need_the_same_head_dim_permutation():
  graphdef, params = _transformer()
  spec = merge.transformer_spec(params, num_heads=HEADS)
  grid = (HEADS, 4)
  broken = dict(spec.axes_to_perm)
  broken["blocks/0/attn/qkv/kernel"] = (
      "residual", merge.AxisBlocks((grid,) * 3, (("blocks/0/heads", "blocks/0/qk"), ("blocks/0/heads", None),
                                                 ("blocks/0/heads", "blocks/0/v"))))
  broken = merge.permutation_spec(broken, spec.groups)
  perms = merge.random_permutation(jax.random.key(3), spec, params)
  x = jax.random.randint(jax.random.key(1), (3, 6), 0, 11)
  apply = jax.jit(merge.model_apply(graphdef))
  assert float(jnp.abs(apply(merge.apply_permutation(broken, perms, params), x) - apply(params, x)).max()) > 1e-3


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_weight_matching_recovers_a_planted_transformer_permutation(qk_layernorm):
  _, params = _transformer(qk_layernorm)
  spec = merge.transformer_spec(params, num_heads=HEADS)
  perms = merge.random_permutation(jax.random.key(5), spec, params)
  permuted = merge.apply_permutation(spec, perms, params)
  found = merge.weight_matching(0, spec, params, permuted, init="anchored")
  assert _max_diff(merge.apply_permutation(spec, found, permuted), params) == 0.0
  for p, v in merge.invert_permutation(perms, spec).items():
    np.testing.assert_array_equal(found[p], v)


def test_weight_matching_of_two_transformers_increases_their_inner_product():
  _, a = _transformer(seed=0)
  _, b = _transformer(seed=1)
  spec = merge.transformer_spec(a, num_heads=HEADS)
  aligned = merge.apply_permutation(spec, merge.weight_matching(0, spec, a, b), b)
  inner = lambda p, q: sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q)))
  assert inner(a, aligned) > inner(a, b)
  # heads matched jointly beat the same spec with the attention left unpermuted
  plain = merge.transformer_spec(a)
  aligned_plain = merge.apply_permutation(plain, merge.weight_matching(0, plain, a, b), b)
  assert inner(a, aligned) > inner(a, aligned_plain)


def test_anchored_init_solves_the_residual_stream_from_the_embeddings_first():
  # from identity starts, coordinate descent can stall when the residual permutation is first solved against
  # still-unaligned attention/MLP weights; the anchored start solves it from embeddings, norms and head first
  _, params = _transformer(seed=1)
  spec = merge.transformer_spec(params, num_heads=HEADS)
  perms = merge.random_permutation(jax.random.key(2), spec, params)
  permuted = merge.apply_permutation(spec, perms, params)
  found = merge.weight_matching(0, spec, params, permuted, init="anchored", max_iter=1)
  np.testing.assert_array_equal(found["residual"], merge.invert_permutation(perms, spec)["residual"])
  with pytest.raises(ValueError, match="init"):
    merge.weight_matching(0, spec, params, permuted, init="greedy")


def test_grouped_permutation_errors():
  _, params = _transformer()
  spec = merge.transformer_spec(params, num_heads=HEADS)
  grid = (2, 3)
  with pytest.raises(ValueError, match="only act inside AxisBlocks"):
    merge.permutation_spec({"w": ("q",), "u": (merge.AxisBlocks((grid,), (("p", "q"),)),)}, {"q": "p"})
  with pytest.raises(ValueError, match="must follow its parent"):
    merge.permutation_spec({"w": (merge.AxisBlocks((grid,), (("q", "p"),)),)}, {"q": "p"})
  with pytest.raises(ValueError, match="act on no axis"):
    merge.permutation_spec({"w": ("p",)}, {"q": "p"})
  with pytest.raises(ValueError, match="one permutation entry per sub-axis"):
    merge.permutation_spec({"w": (merge.AxisBlocks((grid,), (("p",),)),)})
  with pytest.raises(ValueError, match="cover 6 units"):
    merge.apply_permutation(merge.permutation_spec({"w": (merge.AxisBlocks((grid,), (("p", None),)),)}),
                            {"p": jnp.arange(2)}, {"w": jnp.zeros(7)})
  perms = merge.random_permutation(jax.random.key(0), spec, params)
  with pytest.raises(ValueError, match="pass spec="):
    merge.invert_permutation(perms)
  with pytest.raises(ValueError, match="ungrouped"):
    merge.activation_matching(spec, {}, {})
  with pytest.raises(ValueError, match="num_heads"):
    merge.transformer_spec(params, num_heads=3)


def test_activation_matching_recovers_residual_and_mlp_permutations_of_a_transformer():
  graphdef, params = _transformer()
  spec = merge.transformer_spec(params)  # heads unpermuted: activation matching handles ungrouped permutations
  perms = merge.random_permutation(jax.random.key(4), spec, params)
  permuted = merge.apply_permutation(spec, perms, params)
  x = jax.random.randint(jax.random.key(1), (16, 6), 0, 11)

  @jax.jit
  def acts(p):  # the head's input is the (normalized) residual stream; fc2's input carries the MLP units
    _, io = merge.capture_layer_io(graphdef, p, x)
    return {"residual": io["head"][0], "blocks/0/mlp": io["blocks/0/fc2"][0], "blocks/1/mlp": io["blocks/1/fc2"][0]}

  found = merge.activation_matching(spec, acts(params), acts(permuted))
  for p, v in merge.invert_permutation(perms).items():
    np.testing.assert_array_equal(found[p], v)
