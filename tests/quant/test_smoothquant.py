"""SmoothQuant scales (parity with qwix's ``compute_scales_ratio``) and SmoothQuant+ weight-only quantization."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import models
from paperlab.quant import rtn, smoothquant


def test_scales_match_qwix_smooth_quant():
  sq = pytest.importorskip("qwix.contrib.smooth_quant")
  x = jnp.exp(jax.random.normal(jax.random.key(0), (32,)))
  w = jnp.exp(jax.random.normal(jax.random.key(1), (32,)))
  for alpha in (0.0, 0.5, 0.85, 1.0):
    np.testing.assert_allclose(smoothquant.smooth_scales(x, w, alpha), sq.compute_scales_ratio(x, w, alpha),
                               rtol=1e-5)


def test_smoothing_is_exact_before_quantization_and_reduces_outlier_error():
  k1, k2 = jax.random.split(jax.random.key(2))
  x = jax.random.normal(k1, (256, 64)) * jnp.where(jnp.arange(64) % 16 == 1, 20.0, 1.0)
  w = 0.1 * jax.random.normal(k2, (64, 32))
  s = smoothquant.smooth_scales(jnp.abs(x).max(0), jnp.abs(w).max(1), 0.5)
  np.testing.assert_allclose((x / s) @ (w * s[:, None]), x @ w, atol=1e-4)
  sw = smoothquant.smooth_quantize(w, jnp.abs(x).max(0), 0.5, bits=3, group_size=16)
  e_rtn = rtn.layer_output_error(x, w, rtn.quantize_rtn(w, bits=3, group_size=16).w_hat)
  assert rtn.layer_output_error(x, w, sw.w_hat) < e_rtn


def test_smoothquant_plus_picks_the_alpha_with_the_smallest_output_error():
  model = models.CharTransformer(12, 32, 1, 4, 8, rngs=nnx.Rngs(0))
  batches = [jax.random.randint(jax.random.key(i), (4, 8), 0, 12) for i in range(2)]
  qmodel, alpha, losses = smoothquant.smoothquant_plus(model, batches, bits=4, group_size=16, alphas=(0.0, 0.5, 1.0),
                                                       include=r"^blocks/")
  assert alpha == min(losses, key=losses.get) and set(losses) == {0.0, 0.5, 1.0}
  assert not np.array_equal(qmodel.blocks[0].fc1.kernel[...], model.blocks[0].fc1.kernel[...])


def test_errors():
  with pytest.raises(ValueError, match="alpha must lie in"):
    smoothquant.smooth_scales(jnp.ones(4), jnp.ones(4), 1.5)
  with pytest.raises(ValueError, match="same length"):
    smoothquant.smooth_scales(jnp.ones(4), jnp.ones(5), 0.5)
  with pytest.raises(ValueError, match="x_absmax must be finite"):
    smoothquant.smooth_quantize(jnp.ones((4, 2)), jnp.array([1.0, jnp.nan, 1.0, 1.0]), 0.5, group_size=None)
