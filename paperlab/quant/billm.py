"""BiLLM: 1-bit post-training quantization with salient-column residual binarization and a split search for the
bell-shaped rest (Huang et al., "BiLLM: Pushing the Limit of Post-Training Quantization for LLMs",
arXiv:2402.04291).

Within GPTQ's framework (Hessian ``H = 2 X^T X / n``, damping, ``U`` = upper Cholesky factor of ``H^-1``, blocks of
128 input features), every block of a layer is binarized in three groups (Sec. 3.1-3.2):

* salience ``s_ij = w_ij^2 / U_jj^2`` (the OBS loss of removing ``w_ij``); the ``k`` columns (input features) with
  the largest ``sum_i |s_ij|`` are salient, ``k`` searched in ``1 .. max_salient - 1`` (the official ``up_lim``,
  50) to minimize the binarization error; salient columns get the **residual binarization** of order 2;
* the other weights are split at a magnitude threshold ``p`` into a concentrated (``< p``) and a sparse
  (``>= p``) group, each binarized with order 1; ``p`` is searched over the 81 quantiles 0.10, 0.11, ..., 0.90 of
  the non-salient magnitudes.

A binarization of order ``m`` over the masked entries of an output channel is the sum of ``m`` residual terms
``alpha_r sign(r - mu_r) + mu_r`` with ``mu_r`` the mean and ``alpha_r`` the mean absolute deviation of the
residual ``r`` (the official ``high_order_residual``, which also subtracts the mean). As in the official code
(github.com/Aaronhuang-778/BiLLM, ``bigptq.py``, ``binary.py``, ``utils/autosearch.py``, ``utils/structure.py``,
commit dc137eb) the searches run on the salience matrix ``s`` (both the column count and the split point minimize
the mean squared error of binarizing ``s``), the block's weights are binarized at the start of the block, and the
quantization error is carried only to the following blocks (``W[:, end:] -= Err @ U[block, end:]``).

Everything is float32 and jittable per layer (the searches are vmapped over their candidates).
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.quant.rtn import check_finite, check_kernel

__all__ = ["BiLLMWeight", "residual_binarize", "billm_layer", "billm_model"]

_PERCENTILES = (0.10, 0.90, 81)


class BiLLMWeight(NamedTuple):
  """A binarized kernel ``(in, out)``.

  Attributes:
    w_hat: the binarized kernel (the sum of the three groups' binarizations), in the input's dtype.
    salient: ``bool`` ``(in,)``: input features chosen as salient columns (order-2 residual binarization).
    sparse: ``bool`` ``(in, out)``: non-salient weights in the sparse group (``|s| >= p``).
    split: ``float32`` ``(num_blocks,)``: the split point ``p`` of each block (on the salience scale).
  """

  w_hat: jax.Array
  salient: jax.Array
  sparse: jax.Array
  split: jax.Array


def _hor(x: jax.Array, mask: jax.Array, order: int) -> jax.Array:
  """Residual binarization of ``order`` over the masked entries of each row (PyTorch layout ``(out, in)``)."""
  total = jnp.zeros_like(x)
  xm = x * mask
  count = jnp.sum(mask, axis=1, keepdims=True)
  safe = jnp.maximum(count, 1)
  for _ in range(order):
    r = xm - total
    mu = jnp.where(count > 0, jnp.sum(jnp.where(mask, r, 0.0), axis=1, keepdims=True) / safe, 0.0)
    c = r - mu
    alpha = jnp.where(count > 0, jnp.sum(jnp.where(mask, jnp.abs(c), 0.0), axis=1, keepdims=True) / safe, 0.0)
    total = total + (jnp.sign(c) * alpha + mu) * mask
  return total


def residual_binarize(w: jax.Array, mask: jax.Array | None = None, *, order: int = 2) -> jax.Array:
  """BiLLM's residual binarization (arXiv:2402.04291, Eq. 3-5, with the official code's mean offset).

  For every output channel (column of the kernel), over its input rows where ``mask`` is true:
  ``B = sum_{r=1..order} (alpha_r sign(R_r - mu_r) + mu_r)`` with ``R_1 = w`` and ``R_{r+1} = R_r - (alpha_r
  sign(R_r - mu_r) + mu_r)``, ``mu_r`` the mean and ``alpha_r`` the mean absolute deviation of ``R_r - mu_r``
  (``alpha = mean|w|`` is the L2-optimal scale of ``sign(w)``). Entries outside ``mask`` are 0.

  Args:
    w: kernel ``(in, out)``.
    mask: ``bool`` of ``w``'s shape (default: all true).
    order: number of residual terms (1: plain binarization; BiLLM uses 2 for salient weights).

  Returns:
    float32 array of ``w``'s shape. Jittable with ``order`` static.

  Raises:
    ValueError: ``order`` not a positive int, a mask of another shape, non-finite ``w``.
  """
  w = check_kernel("w", w)
  if isinstance(order, bool) or not isinstance(order, int) or order < 1:
    raise ValueError(f"order must be a positive int, got {order!r}.")
  mask = jnp.ones(w.shape, bool) if mask is None else jnp.asarray(mask, bool)
  if mask.shape != w.shape:
    raise ValueError(f"mask must have the shape of w {tuple(w.shape)}, got {tuple(mask.shape)}.")
  return _hor(w.T.astype(jnp.float32), mask.T, order).T


def _mse(a, b):
  return jnp.mean(jnp.square(a - b))


def _search(target: jax.Array, max_salient: int):
  """The official ``structural_searching``: (salient column mask, split point) of one block's salience."""
  rows, cols = target.shape
  up = min(max_salient, cols)
  colsum = jnp.sum(jnp.abs(target), axis=0)
  rank = jnp.argsort(jnp.argsort(-colsum, stable=True), stable=True)  # position of each column in topk order

  def salient_error(i):
    m3 = jnp.broadcast_to(rank[None, :] < i, target.shape)
    return _mse(target, _hor(target, m3, 2) + _hor(target, ~m3, 2))

  counts = jnp.arange(1, up)
  k = counts[jnp.argmin(jax.vmap(salient_error)(counts))]
  salient = rank < k
  m3 = jnp.broadcast_to(salient[None, :], target.shape)
  group3 = _hor(target, m3, 2)
  search = jnp.abs(target * ~m3)
  splits = jnp.quantile(search.reshape(-1), jnp.linspace(*_PERCENTILES[:2], _PERCENTILES[2]))

  def split_error(p):
    m1, m2 = (search < p) & ~m3, (search >= p) & ~m3
    return _mse(target, _hor(target, m1, 1) + _hor(target, m2, 1) + group3)

  split = splits[jnp.argmin(jax.vmap(split_error)(splits))]
  return salient, split


