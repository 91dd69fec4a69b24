"""Lingle's muP transformer preset (Lingle, "A Large-Scale Exploration of mu-Transfer", arXiv:2404.05728, catalogue
[412]): paperlab.param.mup_transformer / mup_transformer_init / mup_transformer_config. The parity of its LR
multipliers and init stds with the ``mup`` package is tests/parity/test_param_mup_transformer.py."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import param
from paperlab.models import CharTransformer

VOCAB = 20


@functools.lru_cache(maxsize=None)
def shapes(d: int):
  return nnx.eval_shape(lambda: CharTransformer(VOCAB, d, 2, 4, 8, rngs=nnx.Rngs(0)))


def rules(**flags):
  return param.mup_transformer(shapes(64), shapes(16), **flags).parametrization.rules


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([8, 16, 32]), st.sampled_from([1, 2, 4, 8]))
def test_hidden_lr_is_base_over_width_and_embedding_lr_is_eta(base, ratio):
  width = base * ratio
  delta = None if ratio > 1 else shapes(2 * base)
  r = param.mup_transformer(shapes(width), shapes(base), delta=delta).parametrization.rules
  assert r["blocks/0/attn/qkv/kernel"].lr_multiplier == pytest.approx(base / width)
  assert r["blocks/1/fc1/kernel"].lr_multiplier == pytest.approx(base / width)
  assert r["blocks/1/fc2/kernel"].lr_multiplier == pytest.approx(base / width)  # fan-in 4w over 4 base
  assert r["embed/embedding"].lr_multiplier == 1.0 and r["pos"].lr_multiplier == 1.0
  assert r["head/kernel"].init_std == 0.0 and r["head/kernel"].multiplier == pytest.approx(base / width)


def test_trainable_gains_changes_only_the_norm_scales_lr():
  fixed, trained = rules(trainable_gains=False), rules(trainable_gains=True)
  changed = {p for p in fixed if fixed[p] != trained[p]}
  assert changed == {p for p in fixed if p.endswith("scale")} and len(changed) == 5  # ln1, ln2 x 2 blocks, ln_f
  for p in changed:
    assert fixed[p].lr_multiplier == 0.0 and trained[p].lr_multiplier == 1.0
    assert dataclasses.replace(fixed[p], lr_multiplier=1.0) == trained[p]


def test_zero_readout_changes_only_the_readout_init():
  a, b = rules(zero_readout=True), rules(zero_readout=False)
  assert {p for p in a if a[p] != b[p]} == {"head/kernel"}
  assert a["head/kernel"].init_std == 0.0 and b["head/kernel"].init_std > 0


def test_attn_scale_flag_sets_the_models_logit_scaling_and_nothing_else():
  a = param.mup_transformer(shapes(64), shapes(16), attn_scale="1/d_head")
  b = param.mup_transformer(shapes(64), shapes(16), attn_scale="1/sqrt(d_head)")
  assert a.parametrization == b.parametrization and (a.attn_scale, b.attn_scale) == ("mup", "sqrt")
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 8)), jnp.int32)
  d_head = 64 // 4
  for preset, scale in ((a, 1.0 / d_head), (b, 1.0 / np.sqrt(d_head))):
    got = CharTransformer(VOCAB, 64, 2, 4, 8, attn_scale=preset.attn_scale, rngs=nnx.Rngs(1))(tokens)
    want = CharTransformer(VOCAB, 64, 2, 4, 8, attn_scale=float(scale), rngs=nnx.Rngs(1))(tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_init_zeroes_exactly_the_query_columns_and_is_jittable():
  params = param.param_shapes(shapes(64))
  on = param.mup_transformer(shapes(64), shapes(16))
  off = param.mup_transformer(shapes(64), shapes(16), zero_query=False)
  key = jax.random.key(0)
  got = jax.jit(lambda k: param.mup_transformer_init(k, params, on))(key)
  ref = param.init_params(key, params, off.parametrization)
  for i in (0, 1):
    qkv, qkv_ref = got["blocks"][i]["attn"]["qkv"]["kernel"], ref["blocks"][i]["attn"]["qkv"]["kernel"]
    assert qkv.dtype == jnp.float32
    assert not np.any(np.asarray(qkv[:, :64]))
    np.testing.assert_allclose(np.asarray(qkv[:, 64:]), np.asarray(qkv_ref[:, 64:]), rtol=1e-6, atol=1e-7)
    assert float(jnp.std(qkv_ref[:, :64])) == pytest.approx(1 / np.sqrt(64), rel=0.1)
  for (pa, a), (pb, b) in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves_with_path(ref)):
    if "qkv" not in jax.tree_util.keystr(pa):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_config_preset_is_the_papers_recipe_and_feeds_the_preset():
  c = param.mup_transformer_config()
  assert dict(c.mup) == {"trainable_gains": False, "attn_scale": "1/d_head", "zero_query": True,
                         "zero_readout": True, "learning_rate": 2.0 ** -8}
  c = param.mup_transformer_config(**{"mup.trainable_gains": True, "model.d_model": 64})
  assert c.mup.trainable_gains is True and c.model.d_model == 64
  preset = param.mup_transformer(shapes(64), shapes(16), **c.mup)
  assert preset.parametrization.rules["ln_f/scale"].lr_multiplier == 1.0


@pytest.mark.parametrize("kwargs,match", [
    ({"attn_scale": "sqrt"}, "attn_scale must be one of"),
    ({"attn_scale": 0.25}, "attn_scale must be one of"),
    ({"trainable_gains": 1}, "trainable_gains must be True or False"),
    ({"zero_query": "yes"}, "zero_query must be True or False"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"qkv": r"nope$"}, "qkv="),
])
def test_bad_flags_raise_naming_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    param.mup_transformer(shapes(64), shapes(16), **kwargs)


def test_bad_config_overrides_raise():
  with pytest.raises(ValueError, match="attn_scale must be one of"):
    param.mup_transformer_config(**{"mup.attn_scale": "1/d"})
  with pytest.raises(ValueError, match="unknown key 'mup.trainable_gain'"):
    param.mup_transformer_config(**{"mup.trainable_gain": True})
