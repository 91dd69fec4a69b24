"""GuidedQuant (arXiv:2505.07004): unit gradients with one group are GPTQ, the grouped Hessian is the explicit
saliency-weighted sum, the saliency is the squared output gradient, the guided solution has the lower guided
objective, jit, and the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import models
from paperlab.quant import gptq
from paperlab.quant import guidedquant as gq


def _layer(seed: int, n_in: int = 32, n_out: int = 16, tokens: int = 128):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  mix = jax.random.normal(k1, (n_in, n_in)) / np.sqrt(n_in) + jnp.eye(n_in)
  return 0.1 * jax.random.normal(k3, (n_in, n_out)), jax.random.normal(k2, (tokens, n_in)) @ mix


KW = dict(bits=3, group_size=16, act_order=True, static_groups=True)  # one GPTQ configuration: one compile per shape


def test_unit_gradients_in_one_group_are_gptq_bit_for_bit():
  w, x = _layer(0)
  ours = gq.guided_gptq_layer(w, gq.guided_hessian(x, jnp.ones((x.shape[0], 1))), **KW)
  ref = gptq.gptq_layer(w, gptq.hessian(x), **KW)
  np.testing.assert_array_equal(ours.w_hat, ref.w_hat)
  np.testing.assert_array_equal(ours.codes, ref.codes)


def test_guided_hessian_is_the_saliency_weighted_sum_per_group():
  _, x = _layer(1, n_in=8, tokens=16)
  s = jax.random.uniform(jax.random.key(2), (16, 3))
  xf, sf = np.asarray(x, np.float64), np.asarray(s, np.float64)
  explicit = np.stack([2.0 / 16 * xf.T @ np.diag(sf[:, g]) @ xf for g in range(3)])
  np.testing.assert_allclose(gq.guided_hessian(x, s), explicit, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(gq.guided_hessian)(x, s), explicit, rtol=1e-5, atol=1e-6)


def test_each_channel_group_is_gptq_with_its_own_hessian():
  w, x = _layer(3)
  h = gq.guided_hessian(x, jax.random.uniform(jax.random.key(4), (128, 2)) ** 4)
  q = gq.guided_gptq_layer(w, h, **KW)
  for g in range(2):
    ref = gptq.gptq_layer(w[:, 8 * g:8 * (g + 1)], h[g], **KW)
    np.testing.assert_array_equal(q.w_hat[:, 8 * g:8 * (g + 1)], ref.w_hat)
    np.testing.assert_array_equal(q.scale[:, 8 * g:8 * (g + 1)], ref.scale)
  assert q.codes.shape == w.shape and q.scale.shape == (2, 16)


def test_guided_solution_has_the_lower_guided_objective():
  w, x = _layer(5)
  # skewed saliency: a few tokens carry most of the loss gradient, differently per channel group
  h = gq.guided_hessian(x, jax.random.uniform(jax.random.key(6), (128, 2)) ** 6)
  guided = gq.guided_gptq_layer(w, h, **KW)
  plain = gq.guided_gptq_layer(w, gptq.hessian(x), **KW)
  assert float(gq.guided_objective(w, guided.w_hat, h)) < float(gq.guided_objective(w, plain.w_hat, h))
  np.testing.assert_allclose(gq.guided_objective(w, w, h), 0.0)


def test_saliency_is_the_group_mean_of_squared_output_gradients_and_drives_the_model_walk():
  m = models.MLP(8, [16], 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(7), (12, 8))
  y = jax.random.randint(jax.random.key(8), (12,), 0, 4)
  s = gq.guided_saliency(m, [x[:6], x[6:]], [y[:6], y[6:]], n_groups=2)
  assert set(s) == {"hidden/0", "head"} and s["hidden/0"].shape == (12, 2)
  for sl in (slice(0, 6), slice(6, 12)):
    loss = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, y[sl]).mean()
    z = m.hidden[0](x[sl])
    g_z = jax.grad(lambda z: loss(m.head(jax.nn.relu(z))))(z)  # d loss / d (hidden pre-activation)
    g_o = jax.grad(loss)(m(x[sl]))
    np.testing.assert_allclose(s["hidden/0"][sl], (g_z ** 2).reshape(6, 2, 8).mean(-1), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(s["head"][sl], (g_o ** 2).reshape(6, 2, 2).mean(-1), rtol=1e-5, atol=1e-12)
  # the model-level driver: every layer quantized, in forward order, on the same calibration data
  qm, res = gq.guidedquant_model(m, [x[:6], x[6:]], [y[:6], y[6:]], n_groups=2, bits=4)
  assert list(res) == ["hidden/0", "head"]
  np.testing.assert_array_equal(qm.head.kernel[...], res["head"].w_hat)
  assert not np.array_equal(qm.head.kernel[...], m.head.kernel[...])


def test_errors_name_the_argument():
  w, x = _layer(11)
  with pytest.raises(ValueError, match="n_groups=3 must divide"):
    gq.guided_gptq_layer(w, jnp.stack([jnp.eye(32)] * 3))
  with pytest.raises(ValueError, match="h must have shape"):
    gq.guided_gptq_layer(w, jnp.eye(16))
  with pytest.raises(ValueError, match="static_groups"):
    gq.guided_gptq_layer(w, jnp.stack([jnp.eye(32)] * 2), group_size=8, act_order=True)
  with pytest.raises(ValueError, match="saliency"):
    gq.guided_hessian(x, jnp.ones((5, 2)))
  with pytest.raises(ValueError, match="non-negative"):
    gq.guided_hessian(x, -jnp.ones((128, 2)))
  m = models.MLP(8, [16], 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="n_groups=3 must divide"):
    gq.guided_saliency(m, [jnp.ones((2, 8))], [jnp.zeros(2, jnp.int32)], n_groups=3)
  with pytest.raises(ValueError, match="equal length"):
    gq.guided_saliency(m, [jnp.ones((2, 8))], [], n_groups=2)
