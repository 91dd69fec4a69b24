"""AWQ: activation-aware weight quantization (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration", arXiv:2306.00978, MLSys 2024).

A few input channels with large activations carry most of the output; AWQ protects them without mixed precision by
scaling: ``Q(W diag(s)) diag(s)^-1 x`` has a relative rounding error on channel j about ``1/s_j`` smaller
(Sec. 3.2, Eq. 4-5). Transcribed from the official mit-han-lab/llm-awq (commit d6e797a):

* scale search (``awq/quantize/auto_scale.py``, ``_search_module_scale``): ``s_x = mean|x|`` per input channel
  (``get_act_scale``); for ``ratio = i / n_grid``, ``i = 0..n_grid-1`` (``n_grid = 20``): ``s = clamp(s_x^ratio,
  1e-4)``, ``s /= sqrt(max(s) min(s))``, quantize ``W diag(s)`` and divide by ``s``; the loss is the mean squared
  *output* error of the block (``block_fn``) or, by default, of the layer itself (the official choice for
  ``out_proj``/``fc2``), and the first ratio with the smallest loss wins (Eq. 5, ``alpha`` in the paper);
* clip search (``awq/quantize/auto_clip.py``, ``auto_clip_layer``) on the scaled weight and the scaled inputs
  ``x / s``: per output channel and group, ``max_val = absmax * (1 - i / n_grid)`` for
  ``i < max_shrink * n_grid`` (``max_shrink = 0.5``), weights clamped to ``[-max_val, max_val]`` and quantized,
  error ``mean_tokens((x_g w_g - x_g Q(clamp(w_g)))^2)`` on every ``n // n_sample_token``-th token (512 tokens);
* the served weight is ``Q(clamp(W diag(s))) diag(s)^-1``; the official code folds ``1/s`` into the previous
  LayerNorm / Linear (``scale_ln_fcs``, ``scale_fc_fc``), :func:`fold_scale` does that on a parameter pytree.

The integer grid is :mod:`paperlab.quant.rtn`'s (GPTQ's min-max grid that contains 0; the official AWQ
``pseudo_quantize_tensor`` uses the group's raw min and max and clamps the scale at 1e-5): RTN, GPTQ and AWQ are
compared on one grid. Everything is float32 and jittable for one layer.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp

from paperlab.quant.rtn import (QuantizedWeight, check_bits, check_finite, check_group_size, check_kernel,
                                grouped_rtn, quantize_rtn)

__all__ = ["AWQWeight", "awq_search_scale", "awq_clip", "awq_layer", "awq_model", "fold_scale"]


class AWQWeight(NamedTuple):
  """AWQ's result for one kernel.

  Attributes:
    quantized: the RTN-quantized *scaled and clipped* kernel ``Q(clamp(diag(s) W))``.
    input_scale: ``s`` of shape ``(in,)``; the layer computes ``(x / s) @ dequantize(quantized)``.
    alpha: the chosen exponent (``ratio``).
    clip_max: ``(num_groups, out)`` clipping thresholds on the scaled kernel (``inf`` where clipping is off).
  """

  quantized: QuantizedWeight
  input_scale: jax.Array
  alpha: jax.Array
  clip_max: jax.Array

  @property
  def w_hat(self) -> jax.Array:
    """The effective dequantized kernel ``diag(s)^-1 Q(clamp(diag(s) W))`` in the original kernel's dtype."""
    q = self.quantized.w_hat
    return (q.astype(jnp.float32) / self.input_scale[:, None]).astype(q.dtype)


def _tokens(name: str, x: jax.Array, w: jax.Array) -> jax.Array:
  if not hasattr(x, "shape") or x.ndim < 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"{name} must have shape (..., {w.shape[0]}) (the kernel's inputs), got "
                     f"{getattr(x, 'shape', type(x).__name__)}.")
  check_finite(name, x)
  return jnp.asarray(x).reshape(-1, x.shape[-1]).astype(jnp.float32)


