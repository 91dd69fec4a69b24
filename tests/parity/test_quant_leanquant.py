"""LeanQuant against independent oracles.

* The loss-error-aware grid (weighted k-means) against ``scipy.cluster.vq.kmeans2``: integer sample weights are
  the same as repeating each point, so weights ``d^(-1) = m`` with ``d = 1/m`` must give scipy's unweighted Lloyd
  result on the repeated data, from the same initial centroids (``minit="matrix"``; scipy also keeps the
  centroid of an empty cluster). Tolerance 1e-5 (float32 here, float64 in scipy).
* The layer against a torch transcription of ``LeanQuant.fasterquant`` of the official code
  (github.com/LeanModels/LeanQuant, ``lean_quantizer.py``, commit bc8c8ee62044a0df75ae7f85a7434b379f90e31c) with
  ``--exponent`` set, no groups and no act-order. The official k-means stage calls scikit-learn, which the test
  extra does not install; the transcription therefore returns the k-means inputs it computes (the dead-zeroed
  weight and the sample weights ``diag(Hinv)^(-p)``) and runs its GPTQ loop on centroids given to it: the grids
  paperlab fits internally must equal :func:`leanquant_grid` on the official inputs, and the loop on those grids must
  give the official codes (all equal) and weights (float32, atol 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.vq import kmeans2

import jax.numpy as jnp

from paperlab import quant

torch = pytest.importorskip("torch")


def test_grid_equals_scipy_kmeans2_on_repeated_points():
  rng = np.random.default_rng(0)
  n_in, n_out, bits = 48, 5, 3
  w = rng.standard_t(4, size=(n_in, n_out)).astype(np.float32)
  m = rng.integers(1, 5, size=n_in)
  got = np.asarray(quant.leanquant_grid(jnp.asarray(w), jnp.asarray(1.0 / m, jnp.float32), bits=bits, p=1.0,
                                        iters=100))
  for o in range(n_out):
    col = w[:, o].astype(np.float64)
    init = np.linspace(col.min(), col.max(), 2 ** bits)[:, None]
    want, _ = kmeans2(np.repeat(col, m)[:, None], init, iter=100, minit="matrix", missing="warn")
    np.testing.assert_allclose(got[o], want[:, 0], atol=1e-5, rtol=1e-5)


def _official_fasterquant(W, H, p, centroids=None, blocksize=128, percdamp=0.01):
  """lean_quantizer.py LeanQuant.fasterquant (exponent float, groupsize -1, actorder False), torch float32.
  Returns the k-means inputs (W_np, Hinv diagonal ** -p) when ``centroids`` is None, else (Q, codes)."""
  W = W.clone().float()
  H = H.clone()
  columns = W.shape[1]
  dead = torch.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  damp = percdamp * torch.mean(torch.diag(H))
  diag = torch.arange(columns)
  H[diag, diag] += damp
  H = torch.linalg.cholesky(H)
  H = torch.cholesky_inverse(H)
  H = torch.linalg.cholesky(H, upper=True)
  Hinv = H
  if centroids is None:
    return W, torch.diagonal(Hinv) ** (-p)
  Q = torch.zeros_like(W)
  Q_codes = Q.to(torch.uint8)
  for i1 in range(0, columns, blocksize):
    i2 = min(i1 + blocksize, columns)
    count = i2 - i1
    W1 = W[:, i1:i2].clone()
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    Hinv1 = Hinv[i1:i2, i1:i2]
    for i in range(count):
      w = W1[:, i]
      d = Hinv1[i, i]
      codes = torch.argmin((centroids - w[:, None]).abs(), dim=1, keepdim=True)
      Q_codes[:, i1 + i] = codes.flatten().to(torch.uint8)
      q = torch.gather(centroids, 1, codes).flatten()
      Q1[:, i] = q
      err1 = (w - q) / d
      W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
      Err1[:, i] = err1
    Q[:, i1:i2] = Q1
    W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
  return Q, Q_codes


def test_layer_matches_the_official_fasterquant():
  rng = np.random.default_rng(1)
  n_in, n_out, bits, p = 160, 24, 3, 4.0  # two lazy blocks (the second one partial), one dead input
  x = rng.normal(size=(512, n_in)).astype(np.float32) * rng.uniform(0.2, 3.0, size=n_in).astype(np.float32)
  x[:, 7] = 0.0
  h = (2.0 / x.shape[0]) * x.T @ x
  kernel = rng.normal(size=(n_in, n_out)).astype(np.float32)
  ours = quant.leanquant_layer(jnp.asarray(kernel), jnp.asarray(h), bits=bits, p=p)

  W, sample_weight = _official_fasterquant(torch.from_numpy(kernel.T.copy()), torch.from_numpy(h), p)
  grid = quant.leanquant_grid(jnp.asarray(W.numpy().T), jnp.asarray(sample_weight.numpy() ** (-1.0 / p)),
                              bits=bits, p=p)
  np.testing.assert_allclose(np.asarray(ours.codebook), np.asarray(grid), atol=1e-5, rtol=1e-5)

  Q, codes = _official_fasterquant(torch.from_numpy(kernel.T.copy()), torch.from_numpy(h), p,
                                   centroids=torch.from_numpy(np.array(ours.codebook)))
  np.testing.assert_array_equal(np.asarray(ours.codes), codes.numpy().T)
  np.testing.assert_allclose(np.asarray(ours.w_hat), Q.numpy().T, atol=1e-5)
  assert ours.w_hat.dtype == jnp.float32 and ours.codes.dtype == jnp.uint8 and ours.codebook.shape == (n_out, 8)
  np.testing.assert_array_equal(np.asarray(ours.w_hat), np.take_along_axis(  # every weight is on its channel grid
      np.asarray(ours.codebook).T, np.asarray(ours.codes, np.int64), axis=0))
