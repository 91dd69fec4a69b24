"""paperlab.models: forward passes under jit, options, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab.models import CNN, MLP, CharTransformer


def _jit_forward(model, x):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_mlp_forward_under_jit(norm):
  m = MLP(64, [32, 16], 10, norm=norm, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (5, 64))
  out = _jit_forward(m, x)
  assert out.shape == (5, 10) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, m(x), rtol=1e-5, atol=1e-6)


def test_mlp_bias_switch_and_width():
  m = MLP(8, [4], 3, use_bias=False, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
  assert "bias" not in params["head"] and params["hidden"][0]["kernel"].shape == (8, 4)


def test_layernorm_makes_hidden_kernel_scale_invariant():
  m = MLP(6, [5], 3, norm="layer", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (4, 6))
  before = m(x)
  m.hidden[0].kernel.value = m.hidden[0].kernel.value * 7.0
  m.hidden[0].bias.value = m.hidden[0].bias.value * 7.0
  np.testing.assert_allclose(m(x), before, rtol=1e-4, atol=1e-5)


def test_cnn_forward_and_batchnorm_modes():
  m = CNN(1, (4, 8), 10, norm="batch", rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  assert _jit_forward(m, x).shape == (3, 10)
  m.eval()
  a = m(x[:1])
  m.eval()
  np.testing.assert_allclose(m(x)[:1], a, rtol=1e-5)  # eval mode: no batch dependence


def test_transformer_is_causal_and_options_work():
  t = CharTransformer(20, 16, 2, 2, 12, qk_layernorm=True, tied_embeddings=True, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 20)
  logits = _jit_forward(t, tokens)
  assert logits.shape == (2, 12, 20)
  changed = tokens.at[:, 8].set((tokens[:, 8] + 1) % 20)
  np.testing.assert_allclose(t(changed)[:, :8], logits[:, :8], rtol=1e-5, atol=1e-6)
  assert not np.allclose(t(changed)[:, 8:], logits[:, 8:])
  untied = CharTransformer(20, 16, 2, 2, 12, qk_layernorm=True, rngs=nnx.Rngs(0))
  n = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  assert n(untied) - n(t) == 16 * 20  # the separate head


@pytest.mark.parametrize("kwargs,match", [
    ({"activation": "swishy"}, "activation must be one of"),
    ({"norm": "group"}, "norm must be one of"),
])
def test_unknown_model_option_names_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MLP(4, [4], 2, rngs=nnx.Rngs(0), **kwargs)


def test_wrong_batch_shape_names_x():
  m = MLP(64, [8], 10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"x must have shape \(batch, 64\)"):
    m(jnp.ones((4, 63)))
  with pytest.raises(ValueError, match="x must have shape"):
    CNN(rngs=nnx.Rngs(0))(jnp.ones((4, 64)))
  t = CharTransformer(10, 8, 1, 2, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="tokens must have shape"):
    t(jnp.ones((2, 5), jnp.int32))
  with pytest.raises(TypeError, match="integer"):
    t(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="num_heads"):
    CharTransformer(10, 10, 1, 3, 4, rngs=nnx.Rngs(0))