@functools.partial(jax.jit, static_argnames=("blocksize", "max_salient"))
def _billm(w, h, percdamp, *, blocksize, max_salient):
  rows, cols = w.shape
  w = w.astype(jnp.float32)
  h = h.astype(jnp.float32)
  dead = jnp.diag(h) == 0
  h = jnp.where(jnp.eye(cols, dtype=bool) & dead[None, :], 1.0, h)
  w = jnp.where(dead[None, :], 0.0, w)
  h = h + percdamp * jnp.mean(jnp.diag(h)) * jnp.eye(cols, dtype=h.dtype)
  lower = jnp.linalg.cholesky(h)
  hinv = jnp.linalg.cholesky(jax.scipy.linalg.cho_solve((lower, True), jnp.eye(cols, dtype=h.dtype)), upper=True)
  q_all, sal_all, sparse_all, split_all = [], [], [], []
  for st in range(0, cols, blocksize):
    ed = min(st + blocksize, cols)
    w1 = w[:, st:ed]
    d = jnp.diag(hinv)[st:ed]
    target = w1 ** 2 / d[None, :] ** 2
    salient, split = _search(target, max_salient)
    m3 = jnp.broadcast_to(salient[None, :], w1.shape)
    mag = jnp.abs(target * ~m3)
    m1, m2 = (mag < split) & ~m3, (mag >= split) & ~m3
    q = _hor(w1, m1, 1) * m1 + _hor(w1, m2, 1) * m2 + _hor(w1, m3, 2) * m3
    err = (w1 - q) / d[None, :]
    if ed < cols:
      w = w.at[:, ed:].add(-(err @ hinv[st:ed, ed:]))
    q_all.append(q)
    sal_all.append(salient)
    sparse_all.append(m2)
    split_all.append(split)
  return (jnp.concatenate(q_all, axis=1), jnp.concatenate(sal_all), jnp.concatenate(sparse_all, axis=1),
          jnp.stack(split_all))


