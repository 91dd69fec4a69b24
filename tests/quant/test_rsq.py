"""RSQ (arXiv:2503.01820): the closed forms (r = 1 is GPTQ, the weighted Hessian is X^T diag(r) X, the rotation is
orthogonal and function-preserving), AttnCon importance, jit/vmap and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import models
from paperlab.quant import calibration, gptq, rsq


def _layer(seed: int, seqs: int = 4, tokens: int = 32, n_in: int = 32, n_out: int = 16):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  mix = jax.random.normal(k1, (n_in, n_in)) / np.sqrt(n_in) + jnp.eye(n_in)
  x = jax.random.normal(k2, (seqs, tokens, n_in)) @ mix
  return 0.1 * jax.random.normal(k3, (n_in, n_out)), x


KW = dict(bits=3, group_size=16, act_order=True, static_groups=True)  # one GPTQ configuration: one compile per shape


def test_uniform_token_weights_without_rotation_is_gptq_bit_for_bit():
  w, x = _layer(0)
  ours = rsq.rsq_layer(w, x, jnp.ones(x.shape[:-1]), **KW)
  ref = gptq.gptq_layer(w, gptq.hessian(x), **KW)
  np.testing.assert_array_equal(ours.w_hat, ref.w_hat)
  np.testing.assert_array_equal(ours.codes, ref.codes)


def test_weighted_hessian_is_explicit_xt_diag_r_x():
  _, x = _layer(1, seqs=2, tokens=8, n_in=8)
  r = jax.random.uniform(jax.random.key(2), (2, 8), minval=0.005, maxval=1.0)
  xf, rf = np.asarray(x, np.float64).reshape(-1, 8), np.asarray(r, np.float64)
  explicit = 2.0 / 16 * xf.T @ np.diag(rf.ravel()) @ xf
  np.testing.assert_allclose(rsq.weighted_hessian(x, r, normalize=False), explicit, rtol=1e-5, atol=1e-6)
  rn = (rf / rf.mean(axis=1, keepdims=True)).ravel()  # the official per-sequence rescaling to mean one
  np.testing.assert_allclose(rsq.weighted_hessian(x, r), 2.0 / 16 * xf.T @ np.diag(rn) @ xf, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(rsq.weighted_hessian(x, None), gptq.hessian(x))
  np.testing.assert_allclose(jax.jit(rsq.weighted_hessian)(x, r), rsq.weighted_hessian(x, r), rtol=1e-5, atol=1e-6)


def test_random_hadamard_is_orthogonal_and_the_rotation_preserves_the_layer():
  q = rsq.random_hadamard(32, jax.random.key(3))
  np.testing.assert_allclose(q.T @ q, np.eye(32), atol=1e-6)
  assert np.all(np.abs(np.abs(np.asarray(q)) - 1 / np.sqrt(32)) < 1e-7)  # a Hadamard matrix: every entry +-1/sqrt(n)
  w, x = _layer(4)
  np.testing.assert_allclose((x @ q) @ (q.T @ w), x @ w, atol=1e-4)  # before quantization nothing changes


def test_rotation_spreads_an_outlier_input_row():
  w, x = _layer(5)
  w = w.at[3].multiply(10.0)  # one input feature with large weights: a min-max grid wastes its range on it
  q = rsq.random_hadamard(32, jax.random.key(6))
  plain = rsq.rsq_layer(w, x, **KW)
  rotated = rsq.rsq_layer(w, x, rotation=q, **KW)
  err = lambda w_hat: float(jnp.sum((x @ (w_hat - w)) ** 2))
  assert err(rotated.w_hat) < err(plain.w_hat)
  assert rotated.codes.shape == w.shape and rotated.w_hat.dtype == w.dtype


def test_importance_weighting_lowers_the_importance_weighted_error():
  w, x = _layer(7)
  r = jnp.where(jnp.arange(32) < 4, 1.0, 0.005)[None].repeat(4, axis=0)  # the first tokens matter most
  weighted_err = lambda w_hat: float(jnp.sum(r[..., None] * (x @ (w_hat - w)) ** 2))
  assert weighted_err(rsq.rsq_layer(w, x, r, **KW).w_hat) < weighted_err(rsq.rsq_layer(w, x, **KW).w_hat)


def test_attention_concentration_sums_heads_and_queries_then_min_max_scales():
  p = jnp.array([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]]]])  # (1 seq, 1 head, 3 q, 3 k), causal
  p = jnp.concatenate([p, p], axis=1)  # two identical heads
  # received: [1.7, 0.7, 0.6] per head -> [3.4, 1.4, 1.2]; min-max onto [0.1, 1]
  np.testing.assert_allclose(rsq.token_importance(p, r_min=0.1),
                             [[1.0, 0.1 + 0.9 * 0.2 / 2.2, 0.1]], rtol=1e-6)
  np.testing.assert_array_equal(rsq.token_importance(p, kind="uniform"), np.ones((1, 3)))
  flat = jnp.full((1, 1, 2, 2), 0.5)
  np.testing.assert_array_equal(rsq.token_importance(flat), [[1.0, 1.0]])  # no spread: every token r_max
  stack = jnp.stack([p, 2 * p])
  np.testing.assert_allclose(jax.vmap(jax.jit(rsq.token_importance))(stack)[1], rsq.token_importance(2 * p),
                             rtol=1e-6)


def test_rsq_model_with_uniform_weights_matches_gptq_model():
  m = models.MLP(8, [16], 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(8), (64, 8))
  _, res = rsq.rsq_model(m, [x], bits=3)
  _, ref_res = gptq.gptq_model(m, [x], bits=3)
  for p in ref_res:
    np.testing.assert_allclose(res[p].w_hat, ref_res[p].w_hat, atol=1e-6)
  calls = []

  def weights(path, current):
    calls.append(path)
    return jnp.ones((4, 16))  # 64 rows seen as 4 sequences of 16 tokens

  _, rot_res = rsq.rsq_model(m, [x], token_weights=weights, rotate=True, key=jax.random.key(0), bits=3)
  assert calls == calibration.layer_order(m, x)  # called once per layer, in forward order
  for p in ref_res:  # quantized in another basis: another kernel, and no longer on the original grid
    assert not np.allclose(rot_res[p].w_hat, res[p].w_hat)


def test_errors_name_the_argument():
  w, x = _layer(9)
  p = jnp.ones((1, 1, 2, 2)) / 2
  with pytest.raises(ValueError, match="kind"):
    rsq.token_importance(p, kind="first_n")
  with pytest.raises(ValueError, match="r_min"):
    rsq.token_importance(p, r_min=0.5, r_max=0.1)
  with pytest.raises(ValueError, match="attn_probs"):
    rsq.token_importance(p[0])
  with pytest.raises(ValueError, match="r must have shape"):
    rsq.weighted_hessian(x, jnp.ones((4, 31)))
  with pytest.raises(ValueError, match="non-negative"):
    rsq.weighted_hessian(x, -jnp.ones(x.shape[:-1]))
  with pytest.raises(ValueError, match="power of two"):
    rsq.random_hadamard(48, jax.random.key(0))
  with pytest.raises(ValueError, match="rotation"):
    rsq.rsq_layer(w, x, rotation=jnp.eye(16))
  with pytest.raises(ValueError, match="x must have shape"):
    rsq.rsq_layer(w, x[..., :16])
  with pytest.raises(ValueError, match="key"):
    rsq.rsq_model(models.MLP(8, [16], 4, rngs=nnx.Rngs(0)), [jnp.ones((4, 8))], rotate=True)
  with pytest.raises(ValueError, match="one weight per captured input row"):
    rsq.rsq_model(models.MLP(8, [16], 4, rngs=nnx.Rngs(0)), [jnp.ones((4, 8))],
                  token_weights=lambda path, m: jnp.ones(5))
