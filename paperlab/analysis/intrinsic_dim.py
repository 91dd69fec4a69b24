"""Intrinsic dimension by random-subspace training (Li et al., "Measuring the Intrinsic Dimension of Objective
Landscapes", arXiv:1804.08838).

Only ``theta_d in R^d`` is trained; the network's ``D`` parameters are ``theta^(D) = theta_0^(D) + P theta_d``
(Eq. 2), with ``theta_0`` a frozen random initialization and ``theta_d`` starting at 0. ``d_int90`` is the smallest
``d`` whose solution reaches 90% of the full-training baseline's performance (Sec. 2).

Projections (Sec. 2 and App. S7):

* ``"dense"``: ``P`` is ``D x d`` with i.i.d. Gaussian entries, columns normalized to unit length (the paper's text;
  the authors' ``OffsetCreatorDenseProj`` leaves them ``N(0, 1)``, which only rescales the learning rate). Memory
  ``D d``.
* ``"sparse"``: every column has ``k = ceil(sqrt(D))`` nonzeros ``+-1/sqrt(k)`` at distinct random rows (one
  uniformly in each of ``k`` equal strata of consecutive rows, so they are distinct at O(k) cost), so columns have
  unit norm exactly. This is the very sparse random projection of Li, Hastie & Church (2006; density
  ``1/sqrt(D)``) that the authors build with scikit-learn's ``SparseRandomProjection`` and then normalize
  (``OffsetCreatorSparseProj``), with the nonzero count per column fixed instead of Bernoulli so that shapes are
  static under ``jit``. Memory ``d sqrt(D)``, time ``O(d sqrt(D))``.
* ``"fastfood"``: ``P theta_d = (H G Pi H B pad_L(theta_d))[:D] / (sqrt(L sum G^2) sqrt(D / L))`` with ``L`` the
  next power of two >= D, ``H`` the (unnormalised) Walsh-Hadamard matrix, ``B`` random signs, ``Pi`` a random
  permutation and ``G`` Gaussian (Le et al., "Fastfood", 2013), transcribed from the authors' ``tf_fastfood_transform``
  (uber-research/intrinsic-dimension, ``keras_ext/rproj_layers_util.py`` at commit 2a7ebd25); columns have unit
  norm in expectation. Memory ``O(L)``, time ``O(L log L)``.
* ``"identity"``: ``P = I`` (``d = D``): subspace training is then ordinary training, a check of the wrapper.

The returned ``to_full`` is a ``jax.tree_util.Partial``: a pytree holding the projection's arrays, so it can be
passed *into* a jitted or vmapped train step instead of being baked into it as a constant.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from paperlab._tree import path_str

__all__ = ["subspace_params", "subspace_loss", "fast_walsh_hadamard", "d_int", "intrinsic_dimension"]

PyTree = Any
KINDS = ("dense", "sparse", "fastfood", "identity")


def fast_walsh_hadamard(x: jax.Array) -> jax.Array:
  """Unnormalised fast Walsh-Hadamard transform ``H x`` over the last axis (Sylvester order, ``H_1 = [1]``,
  ``H_2n = [[H_n, H_n], [H_n, -H_n]]``, equal to ``scipy.linalg.hadamard(L) @ x``); ``L`` must be a power of two.

  ``H_L = H_{2^a} (x) H_{2^b} (x) ...`` (Kronecker), so ``x`` is reshaped to ``(2^a, 2^b, ...)`` with factors of at
  most 64 and each axis is multiplied by its small Hadamard matrix: ``O(L log L)`` work as dense BLAS products,
  several times faster on CPU than the ``log2 L`` butterfly passes.
  """
  x = jnp.asarray(x)
  n = x.shape[-1]
  if n < 1 or n & (n - 1):
    raise ValueError(f"x's last axis must have a power-of-two length, got {n}.")
  lead, bits, dims = x.shape[:-1], n.bit_length() - 1, []
  while bits > 0:
    dims.append(1 << min(6, bits))
    bits -= min(6, bits)
  y = x.reshape(lead + tuple(dims))
  for i, d in enumerate(dims):
    axis = len(lead) + i
    y = jnp.moveaxis(jnp.tensordot(y, jnp.asarray(_hadamard(d), x.dtype), axes=[[axis], [1]]), -1, axis)
  return y.reshape(lead + (n,))


@functools.lru_cache(maxsize=None)
def _hadamard(d: int) -> np.ndarray:
  h = np.ones((1, 1), np.int8)
  while h.shape[0] < d:
    h = np.block([[h, h], [h, -h]])
  return h


def _dense_full(unravel, theta0, proj, theta_d):
  return unravel(theta0 + proj @ theta_d.astype(proj.dtype))


def _sparse_full(unravel, theta0, rows, values, theta_d):
  contrib = values * theta_d.astype(values.dtype)[:, None]
  return unravel(theta0 + jax.ops.segment_sum(contrib.reshape(-1), rows.reshape(-1), theta0.shape[0]))


def _fastfood_full(unravel, dim, theta0, signs, perm, gauss, theta_d):
  big = signs.shape[0]
  v = jnp.zeros((big,), signs.dtype).at[: theta_d.shape[0]].set(theta_d.astype(signs.dtype)) * signs
  v = fast_walsh_hadamard(v)[perm] * gauss
  v = fast_walsh_hadamard(v)[:dim]
  divisor = jnp.sqrt(big * jnp.sum(gauss**2)) * math.sqrt(dim / big)
  return unravel(theta0 + v / divisor)


def _identity_full(unravel, theta0, theta_d):
  return unravel(theta0 + theta_d.astype(theta0.dtype))


def subspace_params(key: jax.Array, params0: PyTree, d: int, *, kind: str = "dense"
                    ) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
  """Set up subspace training ``theta = theta_0 + P theta_d`` (Li et al., arXiv:1804.08838, Eq. 2).

  Args:
    key: PRNG key of the projection.
    params0: ``theta_0``, the frozen random initialization (a pytree of floating arrays).
    d: subspace dimension (static), ``1 <= d <= D``; ``d = D`` for ``kind="identity"``.
    kind: ``"dense"`` (the paper's default for small nets), ``"sparse"``, ``"fastfood"`` or ``"identity"`` (see
      the module).

  Returns:
    ``(theta_d0, to_full)``: the zero start ``(d,)`` in ``params0``'s float dtype, and ``to_full(theta_d) ->
    params`` (a ``jax.tree_util.Partial``, differentiable in ``theta_d``; pass it into jitted functions as an
    argument). Train ``theta_d`` with any optax optimizer on :func:`subspace_loss`.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}.")
  for path, leaf in jax.tree_util.tree_flatten_with_path(params0)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(f"params0: every leaf must be floating point, got {jnp.result_type(leaf)} at "
                      f"{path_str(path)!r}.")
  theta0, unravel = ravel_pytree(params0)
  dim = theta0.shape[0]
  if dim == 0:
    raise ValueError("params0 must hold at least one parameter, got an empty pytree.")
  if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= dim:
    raise ValueError(f"d must be an int in [1, D={dim}], got {d!r}.")
  dtype = theta0.dtype
  theta_d0 = jnp.zeros((d,), dtype)
  if kind == "identity":
    if d != dim:
      raise ValueError(f"kind='identity' needs d == D={dim}, got d={d}.")
    return theta_d0, Partial(functools.partial(_identity_full, unravel), theta0)
  if kind == "dense":
    proj = jax.random.normal(key, (dim, d), dtype)
    proj = proj / jnp.linalg.norm(proj, axis=0, keepdims=True)
    return theta_d0, Partial(functools.partial(_dense_full, unravel), theta0, proj)
  if kind == "sparse":
    nnz = math.ceil(math.sqrt(dim))
    k_rows, k_signs = jax.random.split(key)
    starts = (np.arange(nnz + 1) * dim) // nnz  # nnz disjoint, non-empty strata of consecutive rows
    u = jax.random.uniform(k_rows, (d, nnz), jnp.float32)
    rows = jnp.asarray(starts[:-1]) + jnp.floor(u * jnp.asarray(np.diff(starts), jnp.float32)).astype(jnp.int32)
    values = jax.random.rademacher(k_signs, (d, nnz), dtype) / jnp.sqrt(jnp.asarray(nnz, dtype))
    return theta_d0, Partial(functools.partial(_sparse_full, unravel), theta0, rows.astype(jnp.int32), values)
  big = 1 << max(0, (dim - 1).bit_length())
  k_sign, k_perm, k_gauss = jax.random.split(key, 3)
  signs = jax.random.rademacher(k_sign, (big,), dtype)
  perm = jax.random.permutation(k_perm, big)
  gauss = jax.random.normal(k_gauss, (big,), dtype)
  return theta_d0, Partial(functools.partial(_fastfood_full, unravel, dim), theta0, signs, perm, gauss)


