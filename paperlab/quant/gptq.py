"""GPTQ: layer-wise second-order post-training quantization (Frantar et al., "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", arXiv:2210.17323, ICLR 2023).

GPTQ quantizes a layer's weight column by column (a column is one *input* feature, i.e. one row of a Flax kernel)
and, after each column, moves the rounding error onto the not-yet-quantized columns through the inverse Hessian of
the layer-output objective ``||X W - X W_hat||^2`` (Eq. 3 of the paper, the OBS update of Eq. 2 restricted to a
fixed column order), with H = 2 X^T X / n. :func:`gptq_layer` follows the official ``GPTQ.fasterquant`` of
IST-DASLab/gptq (``gptq.py``, commit 2d65066) step by step:

1. dead inputs (``H_ii == 0``) get ``H_ii = 1`` and a zero weight;
2. ``static_groups``: every group's grid is fixed up front from the (unpermuted) weight;
3. ``act_order`` (``--act-order``/``desc_act``): columns are processed in decreasing ``diag(H)``;
4. damping ``H += percdamp * mean(diag H) * I`` (``percdamp = 0.01``);
5. ``Hinv = cholesky(cholesky_inverse(cholesky(H)), upper=True)`` (the upper Cholesky factor of H^-1, Sec. 4
   "Cholesky reformulation");
6. lazy batch updates (Sec. 4 "Lazy batch-updates"): inside a block of ``blocksize = 128`` columns each column is
   rounded, ``err = (w - q) / Hinv_ii`` and the rest of the block gets ``-= err Hinv[i, i:]``; after the block the
   remaining columns get ``-= Err1 Hinv[block, rest]``;
7. group grids (``groupsize``) are found when a group starts, from the weight as it stands at the start of the
   current block (the official code reads ``W``, not the block copy ``W1``).

The integer grid is the official ``quant.py`` one (see :mod:`paperlab.quant.rtn`). Everything is float32 and runs
under ``jax.jit`` for one layer (the column loop is a ``lax.fori_loop`` per block; blocks are unrolled).
:func:`gptq_model` walks the Dense layers of a Flax NNX model in execution order (``--true-sequential``): each
layer's Hessian is measured on the inputs produced by the already-quantized earlier layers.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.quant.rtn import (QuantizedWeight, check_bits, check_finite, check_group_size, check_kernel,
                                dequantize_codes, grid_params, quantize_to_grid)

__all__ = ["hessian", "accumulate_hessian", "gptq_layer", "gptq_from_inputs", "gptq_model"]


def hessian(x: jax.Array) -> jax.Array:
  """GPTQ's layer Hessian ``H = 2 / n * X^T X`` (float32) from inputs ``x`` of shape ``(..., in)``, ``n`` tokens.

  The official ``add_batch`` divides by the number of *sequences*; the scale of H does not change GPTQ's result
  (damping is relative to ``mean(diag H)``), so tokens are counted here.
  """
  x = jnp.asarray(x)
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  return 2.0 / x.shape[0] * (x.T @ x)


def accumulate_hessian(h: jax.Array, count: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Streaming form of :func:`hessian`: fold a batch ``x`` (``(..., in)``) into the running mean ``h`` over
  ``count`` tokens (the official ``add_batch`` recursion); returns ``(h, count)``. Start from zeros and 0."""
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  new = count + x.shape[0]
  h = h * (count / new) + (2.0 / new) * (x.T @ x)
  return h, new


def _upper_cholesky_of_inverse(h: jax.Array) -> jax.Array:
  """``cholesky(cholesky_inverse(cholesky(h)), upper=True)`` of the official code."""
  lower = jnp.linalg.cholesky(h)
  hinv = jax.scipy.linalg.cho_solve((lower, True), jnp.eye(h.shape[0], dtype=h.dtype))
  return jnp.linalg.cholesky(hinv, upper=True)


