"""DAM (arXiv:2410.08371): one-hot coefficients give model i, 1/N the simple average, finite gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def _models(n=3):
  rng = np.random.default_rng(0)
  return [{"k": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=(3,)),
                                                                                      jnp.float32)}
          for _ in range(n)]


def test_one_hot_returns_model_and_uniform_is_average():
  ms = _models()
  c = merge.dam_init(ms)
  assert c["k"].shape == (3, 4) and c["b"].shape == (3, 3)
  avg = merge.uniform_average(ms)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), merge.dam_apply(ms, c), avg)
  one = jax.tree.map(lambda x: jnp.zeros_like(x).at[1].set(1.0), c)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jax.jit(merge.dam_apply)(ms, one), ms[1])


def test_per_input_scaling_and_finite_grads():
  ms = _models()
  c = merge.dam_init(ms, 0.0)
  c = {"k": c["k"].at[0, 2].set(2.0), "b": c["b"]}
  out = merge.dam_apply(ms, c)
  np.testing.assert_allclose(out["k"][2], 2.0 * ms[0]["k"][2], rtol=1e-6)
  np.testing.assert_allclose(out["k"][:2], 0.0)
  x = [jnp.ones((5, 4)) * i for i in range(3)]
  apply_fn = lambda p, xb, i: xb @ p["k"] + p["b"]
  g = jax.grad(lambda c_: merge.dam_loss(apply_fn, ms, c_, x, 2.0, cosine_weight=0.1, l2_weight=0.1))(
      merge.dam_init(ms))
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))
  # the experts distilled into themselves: one-hot coefficients on a single model give zero KL for that model
  one = jax.tree.map(lambda v: jnp.zeros_like(v).at[0].set(1.0), merge.dam_init(ms))
  np.testing.assert_allclose(merge.dam_loss(apply_fn, ms[:1], jax.tree.map(lambda v: v[:1], one), x[:1]), 0.0,
                             atol=1e-6)


def test_validation():
  ms = _models()
  with pytest.raises(ValueError, match="models"):
    merge.dam_init([])
  with pytest.raises(ValueError, match="granularity"):
    merge.dam_init(ms, granularity="column")
  with pytest.raises(ValueError, match="temperature"):
    merge.dam_loss(lambda p, x, i: x, ms, merge.dam_init(ms), [jnp.ones((1, 4))] * 3, 0.0)
