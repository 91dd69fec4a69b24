"""AWQ (arXiv:2306.00978): the scale grid, the clip search, folding, the model walk and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import models
from paperlab.quant import awq, rtn


def _layer(seed=0, n_in=64, n_out=32, tokens=256):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(k1, (tokens, n_in)) * jnp.where(jnp.arange(n_in) % 16 == 5, 15.0, 1.0)
  return 0.1 * jax.random.normal(k2, (n_in, n_out)), x


def test_alpha_zero_without_clipping_is_rtn():
  w, x = _layer()
  a = awq.awq_layer(w, x, bits=3, group_size=16, n_grid=1, clip=False)  # the grid {0}: s = 1
  assert float(a.alpha) == 0.0
  np.testing.assert_array_equal(a.input_scale, jnp.ones(64))
  np.testing.assert_array_equal(a.w_hat, rtn.quantize_rtn(w, bits=3, group_size=16).w_hat)


def test_scale_search_picks_the_smallest_loss_on_the_official_grid():
  w, x = _layer(1)
  s, alpha, losses = awq.awq_search_scale(w, x, bits=3, group_size=16)
  assert losses.shape == (20,) and float(losses.min()) <= float(losses[0])
  assert float(alpha) == pytest.approx(int(jnp.argmin(losses)) / 20)
  x_mean = jnp.mean(jnp.abs(x), 0)
  ref = jnp.maximum(x_mean ** alpha, 1e-4)
  np.testing.assert_allclose(s, ref / jnp.sqrt(ref.max() * ref.min()), rtol=1e-5)
  assert float(alpha) > 0  # outlier channels: protecting them pays


def test_clip_search_keeps_absmax_when_shrinking_is_off_and_never_grows_it():
  w, x = _layer(2)
  absmax = jnp.abs(w.reshape(4, 16, 32)).max(1)
  np.testing.assert_array_equal(awq.awq_clip(w, x, bits=3, group_size=16, max_shrink=0.0), absmax)
  c = awq.awq_clip(w, x, bits=3, group_size=16)
  assert np.all(np.asarray(c) <= np.asarray(absmax)) and np.all(np.asarray(c) >= 0.55 * np.asarray(absmax) - 1e-6)


def test_folding_the_scale_into_the_previous_layernorm_keeps_the_function():
  model = models.CharTransformer(12, 32, 1, 4, 8, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 12)
  graphdef, state = nnx.split(model)
  s = jnp.exp(jax.random.normal(jax.random.key(2), (32,)))
  folded = awq.fold_scale(state, "blocks/0/ln2", "blocks/0/fc1", s)
  forward = jax.jit(lambda st: nnx.merge(graphdef, st)(tokens))
  np.testing.assert_allclose(forward(folded), forward(state), atol=1e-5)
  with pytest.raises(ValueError, match="neither a LayerNorm scale nor a Linear kernel"):
    awq.fold_scale(state, "blocks/0/nope", "blocks/0/fc1", s)


def test_awq_model_quantizes_every_block_layer_and_skips_clipping_qkv():
  model = models.CharTransformer(12, 32, 1, 4, 8, rngs=nnx.Rngs(0))
  batches = [jax.random.randint(jax.random.key(i), (4, 8), 0, 12) for i in range(2)]
  qmodel, results = awq.awq_model(model, batches, bits=4, group_size=16, include=r"^blocks/")
  assert set(results) == {"blocks/0/attn/qkv", "blocks/0/attn/out", "blocks/0/fc1", "blocks/0/fc2"}
  assert np.all(np.isinf(np.asarray(results["blocks/0/attn/qkv"].clip_max)))
  assert np.all(np.isfinite(np.asarray(results["blocks/0/fc1"].clip_max)))
  np.testing.assert_array_equal(qmodel.blocks[0].fc1.kernel[...], results["blocks/0/fc1"].w_hat)
  assert not np.array_equal(model.blocks[0].fc1.kernel[...], qmodel.blocks[0].fc1.kernel[...])  # copy, not mutated


def test_errors_name_the_argument():
  w, x = _layer()
  with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 64\)"):
    awq.awq_layer(w, x[:, :32])
  with pytest.raises(ValueError, match="x must be finite"):
    awq.awq_layer(w, x.at[0, 0].set(jnp.nan), group_size=16)
  with pytest.raises(ValueError, match="group_size=24 must divide"):
    awq.awq_layer(w, x, group_size=24)
  with pytest.raises(ValueError, match="bits must be one of"):
    awq.awq_layer(w, x, bits=9, group_size=16)
  with pytest.raises(ValueError, match="max_shrink"):
    awq.awq_clip(w, x, group_size=16, max_shrink=1.0)
  with pytest.raises(ValueError, match="n_grid"):
    awq.awq_search_scale(w, x, group_size=16, n_grid=0)