def _check_grid(n_grid: Any) -> int:
  if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 1:
    raise ValueError(f"n_grid must be a positive int, got {n_grid!r}.")
  return n_grid


def _ratio_scales(x_mean: jax.Array, ratio: jax.Array) -> jax.Array:
  s = jnp.maximum(x_mean ** ratio, 1e-4)
  return s / jnp.sqrt(jnp.max(s) * jnp.min(s))


@functools.partial(jax.jit, static_argnames=("group_size", "symmetric", "n_grid", "block_fn"))
def _search(w, x, bits, *, group_size, symmetric, n_grid, block_fn):
  x_mean = jnp.mean(jnp.abs(x), axis=0)
  fn = block_fn if block_fn is not None else (lambda kernel, inputs: inputs @ kernel)
  ref = fn(w, x)

  def loss(ratio):
    s = _ratio_scales(x_mean, ratio)
    q = grouped_rtn(w * s[:, None], bits, group_size, symmetric).w_hat
    return jnp.mean(jnp.square(ref - fn(q / s[:, None], x)))

  ratios = jnp.arange(n_grid, dtype=jnp.float32) / n_grid
  losses = jax.lax.map(loss, ratios)
  best = jnp.argmin(losses)  # the first minimum, as the official strict `<`
  return _ratio_scales(x_mean, ratios[best]), ratios[best], losses


