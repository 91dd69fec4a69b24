"""paperlab.quant.distill: quantized distillation and differentiable quantization (Polino et al., arXiv:1802.05668).

The bucket quantizer is checked against a torch transcription of the official code, github:antspy/quantized_distillation
at commit bb500b7ae48a3f6751d6434126de9845b58d2d65: ``quantization/quant_functions.py`` (``ScalingFunction`` with
``type_scaling='linear'``, ``uniformQuantization`` deterministic branch) and ``quantization/help_functions.py``
(``create_bucket_tensor`` with ``fill_values='last'``). Tolerance 1e-6 (float32, same operations in the same order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import losses, quant


def _official_uniform_quantization(tensor, s, bucket_size):
  """Transcription (deterministic rounding, linear scaling, no mean subtraction / max element)."""
  import torch  # pylint: disable=g-import-not-at-top

  original_size, length = tensor.size(), tensor.numel()
  t = tensor.clone().view(-1)
  if bucket_size is not None:
    multiple, rest = divmod(length, bucket_size)
    if multiple != 0 and rest != 0:
      t = torch.cat([t, torch.ones(bucket_size - rest) * t[-1]])
    t = t.view(1, length) if multiple == 0 else t.view(-1, bucket_size)
    min_rows, _ = t.min(dim=1, keepdim=True)
    max_rows, _ = t.max(dim=1, keepdim=True)
  else:
    min_rows, _ = t.min(dim=0, keepdim=True)
    max_rows, _ = t.max(dim=0, keepdim=True)
  alpha = max_rows - min_rows
  alpha[alpha < 1e-10] = 1
  t = (t - min_rows.expand_as(t)) / alpha.expand_as(t)
  s = s - 1
  t = torch.round(t * s) / s
  t = t * alpha.expand_as(t) + min_rows.expand_as(t)
  return t.reshape(-1)[:length].view(original_size)


@pytest.mark.parametrize("shape,bits,bucket", [((40, 17), 2, 256), ((100,), 4, 256), ((9, 11), 3, None),
                                               ((33, 8), 1, 64)])
def test_bucket_quantize_matches_official_code(shape, bits, bucket):
  torch = pytest.importorskip("torch")
  w = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.3
  ours = np.asarray(quant.bucket_quantize(jnp.asarray(w), bits=bits, bucket_size=bucket))
  ref = _official_uniform_quantization(torch.from_numpy(w), 2 ** bits, bucket).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_bucket_quantize_uses_two_to_the_bits_points_per_bucket():
  w = jax.random.normal(jax.random.key(1), (512,))
  q = np.asarray(quant.bucket_quantize(w, bits=2, bucket_size=256))
  for b in range(2):
    assert np.unique(q[b * 256:(b + 1) * 256]).size == 4
  assert np.unique(q).size == 8  # each bucket has its own scale


def test_stochastic_rounding_is_unbiased():
  # weights in [0, 0.1] at 2 bits: step 1/30, so the mean of 10k draws has std <= 1/30 * 0.005 = 1.7e-4 (< 1e-3 / 5)
  w = jax.random.uniform(jax.random.key(2), (64,), maxval=0.1)
  keys = jax.random.split(jax.random.key(3), 10_000)
  draws = jax.jit(jax.vmap(lambda k: quant.bucket_quantize(w, bits=2, bucket_size=32, stochastic=True, key=k)))(keys)
  assert float(jnp.max(jnp.abs(draws.mean(0) - w))) < 1e-3
  assert float(jnp.max(jnp.abs(draws[0] - w))) > 1e-3  # a single draw is quantized, not the identity


def test_bucket_quantize_straight_through_gradient_and_jit():
  w = jax.random.normal(jax.random.key(4), (20, 6), jnp.bfloat16)
  f = jax.jit(lambda w: quant.bucket_quantize(w, bits=2, bucket_size=16))
  q = f(w)
  assert q.shape == w.shape and q.dtype == jnp.bfloat16
  g = jax.grad(lambda w: jnp.sum(quant.bucket_quantize(w, bits=2) * 3.0))(w.astype(jnp.float32))
  np.testing.assert_array_equal(np.asarray(g), 3.0)


def test_bucket_quantize_errors():
  w = jnp.ones((4, 4))
  with pytest.raises(ValueError, match="bits"):
    quant.bucket_quantize(w, bits=0)
  with pytest.raises(ValueError, match="bucket_size"):
    quant.bucket_quantize(w, bucket_size=0)
  with pytest.raises(ValueError, match="key"):
    quant.bucket_quantize(w, stochastic=True)
  with pytest.raises(TypeError, match="floating"):
    quant.bucket_quantize(jnp.ones((4,), jnp.int32))
  np.testing.assert_array_equal(np.asarray(quant.bucket_quantize(w)), 1.0)  # constant bucket: alpha = 1, exact


def test_codebook_gradient_is_the_sum_of_upstream_gradients_over_assigned_weights():
  w = jax.random.normal(jax.random.key(5), (50,))
  points = quant.codebook_init(w, bits=2)
  up = jax.random.normal(jax.random.key(6), (50,))
  g = jax.grad(lambda p: jnp.sum(quant.codebook_quantize(w, p) * up))(points)
  assign = np.argmin(np.abs(np.asarray(w)[:, None] - np.asarray(points)[None]), axis=1)
  expected = np.bincount(assign, weights=np.asarray(up), minlength=4)
  np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-5, atol=1e-5)
  q = quant.codebook_quantize(w, points)
  np.testing.assert_array_equal(np.asarray(q), np.asarray(points)[assign])
  assert float(jnp.sum(jnp.abs(jax.grad(lambda w: jnp.sum(quant.codebook_quantize(w, points)))(w)))) == 0.0


def test_codebook_init_and_errors():
  w = jnp.arange(16.0)
  np.testing.assert_allclose(np.asarray(quant.codebook_init(w, bits=2)), [0.0, 5.0, 10.0, 15.0])
  np.testing.assert_allclose(np.asarray(quant.codebook_init(w, bits=1, init="quantile")), [3.75, 11.25])
  with pytest.raises(ValueError, match="init"):
    quant.codebook_init(w, init="kmeans")
  with pytest.raises(ValueError, match="points"):
    quant.codebook_quantize(w, jnp.ones((2, 2)))


def test_distillation_loss_interpolates_cross_entropy_and_kd():
  s = jax.random.normal(jax.random.key(7), (5, 10))
  t = jax.random.normal(jax.random.key(8), (5, 10))
  y = jnp.arange(5)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(s, y)
  np.testing.assert_allclose(np.asarray(quant.quantized_distillation_loss(s, t, y, alpha=0.0)), np.asarray(ce),
                             rtol=1e-6)
  kd = losses.kd_loss(s, t, temperature=3.0)
  np.testing.assert_allclose(np.asarray(quant.quantized_distillation_loss(s, t, y, alpha=1.0, temperature=3.0)),
                             np.asarray(kd), rtol=1e-6)
  out = quant.quantized_distillation_loss(s, t, y, where=jnp.array([1, 1, 0, 1, 1], bool))
  assert out.shape == (5,) and float(out[2]) == 0.0
  assert float(jnp.sum(jnp.abs(jax.grad(lambda t: quant.quantized_distillation_loss(s, t, y).sum())(t)))) == 0.0
  with pytest.raises(ValueError, match="alpha"):
    quant.quantized_distillation_loss(s, t, y, alpha=1.5)
  traced = jax.jit(lambda a: quant.quantized_distillation_loss(s, t, y, alpha=a))(0.0)  # alpha as a traced scalar
  np.testing.assert_allclose(np.asarray(traced), np.asarray(ce), rtol=1e-6)