def billm_layer(w: jax.Array, h: jax.Array, *, blocksize: int = 128, percdamp: float | jax.Array = 0.01,
                max_salient: int = 50) -> BiLLMWeight:
  """BiLLM binarization of one Flax kernel (arXiv:2402.04291; the official ``BRAGPTQ.fasterquant`` with the
  ``braq`` quantizer, ``hessian`` salience and orders (1, 1, 2); see the module docstring).

  Args:
    w: kernel ``(in, out)``.
    h: the layer Hessian ``(in, in)`` (e.g. :func:`paperlab.quant.hessian` of calibration inputs).
    blocksize: input features per block (128).
    percdamp: damping as a fraction of ``mean(diag H)`` (0.01).
    max_salient: the column-count search tries ``1 .. max_salient - 1`` salient columns per block (the
      official ``up_lim`` = 50), capped by the block width.

  Returns:
    :class:`BiLLMWeight`. Jittable with ``blocksize`` and ``max_salient`` static.

  Raises:
    ValueError: ``h`` not ``(in, in)``, non-finite inputs, negative ``percdamp``, ``blocksize`` or ``max_salient``
      not an int >= 1 / >= 2.
  """
  w = check_kernel("w", w)
  if not hasattr(h, "shape") or tuple(h.shape) != (w.shape[0], w.shape[0]):
    raise ValueError(f"h must be the ({w.shape[0]}, {w.shape[0]}) Hessian of the kernel's {w.shape[0]} inputs, "
                     f"got shape {getattr(h, 'shape', type(h).__name__)}.")
  check_finite("h", h)
  _checks.check_non_negative("percdamp", percdamp)
  if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 2:
    raise ValueError(f"blocksize must be an int >= 2, got {blocksize!r}.")
  if isinstance(max_salient, bool) or not isinstance(max_salient, int) or max_salient < 2:
    raise ValueError(f"max_salient must be an int >= 2, got {max_salient!r}.")
  if w.shape[0] % blocksize == 1 or w.shape[0] < 2:
    raise ValueError(f"the last block of {w.shape[0]} inputs in blocks of {blocksize} has one column; the salient "
                     f"search needs >= 2: pick another blocksize.")
  q, salient, sparse, split = _billm(w.T, jnp.asarray(h), jnp.asarray(percdamp, jnp.float32), blocksize=blocksize,
                                     max_salient=max_salient)
  return BiLLMWeight(q.T.astype(w.dtype), salient, sparse.T, split)


def billm_model(model, batches: Iterable[Any], *, blocksize: int = 128, percdamp: float = 0.01,
                max_salient: int = 50, include: str | None = None, exclude: str | None = None):
  """BiLLM over the Dense layers of a Flax NNX model, layer by layer in forward order on the outputs of the
  already-binarized layers (as the official ``run.py`` does block by block).

  Returns:
    ``(binarized_model, {path: BiLLMWeight})``.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  def solve(path, kernel, h):
    return billm_layer(kernel, h, blocksize=blocksize, percdamp=percdamp, max_salient=max_salient)

  return calibration.sequential(model, batches, solve, statistic="hessian", include=include, exclude=exclude)
