"""Unit tests for paperlab.losses.contrastive: dense InfoNCE and the memory-bounded tiled (Inf-CL) loss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab.losses import contrastive as CL


def _emb(b, d, seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (b, d))
  y = x + 0.5 * jax.random.normal(ky, (b, d))
  norm = lambda a: a / jnp.linalg.norm(a, axis=1, keepdims=True)
  return norm(x), norm(y)


def _value_and_grads(fn, x, y, t):
  return jax.jit(jax.value_and_grad(lambda a, b, t: fn(a, b, t).mean(), argnums=(0, 1, 2)))(x, y, t)


def test_tiled_loss_value_and_gradients_equal_dense_at_b4096(symmetric=True):
  # Catalogue [236]: B=4096, d=64, tile=256, values and grads equal dense to 1e-5.
  x, y = _emb(4096, 64)
  t = jnp.float32(0.07)
  dense = functools.partial(CL.info_nce_loss, symmetric=symmetric)
  tiled = functools.partial(CL.tiled_contrastive_loss, tile_size=256, symmetric=symmetric)
  (vd, gd), (vt, gt) = _value_and_grads(dense, x, y, t), _value_and_grads(tiled, x, y, t)
  np.testing.assert_allclose(vt, vd, rtol=1e-5)
  for a, b in zip(gt, gd):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiled_loss_handles_a_batch_that_is_not_a_multiple_of_the_tile(symmetric):
  x, y = _emb(37, 8, seed=1)
  t = jnp.float32(0.5)
  dense = functools.partial(CL.info_nce_loss, symmetric=symmetric)
  tiled = functools.partial(CL.tiled_contrastive_loss, tile_size=8, symmetric=symmetric)
  (vd, gd), (vt, gt) = _value_and_grads(dense, x, y, t), _value_and_grads(tiled, x, y, t)
  np.testing.assert_allclose(vt, vd, rtol=1e-6)
  for a, b in zip(gt, gd):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_dense_loss_is_cross_entropy_over_the_similarity_rows():
  x, y = _emb(6, 4, seed=2)
  s = np.asarray(x @ y.T, np.float64) / 0.1
  row = -np.diag(s - np.log(np.exp(s).sum(1, keepdims=True)))
  col = -np.diag(s - np.log(np.exp(s).sum(0, keepdims=True)))
  np.testing.assert_allclose(CL.info_nce_loss(x, y, 0.1, symmetric=False), row, rtol=1e-5)
  np.testing.assert_allclose(CL.info_nce_loss(x, y, 0.1), 0.5 * (row + col), rtol=1e-5)


def _temp_bytes(fn, b, d=64):
  spec = jax.ShapeDtypeStruct((b, d), jnp.float32)
  t = jax.ShapeDtypeStruct((), jnp.float32)
  f = jax.jit(jax.value_and_grad(lambda a, c, t: fn(a, c, t).mean(), argnums=(0, 1, 2)))
  return f.lower(spec, spec, t).compile().memory_analysis().temp_size_in_bytes


def test_tiled_loss_peak_memory_stays_flat_as_batch_grows():
  # Compiled (not executed) scratch memory of value_and_grad. Dense needs the B x B matrix (64x for 8x the batch);
  # tiled needs O(tile^2) scratch plus O(B*d) embedding-sized buffers (padded copies, gradient accumulators), so
  # its memory per example does not grow with B, and at B=8192 it is far below 0.1x dense (catalogue claim).
  tiled = lambda a, c, t: CL.tiled_contrastive_loss(a, c, t, tile_size=256)
  sizes = (1024, 4096, 8192)
  tiled_mem = [_temp_bytes(tiled, b) for b in sizes]
  dense_mem = [_temp_bytes(CL.info_nce_loss, b) for b in sizes]
  per_example = [m / b for m, b in zip(tiled_mem, sizes)]
  assert all(b <= 1.01 * a for a, b in zip(per_example, per_example[1:])), per_example
  assert max(per_example) <= 8 * 64 * 4 + 256 * 256 * 4 / 1024  # a few embedding rows + one tile, amortised
  assert dense_mem[2] / dense_mem[0] > 50  # quadratic growth of the baseline (64x in theory)
  assert tiled_mem[2] <= 0.1 * dense_mem[2], (tiled_mem[2], dense_mem[2])


def test_contrastive_bad_input():
  x, y = _emb(4, 3)
  with pytest.raises(ValueError, match="same shape"):
    CL.tiled_contrastive_loss(x, y[:3])
  with pytest.raises(ValueError, match="temperature"):
    CL.info_nce_loss(x, y, 0.0)
  with pytest.raises(ValueError, match="tile_size"):
    CL.tiled_contrastive_loss(x, y, tile_size=0)
  with pytest.raises(ValueError, match="batch, dim"):
    CL.info_nce_loss(x[0], y[0])
