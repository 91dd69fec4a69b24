"""Cerebras-GPT's muP preset (Dey et al., arXiv:2304.03208, catalogue [292]): paperlab.param.cerebras_gpt_mup."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import param
from paperlab.models import CharTransformer

VOCAB = 50


@functools.lru_cache(maxsize=None)
def transformer(d_model: int):
  return nnx.eval_shape(lambda: CharTransformer(VOCAB, d_model=d_model, num_layers=1, num_heads=4, seq_len=16,
                                                rngs=nnx.Rngs(0)))


def sp_reference(model, eta, sigma):
  """The standard parametrization written out from the shapes: every weight matrix N(0, sigma^2), biases 0, norm
  scales 1, one learning rate eta, no multipliers."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(param.param_shapes(model))[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[name] = {"std": sigma if len(leaf.shape) >= 2 else 0.0, "mean": 1.0 if name.endswith("scale") else 0.0,
                 "mult": 1.0, "lr": eta}
  return out


def table(preset):
  lr = preset.learning_rate
  return {p: {"std": r.init_std, "mean": r.init_mean, "mult": r.multiplier, "lr": lr * r.lr_multiplier}
          for p, r in preset.parametrization.rules.items()}


def test_at_the_base_width_the_preset_is_sp_with_the_papers_eta_and_sigma():
  base, other = transformer(256), transformer(512)  # `other` marks the width dimensions (parametrize's delta)
  preset = param.cerebras_gpt_mup(base, base, delta=other, embedding_mult=1.0)
  assert table(preset) == sp_reference(base, 6e-3, 0.08)  # exactly, every leaf
  # with the paper's embedding multiplier 10 only the embeddings' forward multiplier differs
  got = table(param.cerebras_gpt_mup(base, base, delta=other))
  want = sp_reference(base, 6e-3, 0.08)
  for path in ("embed/embedding", "pos"):
    want[path]["mult"] = 10.0
  assert got == want


def test_at_d_model_2048_the_preset_gives_the_stated_stds_and_learning_rates():
  preset = param.cerebras_gpt_mup(transformer(2048), transformer(256))
  t = table(preset)
  m_d = 2048 / 256
  for path in ("blocks/0/attn/qkv/kernel", "blocks/0/attn/out/kernel", "blocks/0/fc1/kernel", "blocks/0/fc2/kernel"):
    assert t[path] == {"std": pytest.approx(0.08 / math.sqrt(m_d), rel=1e-12), "mean": 0.0, "mult": 1.0,
                       "lr": pytest.approx(6e-3 / m_d, rel=1e-12)}, path
  assert t["head/kernel"] == {"std": 0.08, "mean": 0.0, "mult": pytest.approx(1 / m_d, rel=1e-12), "lr": 6e-3}
  assert t["embed/embedding"] == {"std": 0.08, "mean": 0.0, "mult": 10.0, "lr": 6e-3}
  assert t["blocks/0/fc1/bias"] == {"std": 0.0, "mean": 0.0, "mult": 1.0, "lr": 6e-3}
  assert t["ln_f/scale"] == {"std": 0.0, "mean": 1.0, "mult": 1.0, "lr": 6e-3}
  assert preset.learning_rate == 6e-3 and preset.attn_scale == "mup"
  assert param.CEREBRAS_GPT_MUP == {"eta_base": 6e-3, "sigma_base": 0.08, "embedding_mult": 10.0,
                                    "base_d_model": 256}


@settings(max_examples=10, deadline=None)
@given(k=st.sampled_from([1, 2, 4, 8]), eta=st.floats(1e-4, 1e-1), sigma=st.floats(1e-3, 1.0),
       emb=st.floats(0.1, 100.0))
def test_width_factors_follow_m_d(k, eta, sigma, emb):
  preset = param.cerebras_gpt_mup(transformer(256 * k), transformer(256), delta=transformer(512), eta_base=eta,
                                  sigma_base=sigma, embedding_mult=emb)
  for path, r in preset.parametrization.rules.items():
    if r.role == "hidden":
      assert r.init_std * math.sqrt(k) == pytest.approx(sigma, rel=1e-12)
      assert r.lr_multiplier * k == pytest.approx(1.0, rel=1e-12)
    elif r.role == "output":
      assert (r.init_std, r.lr_multiplier) == (sigma, 1.0) and r.multiplier * k == pytest.approx(1.0, rel=1e-12)
    elif r.role in ("embedding", "input"):
      assert (r.init_std, r.multiplier, r.lr_multiplier) == (sigma, emb, 1.0), path


def test_jitted_init_draws_the_preset_stds():
  model = transformer(1024)
  preset = param.cerebras_gpt_mup(model, transformer(256))
  shapes = param.param_shapes(model)
  params = jax.jit(lambda key: param.init_params(key, shapes, preset.parametrization))(jax.random.key(0))
  qkv = np.asarray(params["blocks"][0]["attn"]["qkv"]["kernel"])  # 1024 x 3072 draws
  assert qkv.std() == pytest.approx(0.08 / 2.0, rel=0.01)
  assert np.asarray(params["head"]["kernel"]).std() == pytest.approx(0.08, rel=0.02)
  assert np.all(np.asarray(params["ln_f"]["scale"]) == 1.0)


@pytest.mark.parametrize("kwargs, name", [({"eta_base": 0.0}, "eta_base"), ({"sigma_base": -0.08}, "sigma_base"),
                                          ({"embedding_mult": 0.0}, "embedding_mult")])
def test_rejects_non_positive_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    param.cerebras_gpt_mup(transformer(512), transformer(256), **kwargs)


def test_base_shapes_without_delta_are_rejected():
  with pytest.raises(ValueError, match="delta"):
    param.cerebras_gpt_mup(transformer(256), transformer(256))