def _row_params(slab: jax.Array, bits: int, symmetric: bool) -> tuple[jax.Array, jax.Array]:
  return grid_params(slab.min(axis=1), slab.max(axis=1), bits, symmetric)


@functools.partial(jax.jit, static_argnames=("group_size", "symmetric", "act_order", "static_groups",
                                             "blocksize"))
def _gptq(w: jax.Array, h: jax.Array, percdamp: jax.Array, bits: jax.Array, *, group_size: int, symmetric: bool,
          act_order: bool, static_groups: bool, blocksize: int):
  """The official loop on ``w`` in PyTorch layout ``(rows=out, columns=in)``."""
  rows, cols = w.shape
  grouped = group_size < cols
  g = group_size
  w = w.astype(jnp.float32)
  h = h.astype(jnp.float32)
  # per-channel grid: found on the weight before dead columns are zeroed, as in the official code
  chan_scale, chan_zero = _row_params(w, bits, symmetric)

  dead = jnp.diag(h) == 0
  eye = jnp.eye(cols, dtype=bool)
  h = jnp.where(eye & dead[None, :], 1.0, h)
  w = jnp.where(dead[None, :], 0.0, w)

  num_groups = cols // g
  if grouped and static_groups:
    static_s, static_z = jax.vmap(lambda s: _row_params(s, bits, symmetric), in_axes=1, out_axes=1)(
        w.reshape(rows, num_groups, g))
  perm = jnp.arange(cols)
  if act_order:
    perm = jnp.argsort(-jnp.diag(h), stable=True)
    w = w[:, perm]
    h = h[perm][:, perm]

  damp = percdamp * jnp.mean(jnp.diag(h))
  h = h + damp * jnp.eye(cols, dtype=h.dtype)
  hinv = _upper_cholesky_of_inverse(h)

  # pad the columns to whole blocks (+ one group, so a group slab never runs past the end); padded columns are
  # zero weights with an identity Hessian block: they quantize to 0 with no error and touch nothing else
  nblocks = -(-cols // blocksize)
  pad = nblocks * blocksize - cols + (g if grouped and not static_groups else 0)
  if pad:
    w = jnp.pad(w, ((0, 0), (0, pad)))
    hinv = jnp.pad(hinv, ((0, pad), (0, pad)))
    hinv = hinv + jnp.diag(jnp.concatenate([jnp.zeros(cols), jnp.ones(pad)]).astype(hinv.dtype))
    perm_p = jnp.concatenate([perm, jnp.arange(cols, cols + pad)])
  else:
    perm_p = perm

  codes_all, deq_all = [], []
  # grid of the group being processed and the grids of all groups (in processing order when not static)
  cur_s, cur_z = chan_scale, chan_zero
  rec_s = jnp.zeros((rows, num_groups + nblocks * blocksize // g + 1 if grouped else 1), jnp.float32)
  rec_z = jnp.zeros_like(rec_s)
  for b in range(nblocks):
    i1, i2 = b * blocksize, (b + 1) * blocksize
    hinv1 = hinv[i1:i2, i1:i2]
    w_start = w  # the official find_params reads W, which holds the block-start values

    def column(i, carry, i1=i1, hinv1=hinv1, w_start=w_start):
      w1, q1, c1, err1, cur_s, cur_z, rec_s, rec_z = carry
      c = i1 + i
      col = jax.lax.dynamic_index_in_dim(w1, i, axis=1, keepdims=False)
      d = hinv1[i, i]
      if grouped and static_groups:
        grp = perm_p[c] // g
        s = jax.lax.dynamic_index_in_dim(static_s, jnp.minimum(grp, num_groups - 1), axis=1, keepdims=False)
        z = jax.lax.dynamic_index_in_dim(static_z, jnp.minimum(grp, num_groups - 1), axis=1, keepdims=False)
      elif grouped:
        def refresh(args):
          _, _, rs, rz = args
          slab = jax.lax.dynamic_slice_in_dim(w_start, c, g, axis=1)
          s, z = _row_params(slab, bits, symmetric)
          rs = jax.lax.dynamic_update_index_in_dim(rs, s, c // g, axis=1)
          rz = jax.lax.dynamic_update_index_in_dim(rz, z, c // g, axis=1)
          return s, z, rs, rz
        cur_s, cur_z, rec_s, rec_z = jax.lax.cond(c % g == 0, refresh, lambda a: a, (cur_s, cur_z, rec_s, rec_z))
        s, z = cur_s, cur_z
      else:
        s, z = cur_s, cur_z
      code = quantize_to_grid(col, s, z, bits)
      q = dequantize_codes(code, s, z)
      e = (col - q) / d
      w1 = w1 - e[:, None] * hinv1[i][None, :]  # hinv1 is upper triangular: columns < i are untouched
      q1 = jax.lax.dynamic_update_index_in_dim(q1, q, i, axis=1)
      c1 = jax.lax.dynamic_update_index_in_dim(c1, code, i, axis=1)
      err1 = jax.lax.dynamic_update_index_in_dim(err1, e, i, axis=1)
      return w1, q1, c1, err1, cur_s, cur_z, rec_s, rec_z

    zeros = jnp.zeros((rows, blocksize), jnp.float32)
    carry = (w[:, i1:i2], zeros, zeros, zeros, cur_s, cur_z, rec_s, rec_z)
    _, q1, c1, err1, cur_s, cur_z, rec_s, rec_z = jax.lax.fori_loop(0, blocksize, column, carry)
    deq_all.append(q1)
    codes_all.append(c1)
    if i2 < w.shape[1]:
      w = w.at[:, i2:].add(-(err1 @ hinv[i1:i2, i2:]))

  q = jnp.concatenate(deq_all, axis=1)[:, :cols]
  codes = jnp.concatenate(codes_all, axis=1)[:, :cols]
  invperm = jnp.argsort(perm)
  q, codes = q[:, invperm], codes[:, invperm]
  if not grouped:
    scale, zero = chan_scale[:, None], chan_zero[:, None]
    g_idx = jnp.zeros(cols, jnp.int32)
  elif static_groups:
    scale, zero = static_s, static_z
    g_idx = jnp.arange(cols, dtype=jnp.int32) // g
  else:
    scale, zero = rec_s[:, :num_groups], rec_z[:, :num_groups]
    g_idx = (jnp.arange(cols, dtype=jnp.int32) // g)[invperm]  # group of each original column
  return q, codes, scale, zero, g_idx


def gptq_layer(w: jax.Array, h: jax.Array, *, bits: int = 4, group_size: int | None = None,
               symmetric: bool = False, act_order: bool = False, static_groups: bool = False,
               percdamp: float | jax.Array = 0.01, blocksize: int = 128) -> QuantizedWeight:
  """GPTQ quantization of one Flax kernel (Frantar et al., arXiv:2210.17323; Algorithm 1 with the official
  code's defaults): see the module docstring for the steps.

  Args:
    w: kernel ``(in, out)`` (the transpose of the PyTorch ``weight``).
    h: Hessian ``(in, in)`` of the layer inputs, e.g. :func:`hessian` of the calibration inputs.
    bits: 2..8 (the paper: 4 and 3).
    group_size: input rows sharing a grid (``--groupsize``, 128 in the paper's grouped results); ``None`` is per
      output channel.
    symmetric: symmetric grid (``--sym``); asymmetric min-max by default as in the official scripts.
    act_order: process input features in decreasing ``diag(H)`` (``--act-order``).
    static_groups: with ``group_size`` and ``act_order``, fix every group's grid before the permutation
      (``--static-groups``), so groups stay contiguous in the original order.
    percdamp: damping as a fraction of ``mean(diag H)`` (0.01). May be a traced scalar.
    blocksize: lazy-update block width (128).

  Returns:
    :class:`~paperlab.quant.rtn.QuantizedWeight`; ``w_hat`` is the quantized kernel in ``w``'s dtype,
    ``scale``/``zero`` are ``(num_groups, out)`` and ``g_idx`` maps input rows to groups (irregular after
    ``act_order`` without ``static_groups``). Jittable with the non-array arguments static. The Cholesky steps
    need ``H + damp I`` positive definite; an indefinite H (e.g. ``percdamp=0`` with a rank-deficient H) gives NaN.

  Raises:
    ValueError: unsupported ``bits``; ``group_size`` not dividing ``in``; ``h`` not ``(in, in)``; non-finite
      ``w`` or ``h``; ``percdamp < 0``; ``blocksize`` not a positive int.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  g = check_group_size(group_size, w.shape[0])
  if not hasattr(h, "shape") or tuple(h.shape) != (w.shape[0], w.shape[0]):
    raise ValueError(f"h must be the ({w.shape[0]}, {w.shape[0]}) Hessian of the kernel's {w.shape[0]} inputs, "
                     f"got shape {getattr(h, 'shape', type(h).__name__)}.")
  check_finite("h", h)
  _checks.check_non_negative("percdamp", percdamp)
  if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
    raise ValueError(f"blocksize must be a positive int, got {blocksize!r}.")
  q, codes, scale, zero, g_idx = _gptq(w.T, jnp.asarray(h), jnp.asarray(percdamp, jnp.float32), jnp.float32(bits),
                                       group_size=g, symmetric=bool(symmetric), act_order=bool(act_order),
                                       static_groups=bool(static_groups), blocksize=blocksize)
  return QuantizedWeight(q.T.astype(w.dtype), codes.T.astype(jnp.uint8), scale.T, zero.T, g_idx)


def gptq_from_inputs(w: jax.Array, x: jax.Array, **kwargs: Any) -> QuantizedWeight:
  """:func:`gptq_layer` with the Hessian of calibration inputs ``x`` (``(..., in)``): ``gptq_layer(w, hessian(x))``."""
  check_finite("x", x)
  return gptq_layer(w, hessian(x), **kwargs)


def gptq_model(model, batches: Iterable[Any], *, bits: int = 4, group_size: int | None = None,
               symmetric: bool = False, act_order: bool = False, static_groups: bool = False,
               percdamp: float = 0.01, blocksize: int = 128, include: str | None = None,
               exclude: str | None = None):
  """GPTQ over the Dense (``nnx.Linear``) layers of a Flax NNX model, true-sequentially (``--true-sequential``).

  Layers are visited in the order the forward pass calls them; each layer's Hessian is measured on the
  calibration ``batches`` run through the model whose earlier layers are already quantized, so later layers
  compensate the earlier layers' error (as the official ``opt.py`` does block by block). The host loop runs one
  forward pass per layer; each layer's solve is jitted.

  Args:
    model: an ``nnx.Module``; it is not modified.
    batches: calibration inputs, each accepted by ``model(batch)``.
    bits, group_size, symmetric, act_order, static_groups, percdamp, blocksize: as :func:`gptq_layer`; a group
      size that does not divide a layer's input size raises.
    include, exclude: regexes on the layer path (``/``-joined, e.g. ``blocks/0/attn/qkv``) selecting layers.

  Returns:
    ``(quantized_model, {path: QuantizedWeight})``: a copy of the model with every selected kernel replaced by
    its dequantized GPTQ kernel, and the quantized tensors.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  def solve(path, kernel, h):
    out = kernel.shape[1]  # output channels are independent: pad them so layers share a compiled solve
    q = gptq_layer(calibration.pad_outputs(kernel), h, bits=bits, group_size=group_size, symmetric=symmetric,
                   act_order=act_order, static_groups=static_groups, percdamp=percdamp, blocksize=blocksize)
    return QuantizedWeight(q.w_hat[:, :out], q.codes[:, :out], q.scale[:, :out], q.zero[:, :out], q.g_idx)

  return calibration.sequential(model, batches, solve, statistic="hessian", include=include, exclude=exclude)
