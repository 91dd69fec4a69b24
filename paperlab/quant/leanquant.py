"""LeanQuant: GPTQ onto a loss-error-aware non-uniform grid (Zhang & Shrivastava, "LeanQuant: Accurate and
Scalable Large Language Model Quantization with Loss-error-aware Grid", arXiv:2407.10032).

In GPTQ/OBQ, rounding input feature ``j`` of a row to ``q`` costs ``(w_j - q)^2 / [U]_jj^2`` in the layer loss,
where ``U`` is the upper Cholesky factor of ``H^-1`` (the ``d`` of the GPTQ loop). A min-max grid ignores this, so
weights with a small ``U_jj`` (large loss impact) can fall far from every grid point. LeanQuant's non-uniform
variant fits, per output channel, ``2^bits`` grid points by weighted k-means on the row's weights with sample
weights ``U_jj^(-p)`` (Sec. 3, the loss-error-aware objective ``sum_j U_jj^(-p) (w_j - grid(w_j))^2``; the
official ``--exponent`` ``p``, recommended 3 or 4), then runs GPTQ's column loop with error feedback, rounding each
weight to the nearest point of its row's grid.

The steps follow ``LeanQuant.fasterquant`` of the official code (github.com/LeanModels/LeanQuant,
``lean_quantizer.py``, commit bc8c8ee) with ``--exponent`` set and no groups or act-order: dead inputs
(``H_ii = 0``) get ``H_ii = 1`` and zero weights; damping ``percdamp * mean(diag H)``; ``U = chol(chol_inv(chol
H))^T``; k-means of every row of the (dead-zeroed) weight with weights ``diag(U)^(-p)``, initialized at
``linspace(min, max, 2^bits)`` (the official init for ``2^bits <= 8``), Lloyd iterations (``max_iter = 100``);
then the GPTQ loop (lazy blocks of 128) with nearest-centroid rounding. Differences: the official k-means is
scikit-learn's, which stops at ``tol = 1e-6`` and relocates empty clusters; here a fixed number of Lloyd steps
runs (a fixed point stays put) and an empty cluster keeps its centroid; for ``2^bits > 8`` the official code uses
k-means++ initialization, here the linspace init is kept for every width. Everything is float32 and jittable.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.quant.rtn import check_bits, check_finite, check_kernel

__all__ = ["LeanQuantWeight", "leanquant_grid", "leanquant_layer", "leanquant_model"]


class LeanQuantWeight(NamedTuple):
  """A kernel ``(in, out)`` quantized onto per-output-channel code books.

  Attributes:
    w_hat: the dequantized kernel ``codebook[out, codes[in, out]]``, in the input's dtype.
    codes: ``uint8`` indices into the row's code book, shape ``(in, out)``.
    codebook: ``float32`` grid points, shape ``(out, 2^bits)``.
  """

  w_hat: jax.Array
  codes: jax.Array
  codebook: jax.Array


def _weighted_kmeans_1d(x: jax.Array, s: jax.Array, init: jax.Array, iters: int) -> jax.Array:
  """Lloyd's algorithm on scalars ``x`` with sample weights ``s`` from centroids ``init``; empty clusters stay."""
  def step(_, c):
    a = jnp.argmin(jnp.abs(x[:, None] - c[None, :]), axis=1)
    onehot = jax.nn.one_hot(a, c.shape[0], dtype=jnp.float32)
    num, den = (s * x) @ onehot, s @ onehot
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), c)
  return jax.lax.fori_loop(0, iters, step, init)


@functools.partial(jax.jit, static_argnames=("bits", "iters"))
def _grid(rows: jax.Array, weights: jax.Array, bits: int, iters: int) -> jax.Array:
  """Code books ``(rows, 2^bits)`` of the rows of ``rows`` (PyTorch layout ``(out, in)``)."""
  k = 2 ** bits
  t = jnp.linspace(0.0, 1.0, k, dtype=jnp.float32)
  lo, hi = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
  init = lo + (hi - lo) * t[None, :]
  return jax.vmap(_weighted_kmeans_1d, in_axes=(0, None, 0, None))(rows, weights, init, iters)


def _check_p(p: Any) -> None:
  _checks.check_non_negative("p", p)


def _check_iters(iters: Any) -> int:
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
    raise ValueError(f"iters must be a positive int, got {iters!r}.")
  return iters