def subspace_loss(loss_fn: Callable[..., Any], to_full: Callable[[jax.Array], PyTree]) -> Callable[..., Any]:
  """``loss_fn`` re-expressed in ``theta_d``: ``(theta_d, *args) -> loss_fn(to_full(theta_d), *args)``, so
  ``optax`` updates only the ``d`` subspace coordinates (Li et al., arXiv:1804.08838, Sec. 2)."""
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
  return lambda theta_d, *args, **kwargs: loss_fn(to_full(theta_d), *args, **kwargs)


def d_int(d_grid: Sequence[int], scores: Sequence[float], baseline: float, threshold: float = 0.9) -> int | None:
  """The smallest ``d`` of the grid whose score reaches ``threshold * baseline`` (``d_int90`` for the default 0.9;
  Li et al., arXiv:1804.08838, Sec. 2), or ``None`` when no grid point does. Scores are higher-is-better
  (accuracy). Host-side (plain NumPy)."""
  d_grid, scores = np.asarray(d_grid), np.asarray(scores, np.float64)
  if d_grid.ndim != 1 or d_grid.shape != scores.shape or d_grid.size == 0:
    raise ValueError(f"d_grid and scores must be 1-D of the same non-zero length, got {d_grid.shape} and "
                     f"{scores.shape}.")
  if np.any(np.diff(d_grid) <= 0):
    raise ValueError(f"d_grid must be strictly increasing, got {d_grid.tolist()}.")
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}.")
  hits = np.nonzero(scores >= threshold * baseline)[0]
  return int(d_grid[hits[0]]) if hits.size else None


def intrinsic_dimension(train_fn: Callable[[int], float], d_grid: Sequence[int], baseline: float,
                        threshold: float = 0.9) -> tuple[int | None, list[float]]:
  """Measure ``d_int`` (Li et al., arXiv:1804.08838, Sec. 2): ``train_fn(d) -> score`` trains in a random
  ``d``-dimensional subspace (e.g. with :func:`subspace_params`) and returns its performance; every ``d`` of the
  grid is trained (the host loop compiles one program per ``d``).

  Returns:
    ``(d_int, scores)``: :func:`d_int` of the scores, and the score of every grid point.
  """
  scores = [float(train_fn(int(d))) for d in d_grid]
  return d_int(d_grid, scores, baseline, threshold), scores
