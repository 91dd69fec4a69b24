"""Weight subcloning (Samragh et al., arXiv:2312.09299): the catalogue's properties (identity at the teacher's
shapes; dropping ~5% of low-importance dimensions keeps the logits), consistent selection across layers, block
removal, the LayerNorm scaling, and errors. No official code is public: closed forms and properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import param
from paperlab.models import CharTransformer

VOCAB, SEQ = 12, 12


def _markov(key, n):
  logits = 3.0 * jax.random.normal(jax.random.key(123), (VOCAB, VOCAB))

  def one(k):
    k0, ks = jax.random.split(k)
    x0 = jax.random.randint(k0, (), 0, VOCAB)
    step = lambda x, kk: (jax.random.categorical(kk, logits[x]),) * 2
    return jnp.concatenate([x0[None], jax.lax.scan(step, x0, jax.random.split(ks, SEQ - 1))[1]])

  return jax.vmap(one)(jax.random.split(key, n))


def _load(model, params):
  graphdef, state, rest = nnx.split(model, nnx.Param, ...)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state, rest)


_forward = nnx.jit(lambda model, tokens: model(tokens))


def _student(d, layers, heads):
  return nnx.eval_shape(lambda: CharTransformer(VOCAB, d, layers, heads, SEQ, mlp_ratio=2, rngs=nnx.Rngs(1)))


def _shapes(d, layers, heads):
  return param.param_shapes(_student(d, layers, heads))


def _pure(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope="module")
def trained():
  """A 3-block teacher (d=32, 16 heads of size 2) with the residual stream of a pretrained transformer: a few
  dimensions carry most of the magnitude in every layer (Samragh et al., Sec. 3). Training one costs ~10 CPU-s,
  so the outlier dimensions are planted instead: the embedding, positional and block-output weights of residual
  dimension ``i`` are scaled by ``s_i = exp(z_i)``, ``z ~ N(0, 1)``."""
  s = np.exp(np.random.default_rng(0).normal(size=32)).astype(np.float32)

  @jax.jit  # one compiled program instead of one per eager op (the CPU budget)
  def build(key):
    params = _pure(CharTransformer(VOCAB, 32, 3, 16, SEQ, mlp_ratio=2, rngs=nnx.Rngs(key)))
    params["embed"]["embedding"] = params["embed"]["embedding"] * s
    params["pos"] = params["pos"] * s
    for block in params["blocks"].values():
      block["fc2"]["kernel"] = block["fc2"]["kernel"] * s
      block["attn"]["out"]["kernel"] = block["attn"]["out"]["kernel"] * s
    return params

  model = _load(_student(32, 3, 16), build(jax.random.key(0)))
  tokens = jax.jit(_markov, static_argnums=1)(jax.random.key(7), 16)
  return model, tokens, nnx.jit(param.transformer_importance)(model, tokens)


def _cosine(a, b):
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_subclone_at_the_teachers_shapes_is_the_teacher(trained):
  model, tokens, importance = trained
  out = param.subclone(_pure(model), param.param_shapes(model), importance, num_heads=16)
  for a, b in zip(jax.tree.leaves(_pure(model)), jax.tree.leaves(out)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(_forward(_load(model, out), tokens)), np.asarray(_forward(model, tokens)))


def test_dropping_low_importance_dims_keeps_the_logits(trained):
  # 32 -> 30 residual dims (6%), 16 -> 15 heads, 64 -> 60 FFN neurons: catalogue's "cosine > 0.9"
  model, tokens, importance = trained
  student = _student(30, 3, 15)
  cloned = param.subclone(_pure(model), param.param_shapes(student), importance, num_heads=16)
  kept = _cosine(_forward(_load(student, cloned), tokens), _forward(model, tokens))
  assert kept > 0.9
  # control: ranking by *lowest* importance (the same shapes) keeps the logits worse
  flipped = param.TransformerImportance(-importance.residual, -importance.ffn, -importance.heads)
  worst = param.subclone(_pure(model), param.param_shapes(student), flipped, num_heads=16)
  assert _cosine(_forward(_load(student, worst), tokens), _forward(model, tokens)) < kept


def test_selection_is_consistent_across_layers_and_heads_are_whole(trained):
  model, _, importance = trained
  teacher = _pure(model)
  student = _shapes(16, 2, 8)
  out = param.subclone(teacher, student, importance, num_heads=16, drop="middle")
  idx = np.sort(np.argsort(-np.asarray(importance.residual), kind="stable")[:16])
  scale = np.sqrt(32 / 16)
  np.testing.assert_array_equal(out["embed"]["embedding"], np.asarray(teacher["embed"]["embedding"])[:, idx])
  np.testing.assert_array_equal(out["pos"], np.asarray(teacher["pos"])[:, idx])
  np.testing.assert_array_equal(out["head"]["kernel"], np.asarray(teacher["head"]["kernel"])[idx])
  np.testing.assert_allclose(out["ln_f"]["scale"], np.asarray(teacher["ln_f"]["scale"])[idx] * scale, rtol=1e-6)
  np.testing.assert_array_equal(out["ln_f"]["bias"], np.asarray(teacher["ln_f"]["bias"])[idx])
  # "middle": a 2-block student keeps teacher blocks 0 and 2
  assert param.blocks_to_keep(3, 2, "middle") == (0, 2)
  for j, b in enumerate((0, 2)):
    s, t = out["blocks"][j], teacher["blocks"][b]
    ffn = np.sort(np.argsort(-np.asarray(importance.ffn[b]), kind="stable")[:32])
    heads = np.sort(np.argsort(-np.asarray(importance.heads[b]), kind="stable")[:8])
    np.testing.assert_allclose(s["ln1"]["scale"], np.asarray(t["ln1"]["scale"])[idx] * scale, rtol=1e-6)
    np.testing.assert_array_equal(s["fc1"]["kernel"], np.asarray(t["fc1"]["kernel"])[np.ix_(idx, ffn)])
    np.testing.assert_array_equal(s["fc1"]["bias"], np.asarray(t["fc1"]["bias"])[ffn])
    np.testing.assert_array_equal(s["fc2"]["kernel"], np.asarray(t["fc2"]["kernel"])[np.ix_(ffn, idx)])
    qkv = np.asarray(t["attn"]["qkv"]["kernel"]).reshape(32, 3, 16, 2)[idx][:, :, heads].reshape(16, 48)
    np.testing.assert_array_equal(s["attn"]["qkv"]["kernel"], qkv)
    out_k = np.asarray(t["attn"]["out"]["kernel"]).reshape(16, 2, 32)[heads][:, :, idx].reshape(16, 16)
    np.testing.assert_array_equal(s["attn"]["out"]["kernel"], out_k)
  unscaled = param.subclone(teacher, student, importance, num_heads=16, scale_norms=False)
  np.testing.assert_array_equal(unscaled["ln_f"]["scale"], np.asarray(teacher["ln_f"]["scale"])[idx])


def test_blocks_to_keep():
  assert param.blocks_to_keep(4, 2) == (0, 3)
  assert param.blocks_to_keep(5, 3) == (0, 1, 4)
  assert param.blocks_to_keep(4, 2, "last") == (0, 1)
  assert param.blocks_to_keep(4, 2, "first") == (2, 3)
  assert param.blocks_to_keep(4, 4) == (0, 1, 2, 3)
  with pytest.raises(ValueError, match="drop"):
    param.blocks_to_keep(4, 2, "random")
  with pytest.raises(ValueError, match="target_blocks"):
    param.blocks_to_keep(4, 5)


def test_neuron_importance_is_mean_abs_and_jits():
  x = jnp.arange(24.0).reshape(2, 3, 4) - 12.0
  np.testing.assert_allclose(jax.jit(param.neuron_importance)(x), np.abs(np.asarray(x)).mean(axis=(0, 1)))
  assert param.neuron_importance(x.astype(jnp.bfloat16)).dtype == jnp.float32
  with pytest.raises(ValueError, match="activations"):
    param.neuron_importance(jnp.ones(3))


def test_transformer_importance_shapes(trained):
  model, tokens, importance = trained
  assert importance.residual.shape == (32,) and importance.ffn.shape == (3, 64) and importance.heads.shape == (3, 16)
  assert all(bool(jnp.all(jnp.isfinite(x)) & jnp.all(x >= 0)) for x in importance)
  with pytest.raises(ValueError, match="blocks"):
    param.transformer_importance(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), tokens)


def test_subclone_errors(trained):
  model, _, importance = trained
  teacher = _pure(model)
  shapes = _shapes(16, 2, 8)
  with pytest.raises(ValueError, match="num_heads"):
    param.subclone(teacher, shapes, importance, num_heads=5)
  with pytest.raises(ValueError, match="whole heads"):  # head size 4: 7 heads of 2 are not whole
    param.subclone(teacher, _shapes(14, 2, 7), importance, num_heads=8)
  bigger = _shapes(48, 2, 24)
  with pytest.raises(ValueError, match="width 48"):
    param.subclone(teacher, bigger, importance, num_heads=16)
  with pytest.raises(ValueError, match="importance.ffn"):
    param.subclone(teacher, shapes, importance._replace(ffn=importance.ffn[:2]), num_heads=16)
  with pytest.raises(ValueError, match="extra/kernel"):
    param.subclone({**teacher, "extra": {"kernel": jnp.ones((2, 2))}}, shapes, importance, num_heads=16)
  with pytest.raises(ValueError, match="keep_blocks"):
    param.subclone(teacher, shapes, importance, num_heads=16, keep_blocks=(0, 3))