def awq_search_scale(w: jax.Array, x: jax.Array, *, bits: int = 4, group_size: int | None = 128,
                     symmetric: bool = False, n_grid: int = 20,
                     block_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """AWQ's per-input-channel scale search (Eq. 5; official ``_search_module_scale``).

  Args:
    w: kernel ``(in, out)``.
    x: calibration inputs ``(..., in)`` of the layer.
    bits, group_size, symmetric: the RTN grid (AWQ: 4-bit asymmetric, ``group_size=128``).
    n_grid: number of exponents ``i / n_grid``, ``i < n_grid`` (20).
    block_fn: ``block_fn(kernel, x) -> output`` of the block the layer feeds (a hashable function; the loss is
      measured on its output). ``None``: the layer output ``x @ kernel``.

  Returns:
    ``(s, alpha, losses)``: scales ``(in,)``, the chosen exponent and the loss of every grid point.
  """
  w = check_kernel("w", w)
  x = _tokens("x", x, w)
  g = check_group_size(group_size, w.shape[0])
  return _search(w.astype(jnp.float32), x, jnp.float32(check_bits(bits)), group_size=g, symmetric=bool(symmetric),
                 n_grid=_check_grid(n_grid), block_fn=block_fn)


@functools.partial(jax.jit, static_argnames=("group_size", "symmetric", "n_grid", "max_shrink", "step"))
def _clip(w, x, bits, *, group_size, symmetric, n_grid, max_shrink, step):
  x = x[::step]
  ng = w.shape[0] // group_size
  wg = w.reshape(ng, group_size, w.shape[1])
  xg = x.reshape(x.shape[0], ng, group_size)
  org_out = jnp.einsum("tng,ngo->tno", xg, wg)
  org_max = jnp.max(jnp.abs(wg), axis=1)  # (ng, out)

  def body(carry, i):
    best_err, best_max = carry
    max_val = org_max * (1.0 - i / n_grid)
    q = grouped_rtn(w, bits, group_size, symmetric, max_val).w_hat
    cur_out = jnp.einsum("tng,ngo->tno", xg, q.reshape(wg.shape))
    err = jnp.mean(jnp.square(cur_out - org_out), axis=0)
    better = err < best_err
    return (jnp.where(better, err, best_err), jnp.where(better, max_val, best_max)), None

  init = (jnp.full(org_max.shape, 1e9, jnp.float32), org_max)
  (_, best_max), _ = jax.lax.scan(body, init, jnp.arange(int(max_shrink * n_grid), dtype=jnp.float32))
  return best_max


def awq_clip(w: jax.Array, x: jax.Array, *, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
             n_grid: int = 20, max_shrink: float = 0.5, n_sample_token: int = 512) -> jax.Array:
  """AWQ's weight-clipping search (official ``auto_clip_layer``): the per-(group, output channel) threshold
  ``absmax * (1 - i / n_grid)``, ``i < max_shrink * n_grid``, with the smallest group-output MSE on every
  ``max(1, n // n_sample_token)``-th token (the official stride; ``max(1, .)`` lets fewer than 512 tokens work).

  Returns:
    ``clip_max`` of shape ``(num_groups, out)`` for :func:`paperlab.quant.rtn.quantize_rtn`.
  """
  w = check_kernel("w", w)
  x = _tokens("x", x, w)
  g = check_group_size(group_size, w.shape[0])
  if not 0.0 <= float(max_shrink) < 1.0:
    raise ValueError(f"max_shrink must lie in [0, 1), got {max_shrink!r}.")
  if isinstance(n_sample_token, bool) or not isinstance(n_sample_token, int) or n_sample_token < 1:
    raise ValueError(f"n_sample_token must be a positive int, got {n_sample_token!r}.")
  step = max(1, x.shape[0] // n_sample_token)
  return _clip(w.astype(jnp.float32), x, jnp.float32(check_bits(bits)), group_size=g, symmetric=bool(symmetric),
               n_grid=_check_grid(n_grid), max_shrink=float(max_shrink), step=step)


def awq_layer(w: jax.Array, x: jax.Array, *, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
              n_grid: int = 20, max_shrink: float = 0.5, n_sample_token: int = 512, clip: bool = True,
              block_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None) -> AWQWeight:
  """AWQ for one kernel: :func:`awq_search_scale`, then :func:`awq_clip` on ``diag(s) W`` with inputs ``x / s``,
  then RTN of the clipped scaled kernel (official ``run_awq`` order: ``auto_scale`` -> ``apply_scale`` ->
  ``auto_clip`` -> quantize).

  Args:
    w, x, bits, group_size, symmetric, n_grid, block_fn: as :func:`awq_search_scale`.
    max_shrink, n_sample_token: as :func:`awq_clip`.
    clip: run the clip search (the official code skips it for query/key projections).

  Returns:
    :class:`AWQWeight`; ``.w_hat`` is the effective kernel.

  Raises:
    ValueError: unsupported ``bits``, a ``group_size`` that does not divide ``in``, ``x`` not ``(..., in)``,
      non-finite inputs.
  """
  w = check_kernel("w", w)
  xt = _tokens("x", x, w)
  s, alpha, _ = awq_search_scale(w, xt, bits=bits, group_size=group_size, symmetric=symmetric, n_grid=n_grid,
                                 block_fn=block_fn)
  ws = w.astype(jnp.float32) * s[:, None]
  g = check_group_size(group_size, w.shape[0])
  if clip:
    clip_max = awq_clip(ws, xt / s, bits=bits, group_size=group_size, symmetric=symmetric, n_grid=n_grid,
                        max_shrink=max_shrink, n_sample_token=n_sample_token)
  else:
    clip_max = jnp.full((w.shape[0] // g, w.shape[1]), jnp.inf, jnp.float32)
  qw = quantize_rtn(ws, bits=bits, group_size=group_size, symmetric=symmetric, clip_max=clip_max)
  return AWQWeight(qw._replace(w_hat=qw.w_hat.astype(w.dtype)), s, alpha, clip_max)


def awq_model(model, batches: Iterable[Any], *, bits: int = 4, group_size: int | None = 128,
              symmetric: bool = False, n_grid: int = 20, max_shrink: float = 0.5, n_sample_token: int = 512,
              include: str | None = None, exclude: str | None = None,
              no_clip: str | None = r"(^|/)(q|k|qk|qkv|query|key|q_proj|k_proj|Wqkv)$"):
  """AWQ over the Dense layers of a Flax NNX model: each layer's inputs come from the full-precision model (as
  the official ``run_awq``, which searches on the unquantized network), the loss is the layer output.

  Args:
    model: an ``nnx.Module`` (not modified); batches: calibration inputs.
    bits, group_size, symmetric, n_grid, max_shrink, n_sample_token: as :func:`awq_layer`.
    include, exclude: regexes on layer paths.
    no_clip: regex of layer paths whose clip search is skipped (the official code skips query/key projections,
      "due to qk bmm, it is hard to clip precisely").

  Returns:
    ``(quantized_model, {path: AWQWeight})``, the model holding the effective kernels ``diag(s)^-1 Q(.)``.
  """
  import re  # pylint: disable=g-import-not-at-top

  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  def solve(path, kernel, x):
    clip = no_clip is None or re.search(no_clip, path) is None
    out = kernel.shape[1]  # zero output columns add zero loss: pad so layers share a compiled search
    a = awq_layer(calibration.pad_outputs(kernel), x, bits=bits, group_size=group_size, symmetric=symmetric,
                  n_grid=n_grid, max_shrink=max_shrink, n_sample_token=n_sample_token, clip=clip)
    q = a.quantized
    q = QuantizedWeight(q.w_hat[:, :out], q.codes[:, :out], q.scale[:, :out], q.zero[:, :out], q.g_idx)
    return AWQWeight(q, a.input_scale, a.alpha, a.clip_max[:, :out])

  return calibration.sequential(model, batches, solve, statistic="inputs", include=include, exclude=exclude,
                                true_sequential=False)


def fold_scale(params: Any, prev_path: str, next_path: str, s: jax.Array) -> Any:
  """Fold AWQ/SmoothQuant input scales into the previous op: divide the previous LayerNorm's ``scale``/``bias``
  (or Linear's output columns of ``kernel``/``bias``) by ``s`` and multiply the next kernel's input rows by ``s``
  (official ``scale_ln_fcs`` / ``scale_fc_fc``). Exact in real arithmetic: the function of the network is
  unchanged. ``params`` is a nested dict or ``nnx.State``; paths are ``/``-joined; returns a new pytree.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  is_state = isinstance(params, nnx.State)
  flat = dict(nnx.to_flat_state(params)) if is_state else None

  def key(path, leaf):
    return tuple(int(p) if p.isdigit() else p for p in path.split("/")) + (leaf,)

  def get(k):
    if is_state:
      if k not in flat:
        raise ValueError(f"params has no leaf at {'/'.join(map(str, k))!r}.")
      return flat[k].get_value()
    node = params
    for p in k:
      try:
        node = node[p] if not isinstance(node, list) else node[int(p)]
      except (KeyError, IndexError, TypeError):
        raise ValueError(f"params has no leaf at {'/'.join(map(str, k))!r}.") from None
    return node

  s = jnp.asarray(s, jnp.float32)
  updates = {}
  prev_leaves = [l for l in ("scale", "kernel", "bias") if _has(get, key(prev_path, l))]
  if not prev_leaves:
    raise ValueError(f"prev_path {prev_path!r} has neither a LayerNorm scale nor a Linear kernel.")
  for leaf in prev_leaves:
    v = get(key(prev_path, leaf))
    if v.shape[-1] != s.shape[0]:
      raise ValueError(f"{prev_path}/{leaf} has {v.shape[-1]} output channels, s has {s.shape[0]}.")
    updates[key(prev_path, leaf)] = (v.astype(jnp.float32) / s).astype(v.dtype)
  k = get(key(next_path, "kernel"))
  if k.shape[0] != s.shape[0]:
    raise ValueError(f"{next_path}/kernel has {k.shape[0]} input rows, s has {s.shape[0]}.")
  updates[key(next_path, "kernel")] = (k.astype(jnp.float32) * s[:, None]).astype(k.dtype)

  if is_state:
    for kk, v in updates.items():
      flat[kk] = flat[kk].replace(v)
    return nnx.from_flat_state(list(flat.items()))
  out = jax.tree.map(lambda a: a, params)
  for kk, v in updates.items():
    node = out
    for p in kk[:-1]:
      node = node[p]
    node[kk[-1]] = v
  return out


def _has(get, k) -> bool:
  try:
    get(k)
    return True
  except ValueError:
    return False
