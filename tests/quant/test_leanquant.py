"""LeanQuant (paperlab.quant.leanquant): the weighted objective of the grid and errors naming the argument (the
layer's output, its shapes and dtypes are checked against the official code in tests/parity)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import quant


def _layer(seed=0, n_in=64, n_out=8):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(256, n_in)).astype(np.float32)
  return jnp.asarray(rng.normal(size=(n_in, n_out)).astype(np.float32)), quant.hessian(jnp.asarray(x))


def test_weighted_kmeans_lowers_the_loss_error_aware_objective_below_its_linspace_start():
  w, _ = _layer(1, n_in=48, n_out=5)  # the parity test's grid shape: one compile
  d = jnp.asarray(np.random.default_rng(2).uniform(0.1, 1.0, size=w.shape[0]), jnp.float32)
  p = 4.0

  def objective(grid):
    near = jnp.min(jnp.abs(w.T[:, :, None] - grid[:, None, :]), axis=-1)  # (out, in)
    return jnp.sum(d ** (-p) * near ** 2, axis=1)

  start = jnp.linspace(w.min(0), w.max(0), 8).T
  fitted = quant.leanquant_grid(w, d, bits=3, p=p)
  assert bool(jnp.all(objective(fitted) < objective(start)))
  # p = 0 ignores d: the unweighted grid differs from the weighted one
  assert not np.allclose(np.asarray(quant.leanquant_grid(w, d, bits=3, p=0.0)), np.asarray(fitted))


def test_errors_name_the_argument():
  w, h = _layer()
  with pytest.raises(ValueError, match="bits"):
    quant.leanquant_layer(w, h, bits=1)
  with pytest.raises(ValueError, match="h must be"):
    quant.leanquant_layer(w, h[:4, :4])
  with pytest.raises(ValueError, match="p"):
    quant.leanquant_layer(w, h, p=-1.0)
  with pytest.raises(ValueError, match="codebook"):
    quant.leanquant_layer(w, h, codebook=jnp.zeros((3, 8)))
  with pytest.raises(ValueError, match="hinv_diag"):
    quant.leanquant_grid(w, jnp.zeros(w.shape[0]))
  with pytest.raises(ValueError, match="finite"):
    quant.leanquant_layer(w.at[0, 0].set(jnp.nan), h)