def leanquant_grid(w: jax.Array, hinv_diag: jax.Array, *, bits: int = 3, p: float | jax.Array = 4.0,
                   iters: int = 100) -> jax.Array:
  """Loss-error-aware non-uniform grids, one per output channel (LeanQuant, arXiv:2407.10032, Sec. 3).

  For output channel ``o`` the ``2^bits`` grid points minimize ``sum_j hinv_diag_j^(-p) (w[j, o] - grid(w[j,
  o]))^2`` by weighted k-means (Lloyd, init ``linspace(min, max, 2^bits)`` of the column, as the official code).

  Args:
    w: kernel ``(in, out)``.
    hinv_diag: ``(in,)`` positive: the diagonal of the upper Cholesky factor of the damped ``H^-1`` (GPTQ's
      ``d``), so that the weights are ``d^(-p)``.
    bits: 2..8 (the paper: 2, 3, 4).
    p: the exponent (``--exponent``; 3 or 4 recommended, default 4); ``p = 0`` is plain k-means.
    iters: Lloyd iterations (scikit-learn's ``max_iter = 100`` in the official code).

  Returns:
    ``float32`` code books ``(out, 2^bits)``. Jittable with ``bits`` and ``iters`` static.

  Raises:
    ValueError: unsupported ``bits``, negative ``p``, ``hinv_diag`` not ``(in,)`` or not positive, non-finite
      inputs.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  _check_p(p)
  iters = _check_iters(iters)
  hinv_diag = jnp.asarray(hinv_diag)
  if hinv_diag.shape != (w.shape[0],):
    raise ValueError(f"hinv_diag must have shape ({w.shape[0]},) for w of shape {tuple(w.shape)}, got "
                     f"{tuple(hinv_diag.shape)}.")
  check_finite("hinv_diag", hinv_diag)
  if not isinstance(hinv_diag, jax.core.Tracer) and not bool(jnp.all(hinv_diag > 0)):
    raise ValueError("hinv_diag must be positive (the diagonal of a Cholesky factor).")
  weights = hinv_diag.astype(jnp.float32) ** (-jnp.asarray(p, jnp.float32))
  return _grid(w.T.astype(jnp.float32), weights, bits, iters)


def _upper_cholesky_of_inverse(h: jax.Array) -> jax.Array:
  """``cholesky(cholesky_inverse(cholesky(h)), upper=True)`` of the official code."""
  lower = jnp.linalg.cholesky(h)
  hinv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(h.shape[0], dtype=h.dtype))
  return jnp.linalg.cholesky(hinv, upper=True)


@functools.partial(jax.jit, static_argnames=("bits", "iters", "blocksize", "fit"))
def _leanquant(w, h, p, percdamp, codebook, *, bits, iters, blocksize, fit):
  """The official loop on ``w`` in PyTorch layout ``(rows=out, columns=in)``."""
  rows, cols = w.shape
  w = w.astype(jnp.float32)
  h = h.astype(jnp.float32)
  dead = jnp.diag(h) == 0
  h = jnp.where(jnp.eye(cols, dtype=bool) & dead[None, :], 1.0, h)
  w = jnp.where(dead[None, :], 0.0, w)
  h = h + percdamp * jnp.mean(jnp.diag(h)) * jnp.eye(cols, dtype=h.dtype)
  hinv = _upper_cholesky_of_inverse(h)
  if fit:
    codebook = _grid(w, jnp.diag(hinv) ** (-p), bits, iters)

  nblocks = -(-cols // blocksize)
  pad = nblocks * blocksize - cols  # zero columns with an identity block: no error, no effect on the rest
  if pad:
    w = jnp.pad(w, ((0, 0), (0, pad)))
    hinv = jnp.pad(hinv, ((0, pad), (0, pad))) + jnp.diag(
        jnp.concatenate([jnp.zeros(cols), jnp.ones(pad)]).astype(hinv.dtype))

  q_all, c_all = [], []
  for b in range(nblocks):
    i1, i2 = b * blocksize, (b + 1) * blocksize
    hinv1 = hinv[i1:i2, i1:i2]

    def column(i, carry, hinv1=hinv1):
      w1, q1, c1, err1 = carry
      col = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
      code = jnp.argmin(jnp.abs(codebook - col[:, None]), axis=1)
      q = jnp.take_along_axis(codebook, code[:, None], axis=1)[:, 0]
      e = (col - q) / hinv1[i, i]
      w1 = w1 - e[:, None] * hinv1[i][None, :]  # upper triangular: earlier columns are untouched
      q1 = jax.lax.dynamic_update_index_in_dim(q1, q, i, axis=1)
      c1 = jax.lax.dynamic_update_index_in_dim(c1, code.astype(jnp.float32), i, axis=1)
      err1 = jax.lax.dynamic_update_index_in_dim(err1, e, i, axis=1)
      return w1, q1, c1, err1

    zeros = jnp.zeros((rows, blocksize), jnp.float32)
    _, q1, c1, err1 = jax.lax.fori_loop(0, blocksize, column, (w[:, i1:i2], zeros, zeros, zeros))
    q_all.append(q1)
    c_all.append(c1)
    if i2 < w.shape[1]:
      w = w.at[:, i2:].add(-(err1 @ hinv[i1:i2, i2:]))
  q = jnp.concatenate(q_all, axis=1)[:, :cols]
  codes = jnp.concatenate(c_all, axis=1)[:, :cols]
  return q, codes, codebook


def leanquant_layer(w: jax.Array, h: jax.Array, *, bits: int = 3, p: float | jax.Array = 4.0,
                    percdamp: float | jax.Array = 0.01, iters: int = 100, blocksize: int = 128,
                    codebook: jax.Array | None = None) -> LeanQuantWeight:
  """LeanQuant-nu quantization of one Flax kernel (arXiv:2407.10032; the official ``fasterquant`` with
  ``--exponent p``, see the module docstring): loss-error-aware grids, then GPTQ's loop onto them.

  Args:
    w: kernel ``(in, out)``.
    h: the layer Hessian ``(in, in)`` (e.g. :func:`paperlab.quant.hessian` of calibration inputs).
    bits: 2..8 (the paper: 2, 3, 4; grids of ``2^bits`` points per output channel).
    p: the exponent of the loss-error-aware weights ``d^(-p)`` (default 4, the README's recommended 3-4).
    percdamp: damping as a fraction of ``mean(diag H)`` (0.01).
    iters: Lloyd iterations of the grid fit (100).
    blocksize: lazy-update block width (128).
    codebook: optional precomputed grids ``(out, 2^bits)`` (e.g. :func:`leanquant_grid`); then no grid is fit.

  Returns:
    :class:`LeanQuantWeight`. Jittable with ``bits``, ``iters`` and ``blocksize`` static.

  Raises:
    ValueError: unsupported ``bits``; ``h`` not ``(in, in)``; non-finite ``w``/``h``; negative ``p`` or
      ``percdamp``; bad ``iters``/``blocksize``; ``codebook`` of the wrong shape.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  if not hasattr(h, "shape") or tuple(h.shape) != (w.shape[0], w.shape[0]):
    raise ValueError(f"h must be the ({w.shape[0]}, {w.shape[0]}) Hessian of the kernel's {w.shape[0]} inputs, "
                     f"got shape {getattr(h, 'shape', type(h).__name__)}.")
  check_finite("h", h)
  _check_p(p)
  _checks.check_non_negative("percdamp", percdamp)
  iters = _check_iters(iters)
  if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
    raise ValueError(f"blocksize must be a positive int, got {blocksize!r}.")
  k = 2 ** bits
  if codebook is not None and tuple(jnp.shape(codebook)) != (w.shape[1], k):
    raise ValueError(f"codebook must have shape (out, 2^bits) = {(w.shape[1], k)}, got "
                     f"{tuple(jnp.shape(codebook))}.")
  cb = jnp.zeros((w.shape[1], k), jnp.float32) if codebook is None else jnp.asarray(codebook, jnp.float32)
  q, codes, cb = _leanquant(w.T, jnp.asarray(h), jnp.asarray(p, jnp.float32), jnp.asarray(percdamp, jnp.float32),
                            cb, bits=bits, iters=iters, blocksize=blocksize, fit=codebook is None)
  return LeanQuantWeight(q.T.astype(w.dtype), codes.T.astype(jnp.uint8), cb)


def leanquant_model(model, batches: Iterable[Any], *, bits: int = 3, p: float = 4.0, percdamp: float = 0.01,
                    iters: int = 100, blocksize: int = 128, include: str | None = None,
                    exclude: str | None = None):
  """LeanQuant over the Dense layers of a Flax NNX model, true-sequentially (as :func:`paperlab.quant.gptq_model`
  and the official ``llama.py``, which quantizes layer by layer on the outputs of the already-quantized layers).

  Args:
    model: an ``nnx.Module`` (not modified).
    batches: calibration inputs accepted by ``model(batch)``.
    bits, p, percdamp, iters, blocksize: as :func:`leanquant_layer`.
    include, exclude: regexes on the ``/``-joined layer path selecting layers.

  Returns:
    ``(quantized_model, {path: LeanQuantWeight})``.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  def solve(path, kernel, h):
    return leanquant_layer(kernel, h, bits=bits, p=p, percdamp=percdamp, iters=iters, blocksize=blocksize)

  return calibration.sequential(model, batches, solve, statistic="hessian", include=include, exclude=exclude)
