"""Contrastive (InfoNCE / CLIP) losses, including a memory-bounded tiled implementation.

References:
  Cheng et al., "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss" (Inf-CL),
  https://arxiv.org/abs/2410.17243.
  Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP),
  https://arxiv.org/abs/2103.00020.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32

__all__ = ["info_nce_loss", "tiled_contrastive_loss"]


def _check_pair(x_emb: jax.Array, y_emb: jax.Array) -> None:
  if jnp.ndim(x_emb) != 2 or jnp.ndim(y_emb) != 2:
    raise ValueError(f"x_emb and y_emb must be [batch, dim] matrices, got shapes {jnp.shape(x_emb)} and "
                     f"{jnp.shape(y_emb)}.")
  if jnp.shape(x_emb) != jnp.shape(y_emb):
    raise ValueError(f"x_emb and y_emb must have the same shape (row i of each is a positive pair), got "
                     f"{jnp.shape(x_emb)} and {jnp.shape(y_emb)}.")


@_low_precision_in_float32
def info_nce_loss(x_emb: jax.Array, y_emb: jax.Array, temperature: chex.Numeric = 0.07, *,
                  symmetric: bool = True) -> jax.Array:
  """Dense InfoNCE / CLIP loss per row (materialises the ``B x B`` similarity matrix).

  With ``s_ij = x_i . y_j / temperature`` the row loss is ``LSE_j s_ij - s_ii`` (x -> y retrieval); with
  ``symmetric=True`` it is the average of that and the column form ``LSE_j s_ji - s_ii`` (y -> x), so
  ``mean(info_nce_loss(...))`` is CLIP's loss (Radford et al., 2021, Fig. 3; Inf-CL Eq. 1). Embeddings are used
  as given: L2-normalise them first for the cosine-similarity form.

  Args:
    x_emb: ``[B, D]`` embeddings (e.g. images).
    y_emb: ``[B, D]`` embeddings (e.g. texts); row i is the positive of ``x_emb[i]``.
    temperature: softmax temperature ``> 0`` (scalar; may be a traced, learnable value).
    symmetric: average both retrieval directions.

  Returns:
    ``[B]`` per-row losses.
  """
  _check_pair(x_emb, y_emb)
  _checks.check_positive("temperature", temperature)
  s = (x_emb @ y_emb.T) / temperature
  diag = jnp.diagonal(s)
  loss = jax.nn.logsumexp(s, axis=1) - diag
  if symmetric:
    loss = 0.5 * (loss + jax.nn.logsumexp(s, axis=0) - diag)
  return loss


def _tile(a: jax.Array, t: jax.Array, size: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(a, t * size, size, axis=0)


def _row_lse(x: jax.Array, y: jax.Array, inv_temp: jax.Array, tile: int, n: int) -> jax.Array:
  """``LSE_j (x_i . y_j * inv_temp)`` over the ``n`` valid columns, one ``tile x tile`` block at a time with the
  online (max, sum) update, so no ``B x B`` array exists."""
  bp = x.shape[0]
  num_tiles = bp // tile
  valid = jnp.arange(bp) < n

  def row_body(i, lse):
    xi = _tile(x, i, tile)

    def col_body(j, carry):
      m, l = carry
      s = (xi @ _tile(y, j, tile).T) * inv_temp
      s = jnp.where(_tile(valid, j, tile)[None, :], s, -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(s, axis=1))
      l = l * jnp.exp(m - m_new) + jnp.sum(jnp.exp(s - m_new[:, None]), axis=1)
      return m_new, l

    init = (jnp.full((tile,), -jnp.inf, x.dtype), jnp.zeros((tile,), x.dtype))
    m, l = jax.lax.fori_loop(0, num_tiles, col_body, init)
    return jax.lax.dynamic_update_slice_in_dim(lse, m + jnp.log(l), i * tile, axis=0)

  return jax.lax.fori_loop(0, num_tiles, row_body, jnp.zeros((bp,), x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _one_way(x, y, inv_temp, tile, n):
  lse = _row_lse(x, y, inv_temp, tile, n)
  return lse - jnp.sum(x * y, axis=1) * inv_temp


def _one_way_fwd(x, y, inv_temp, tile, n):
  lse = _row_lse(x, y, inv_temp, tile, n)
  return lse - jnp.sum(x * y, axis=1) * inv_temp, (x, y, inv_temp, lse)


def _one_way_bwd(tile, n, res, g):
  """Recompute each tile's probabilities ``P_ij = exp(s_ij - LSE_i)`` (Inf-CL Sec. 3.2):
  ``dx_i = g_i (sum_j P_ij y_j - y_i) / T``, ``dy_j = sum_i g_i P_ij x_i / T - g_j x_j / T``."""
  x, y, inv_temp, lse = res
  bp = x.shape[0]
  num_tiles = bp // tile
  valid = jnp.arange(bp) < n
  g = jnp.where(valid, g, 0.0)

  def row_body(i, carry):
    dx, dy, dinv = carry
    xi, gi, lsei = _tile(x, i, tile), _tile(g, i, tile), _tile(lse, i, tile)

    def col_body(j, carry):
      dxi, dy, dinv = carry
      yj = _tile(y, j, tile)
      dots = xi @ yj.T
      p = jnp.exp(dots * inv_temp - lsei[:, None])
      gp = jnp.where(_tile(valid, j, tile)[None, :], gi[:, None] * p, 0.0)
      dxi = dxi + gp @ yj
      dyj = _tile(dy, j, tile) + gp.T @ xi
      dy = jax.lax.dynamic_update_slice_in_dim(dy, dyj, j * tile, axis=0)
      return dxi, dy, dinv + jnp.sum(gp * dots)

    dxi, dy, dinv = jax.lax.fori_loop(0, num_tiles, col_body, (jnp.zeros_like(xi), dy, dinv))
    return jax.lax.dynamic_update_slice_in_dim(dx, dxi, i * tile, axis=0), dy, dinv

  init = (jnp.zeros_like(x), jnp.zeros_like(y), jnp.zeros((), x.dtype))
  dx, dy, dinv = jax.lax.fori_loop(0, num_tiles, row_body, init)
  dx = (dx - g[:, None] * y) * inv_temp
  dy = (dy - g[:, None] * x) * inv_temp
  dinv = dinv - jnp.sum(g * jnp.sum(x * y, axis=1))
  return dx, dy, jnp.reshape(dinv, jnp.shape(inv_temp)).astype(jnp.result_type(inv_temp))


_one_way.defvjp(_one_way_fwd, _one_way_bwd)


@_low_precision_in_float32
def tiled_contrastive_loss(x_emb: jax.Array, y_emb: jax.Array, temperature: chex.Numeric = 0.07, *,
                           tile_size: int = 1024, symmetric: bool = True) -> jax.Array:
  """InfoNCE / CLIP loss per row with memory ``O(tile_size^2 + B*D)`` instead of ``O(B^2)`` (Inf-CL).

  Implements Cheng et al., "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss"
  (arXiv:2410.17243), Sec. 3: the log-sum-exp of each row of ``s_ij = x_i . y_j / T`` is accumulated over
  ``tile_size x tile_size`` blocks with the online update ``m <- max(m, max s_tile)``,
  ``l <- l e^{m_old - m} + sum e^{s_tile - m}``, and the backward pass (a ``jax.custom_vjp``) recomputes each
  block's softmax from the saved LSE instead of storing the similarity matrix. Value and gradients (with respect to
  both embeddings and the temperature) equal :func:`info_nce_loss`. Only the single-device tiling is done here;
  Inf-CL's cross-device ring level would tile the outer loop over a mesh axis.

  Args:
    x_emb: ``[B, D]`` embeddings; L2-normalise them first for CLIP's cosine form.
    y_emb: ``[B, D]`` embeddings, row i the positive of ``x_emb[i]``.
    temperature: ``> 0`` scalar (traced values allowed; it receives a gradient).
    tile_size: block edge; the batch is zero-padded to a multiple of it and padded columns are masked out.
    symmetric: average the x -> y and y -> x directions (CLIP).

  Returns:
    ``[B]`` per-row losses; their mean is the contrastive loss.
  """
  _check_pair(x_emb, y_emb)
  _checks.check_positive("temperature", temperature)
  if not isinstance(tile_size, int) or isinstance(tile_size, bool) or tile_size < 1:
    raise ValueError(f"tile_size must be a positive int, got {tile_size!r}.")
  n = x_emb.shape[0]
  dtype = jnp.result_type(x_emb, y_emb, jnp.float32)
  tile = min(tile_size, n)
  pad = -n % tile
  x = jnp.pad(jnp.asarray(x_emb, dtype), ((0, pad), (0, 0)))
  y = jnp.pad(jnp.asarray(y_emb, dtype), ((0, pad), (0, 0)))
  inv_temp = 1.0 / jnp.asarray(temperature, dtype)
  loss = _one_way(x, y, inv_temp, tile, n)
  if symmetric:
    loss = 0.5 * (loss + _one_way(y, x, inv_temp, tile, n))
  return loss[:n]
