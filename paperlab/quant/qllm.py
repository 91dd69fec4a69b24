"""QLLM: channel reassembly and low-rank error correction for W4A4 (Liu et al., "QLLM: Accurate and Efficient
Low-Bitwidth Quantization for Large Language Models", arXiv:2310.08041, ICLR 2024).

Activation outliers concentrated in a few input channels ruin a per-tensor low-bit activation grid. QLLM
(Sec. 3.1, "adaptive channel reassembly") rewrites a linear layer ``y = x W`` (Flax kernel ``(in, out)``) so that
its input has no large channel and the same width:

* **channel disassembly** (Sec. 3.1, exact): channel ``j`` with ``max|x_j| > theta`` becomes ``T_j =
  ceil(max|x_j| / theta)`` sub-channels ``x_j / T_j`` and row ``j`` of ``W`` is repeated ``T_j`` times, so
  ``sum_t (x_j / T_j) w_j = x_j w_j``;
* **channel assembly** (Sec. 3.1, approximate): to keep the width, ``r = sum_j (T_j - 1)`` pairs of similar channels
  ``(i, k)`` are merged into one channel ``(x_i + x_k) / 2`` with row ``w_i + w_k``; the error of one merge is
  exactly ``x_i w_i + x_k w_k - (x_i + x_k)(w_i + w_k) / 2 = (x_i - x_k)(w_i - w_k) / 2``;
* **adaptive threshold** (Sec. 3.1, last paragraph): ``theta`` is chosen per layer by a grid search that minimizes
  the mean squared error between the full-precision output and the output computed from the quantized
  reassembled activations and weights;
* **low-rank error correction** (Sec. 3.2): low-rank weights ``A, B`` trained on a frozen quantized layer
  with a reconstruction loss against the full-precision output, then fused into the weights.

Section numbers are the paper's; its equations are implemented as stated above (equation numbers were not checked
against the paper's text). The steps follow the official code (github.com/ModelTC/QLLM, commit 4b0871e): ``reassembly/cr_module.py``
(``find_threshold``: thresholds from ``max_j max|x_j|`` down in ``max(100, int(max / 0.5))`` equal steps to
``min_j max|x_j|`` while the added channels stay within ``channel_ratio * in``, ``--channel_ratio 0.2`` in the
released scripts; assembly first, excluding the channels to be disassembled, then disassembly; the merged
activation is the pair's mean and the merged weight row the pair's sum), ``assembly/ca_module.py`` (the two
candidate sets are the even and the odd channels) and ``quantize/int_linear_lora.py`` (LoRA ``A (r, in)`` kaiming
uniform, ``B (out, r)`` zero). Differences, all stated where they occur: pairs are matched one-to-one by
``scipy.optimize.linear_sum_assignment`` on the exact merge error ``||x_i - x_k||^2 ||w_i - w_k||^2 / 4`` (the
official code takes each even channel's greedy nearest odd channel under a weight-summed distance, so two channels
may merge into one); the search also scores the no-op ``theta = max`` (the official loop skips it but falls back to
it); the low-rank weights are trained through the quantizer, ``Q(W + s A^T B^T)`` with a straight-through
estimator, so the fused kernel is on the weight grid and equals the trained one (the official LoRA layer adds
``s B A`` to ``Q(W)`` in full precision).

Representation: a :class:`ChannelMap` says how the new input is formed from the old one, ``x'_c = scale_c *
(x[source_c] + x[partner_c])`` (``partner_c = -1``: no second term); :func:`expand_act` applies it (a jittable
gather). Disassembly, assembly and the threshold search are host-side (the output width and the matching depend on
data; :func:`scipy.optimize.linear_sum_assignment` runs on the host); :func:`expand_act`,
:func:`disassembly_counts`, :func:`fake_quantize_activation` and the low-rank training loop are jittable.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from paperlab import _checks
from paperlab import peft as _peft
from paperlab.quant import qat as _qat
from paperlab.quant.rtn import check_bits, check_finite, check_kernel, dequantize_codes, grid_params, quantize_to_grid

__all__ = ["ChannelMap", "disassembly_counts", "channel_disassemble", "channel_assemble", "expand_act",
           "compose_maps", "identity_map", "qllm_thresholds", "fake_quantize_activation", "QLLMLayer", "qllm_layer",
           "lowrank_correction", "fuse_lowrank"]


class ChannelMap(NamedTuple):
  """A reassembled input ``x'_c = scale_c * (x[source_c] + (x[partner_c] if partner_c >= 0 else 0))``.

  Attributes:
    source: ``int32 (in',)`` the original channel of each new channel.
    partner: ``int32 (in',)`` the second original channel of a merged channel, ``-1`` otherwise.
    scale: ``float32 (in',)`` ``1 / T`` for a sub-channel, ``1 / 2`` for a merged pair, ``1`` otherwise.
  """

  source: jax.Array
  partner: jax.Array
  scale: jax.Array


def _host(a: np.ndarray) -> jax.Array:
  """A host array onto the device as is (``jnp.asarray`` of NumPy compiles a conversion per new shape)."""
  return jax.device_put(np.asarray(a))


def identity_map(width: int) -> ChannelMap:
  """The map that leaves a ``width``-channel input unchanged."""
  return ChannelMap(_host(np.arange(width, dtype=np.int32)), _host(np.full((width,), -1, np.int32)),
                    _host(np.ones((width,), np.float32)))


def expand_act(x: jax.Array, cmap: ChannelMap) -> jax.Array:
  """The runtime gather of a reassembled layer: ``x (..., in) -> x' (..., in')`` (see :class:`ChannelMap`).

  Jittable; ``x' W'`` equals ``x W`` exactly for a disassembly and up to the merge terms for an assembly.
  """
  x = jnp.asarray(x)
  partner = jnp.take(x, jnp.maximum(cmap.partner, 0), axis=-1) * (cmap.partner >= 0)
  return ((jnp.take(x, cmap.source, axis=-1) + partner) * cmap.scale).astype(x.dtype)


def compose_maps(first: ChannelMap, second: ChannelMap) -> ChannelMap:
  """The map of ``expand_act(expand_act(x, first), second)`` when ``second`` never merges a channel of ``first``
  that is itself a merged pair (QLLM's order: assemble, then disassemble unmerged channels). Host-side."""
  f = [np.asarray(a) for a in first]
  g_src, g_par, g_scale = (np.asarray(a) for a in second)
  if np.any((g_par >= 0) & ((f[1][g_src] >= 0) | (f[1][np.maximum(g_par, 0)] >= 0))):
    raise ValueError("compose_maps: second merges a channel that first already merged (more than two sources).")
  partner = np.where(g_par >= 0, f[0][np.maximum(g_par, 0)], f[1][g_src])
  return ChannelMap(_host(f[0][g_src].astype(np.int32)), _host(partner.astype(np.int32)),
                    _host((f[2][g_src] * g_scale).astype(np.float32)))


# ----------------------------------------------------------------------------------------------------------------
# disassembly


def _check_absmax(x_absmax: Any) -> jax.Array:
  if not hasattr(x_absmax, "shape") or len(x_absmax.shape) != 1:
    raise ValueError(f"x_absmax must be a 1-D array (in,), got shape {getattr(x_absmax, 'shape', None)}.")
  check_finite("x_absmax", x_absmax)
  if isinstance(x_absmax, np.ndarray):  # host-side callers: convert on the host (no per-shape XLA convert)
    return _host(x_absmax.astype(np.float32))
  return jnp.asarray(x_absmax, jnp.float32)


def disassembly_counts(x_absmax: jax.Array, theta: float | jax.Array) -> jax.Array:
  """``T_j = max(ceil(max|x_j| / theta), 1)`` (arXiv:2310.08041, Sec. 3.1; ``find_outlier_channels`` of the official
  ``cr_module.py``), ``int32 (in,)``. Jittable."""
  x_absmax = _check_absmax(x_absmax)
  _checks.check_positive("theta", theta)
  return jnp.maximum(jnp.ceil(jnp.abs(x_absmax) / theta), 1.0).astype(jnp.int32)


def channel_disassemble(w: jax.Array, x_absmax: jax.Array, theta: float) -> tuple[jax.Array, ChannelMap]:
  """Channel disassembly (arXiv:2310.08041, Sec. 3.1): split every input channel with ``max|x_j| > theta``
  into ``T_j`` sub-channels ``x_j / T_j``, repeating row ``j`` of the kernel ``T_j`` times (``repeat_interleave``
  order, as the official code). Exact: ``expand_act(x, m) @ w' == x @ w``.

  Host-side: the new width ``sum_j T_j`` depends on the data.

  Args:
    w: kernel ``(in, out)``.
    x_absmax: ``(in,)`` per-channel ``max |x|`` over calibration tokens.
    theta: the outlier threshold, ``> 0``.

  Returns:
    ``(w' (sum T, out), ChannelMap)``.
  """
  w = check_kernel("w", w)
  x_absmax = _check_absmax(x_absmax)
  if x_absmax.shape[0] != w.shape[0]:
    raise ValueError(f"x_absmax must have length in = {w.shape[0]}, got {x_absmax.shape[0]}.")
  _checks.check_positive("theta", theta)
  counts = np.maximum(np.ceil(np.abs(np.asarray(x_absmax, np.float64)) / float(theta)), 1.0).astype(np.int64)
  source = np.repeat(np.arange(w.shape[0]), counts).astype(np.int32)
  cmap = ChannelMap(_host(source), _host(np.full(source.shape, -1, np.int32)),
                    _host((1.0 / counts[source]).astype(np.float32)))
  return _host(np.asarray(w)[source]), cmap


# ----------------------------------------------------------------------------------------------------------------
# assembly


def _merge_costs(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """``cost[a, b] = ||x_{2a} - x_{2b+1}||^2 ||w_{2a} - w_{2b+1}||^2 / 4``: the squared Frobenius norm (over
  calibration tokens and output channels) of the error of merging even channel ``2a`` with odd channel ``2b+1``."""
  xa, xb, wa, wb = x[:, ::2], x[:, 1::2], w[::2], w[1::2]
  dx = (xa ** 2).sum(0)[:, None] + (xb ** 2).sum(0)[None] - 2.0 * xa.T @ xb
  dw = (wa ** 2).sum(1)[:, None] + (wb ** 2).sum(1)[None] - 2.0 * wa @ wb.T
  return np.maximum(dx, 0.0) * np.maximum(dw, 0.0) / 4.0


def _assembly_pairs(costs: np.ndarray, n_merge: int, exclude: np.ndarray) -> np.ndarray:
  """``(n_merge, 2)`` original channel pairs: one-to-one matching of even to odd channels
  (``linear_sum_assignment``), keeping the ``n_merge`` cheapest edges; channels in ``exclude`` never merge."""
  costs = costs.copy()
  big = np.inf
  costs[exclude[::2]] = big
  costs[:, exclude[1::2]] = big
  finite = np.where(np.isfinite(costs), costs, 1e300)
  rows, cols = scipy.optimize.linear_sum_assignment(finite)
  ok = np.isfinite(costs[rows, cols])
  rows, cols = rows[ok], cols[ok]
  if n_merge > rows.size:
    raise ValueError(f"n_merge={n_merge} exceeds the {rows.size} channel pairs available for assembly (at most "
                     "half the channels that are not excluded).")
  keep = np.argsort(costs[rows, cols], kind="stable")[:n_merge]
  return np.stack([2 * rows[keep], 2 * cols[keep] + 1], axis=1)


def _assembly_from_pairs(w: jax.Array, pairs: np.ndarray) -> tuple[jax.Array, ChannelMap]:
  width = w.shape[0]
  dropped = np.zeros(width, bool)
  dropped[pairs[:, 1]] = True
  partner = np.full(width, -1, np.int64)
  partner[pairs[:, 0]] = pairs[:, 1]
  keep = np.nonzero(~dropped)[0]
  src, par = keep.astype(np.int32), partner[keep].astype(np.int32)
  scale = np.where(par >= 0, 0.5, 1.0).astype(np.float32)
  wn = np.asarray(w)
  w_new = wn[src] + np.where((par >= 0)[:, None], wn[np.maximum(par, 0)], 0).astype(wn.dtype)
  return _host(w_new.astype(wn.dtype)), ChannelMap(_host(src), _host(par), _host(scale))


def channel_assemble(w: jax.Array, x_calib: jax.Array, n_merge: int, *, exclude: Any = None
                     ) -> tuple[jax.Array, ChannelMap]:
  """Channel assembly (arXiv:2310.08041, Sec. 3.1): merge ``n_merge`` pairs of similar input channels.

  Candidates pair an even channel with an odd one (the official ``bipartite_soft_matching_x_w``); the cost of a
  pair is the squared Frobenius norm of its merge error on the calibration tokens, ``||x_i - x_k||^2 ||w_i -
  w_k||^2 / 4``; a one-to-one matching minimizing the total cost is found with
  ``scipy.optimize.linear_sum_assignment`` (host-side) and its ``n_merge`` cheapest pairs are merged into
  ``(x_i + x_k) / 2`` with row ``w_i + w_k``. The output error is then exactly ``sum_pairs (x_i - x_k) (w_i -
  w_k)^T / 2``.

  Args:
    w: kernel ``(in, out)``.
    x_calib: calibration inputs ``(..., in)``.
    n_merge: pairs to merge, ``0 <= n_merge``; at most the number of available pairs.
    exclude: optional boolean ``(in,)`` mask of channels that must not merge (QLLM excludes those it disassembles).

  Returns:
    ``(w'' (in - n_merge, out), ChannelMap)``.
  """
  w = check_kernel("w", w)
  x = np.asarray(x_calib, np.float64).reshape(-1, np.shape(x_calib)[-1])
  if x.shape[1] != w.shape[0]:
    raise ValueError(f"x_calib must have {w.shape[0]} channels (w's in), got {x.shape[1]}.")
  check_finite("x_calib", x)
  if isinstance(n_merge, bool) or not isinstance(n_merge, (int, np.integer)) or n_merge < 0:
    raise ValueError(f"n_merge must be a non-negative int, got {n_merge!r}.")
  exclude = np.zeros(w.shape[0], bool) if exclude is None else np.asarray(exclude, bool)
  if exclude.shape != (w.shape[0],):
    raise ValueError(f"exclude must be a boolean mask of shape ({w.shape[0]},), got {exclude.shape}.")
  if n_merge == 0:
    return w, identity_map(w.shape[0])
  pairs = _assembly_pairs(_merge_costs(x, np.asarray(w, np.float64)), int(n_merge), exclude)
  return _assembly_from_pairs(w, pairs)


# ----------------------------------------------------------------------------------------------------------------
# the threshold search


def qllm_thresholds(x_absmax: jax.Array, channel_ratio: float = 0.2) -> list[float]:
  """The official candidate thresholds (``find_threshold`` of ``cr_module.py``): from ``max_j max|x_j|`` down in
  steps of ``(max - min) / max(100, int(max / 0.5))`` while ``sum_j (T_j - 1) <= channel_ratio * in``, one
  threshold per change of the number of added channels (the first that reaches it; zero added channels is not a
  candidate, :func:`qllm_layer` scores that no-op separately). ``channel_ratio`` defaults to the released scripts'
  0.2. Host-side."""
  a = np.abs(np.asarray(_check_absmax(x_absmax), np.float64))
  _checks.check_range("channel_ratio", channel_ratio, 0.0, 1.0)
  top, bottom = float(a.max()), float(a.min())
  if top <= 0:
    return []
  steps = max(100, int(top / 0.5))
  step = (top - bottom) / steps
  limit = int(a.size * channel_ratio)
  out, previous, th = [], 0, top
  for _ in range(steps):
    if th < bottom or th <= 0:
      break
    extra = int(np.maximum(np.ceil(a / th), 1.0).sum()) - a.size
    if extra > limit:
      break
    if extra != previous:
      out.append(th)
      previous = extra
    th -= step
  return out


def fake_quantize_activation(x: jax.Array, bits: int, x_min: jax.Array | float, x_max: jax.Array | float
                             ) -> jax.Array:
  """Per-tensor static activation quantization on the min-max grid of :func:`paperlab.quant.grid_params`
  (asymmetric, zero inside the grid) for the calibrated range ``[x_min, x_max]``; values outside clip. Jittable."""
  scale, zero = grid_params(jnp.asarray(x_min, jnp.float32), jnp.asarray(x_max, jnp.float32), bits)
  return dequantize_codes(quantize_to_grid(x, scale, zero, bits), scale, zero).astype(x.dtype)


def _layer_loss(x, w, cmap, w_new, bits_w, bits_a, group_size):
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  xe = expand_act(x, cmap)
  xq = fake_quantize_activation(xe, bits_a, jnp.min(xe), jnp.max(xe))
  wq = _qat.fake_quantize(w_new.astype(jnp.float32), bits=bits_w, group_size=group_size)
  return jnp.mean(jnp.square(x @ w.astype(jnp.float32) - xq @ wq))


_layer_loss_jit = jax.jit(_layer_loss, static_argnums=(4, 5, 6))


class QLLMLayer(NamedTuple):
  """A reassembled layer: ``expand_act(x, cmap) @ w`` replaces ``x @ w_original`` (``w`` not yet quantized).

  Attributes:
    w: the reassembled kernel ``(in, out)`` (same width as the original).
    cmap: the :class:`ChannelMap` of its input.
    theta: the chosen threshold (``inf`` when no channel is disassembled).
    added: channels added by disassembly (= pairs merged).
    losses: ``{theta: quantized-output MSE}`` over the searched thresholds.
  """

  w: jax.Array
  cmap: ChannelMap
  theta: float
  added: int
  losses: dict


def _reassemble(w, x_absmax, theta, costs):
  counts = np.maximum(np.ceil(x_absmax / theta), 1.0)
  extra = int(counts.sum() - counts.size)
  if extra == 0:
    return w, identity_map(w.shape[0]), 0
  pairs = _assembly_pairs(costs, extra, counts > 1)
  w_a, m_a = _assembly_from_pairs(w, pairs)
  # the disassembly acts on the assembled channels; merged channels are never outliers (excluded above)
  w_d, m_d = channel_disassemble(w_a, x_absmax[np.asarray(m_a.source)], theta)
  return w_d, compose_maps(m_a, m_d), extra


def qllm_layer(w: jax.Array, x_calib: jax.Array, *, bits_w: int = 4, bits_a: int = 4,
               thetas: Sequence[float] | None = None, channel_ratio: float = 0.2,
               group_size: int | None = None) -> QLLMLayer:
  """QLLM's adaptive channel reassembly of one layer (arXiv:2310.08041, Sec. 3.1): for each candidate ``theta``,
  assemble ``r = sum_j (T_j - 1)`` pairs of non-outlier channels and disassemble the outliers (width unchanged),
  then keep the ``theta`` whose W``bits_w``A``bits_a`` output is closest (MSE) to the full-precision output on
  ``x_calib``. Activations are quantized per tensor (min-max range of the calibration activations), weights per
  output channel (or per ``group_size`` rows) on the asymmetric min-max grid. ``theta = inf`` (no reassembly) is
  always a candidate. Host loop over thresholds; one compiled loss serves them all (the width is constant).

  Args:
    w: kernel ``(in, out)``; ``in`` must be at least 2.
    x_calib: calibration inputs ``(..., in)`` of the full-precision layer.
    bits_w, bits_a: weight and activation bits, 2..8.
    thetas: candidate thresholds (each ``> 0``); ``None`` is :func:`qllm_thresholds` with ``channel_ratio``.
    channel_ratio: the bound on added channels for the default candidates, in ``[0, 1]`` (scripts: 0.2).
    group_size: weight group size, ``None`` per output channel.

  Returns:
    :class:`QLLMLayer`.
  """
  w = check_kernel("w", w)
  bits_w, bits_a = check_bits(bits_w), check_bits(bits_a)
  x = jnp.asarray(x_calib, jnp.float32).reshape(-1, np.shape(x_calib)[-1])
  if x.shape[1] != w.shape[0]:
    raise ValueError(f"x_calib must have {w.shape[0]} channels (w's in), got {x.shape[1]}.")
  check_finite("x_calib", x)
  x_absmax = jnp.max(jnp.abs(x), axis=0)
  if thetas is None:
    thetas = qllm_thresholds(x_absmax, channel_ratio)
  else:
    for t in thetas:
      _checks.check_positive("thetas[i]", t)
  costs = _merge_costs(np.asarray(x, np.float64), np.asarray(w, np.float64))
  best = (math.inf, w, identity_map(w.shape[0]), 0)
  losses = {math.inf: float(_layer_loss_jit(x, w, best[2], w, bits_w, bits_a, group_size))}
  best_loss = losses[math.inf]
  for theta in thetas:
    try:
      w_new, cmap, extra = _reassemble(w, np.asarray(x_absmax, np.float64), float(theta), costs)
    except ValueError:  # not enough channels to assemble for this theta
      continue
    loss = float(_layer_loss_jit(x, w, cmap, w_new, bits_w, bits_a, group_size))
    losses[float(theta)] = loss
    if loss < best_loss:
      best_loss, best = loss, (float(theta), w_new, cmap, extra)
  return QLLMLayer(best[1], best[2], best[0], best[3], losses)


# ----------------------------------------------------------------------------------------------------------------
# low-rank error correction


def _corrected(w, lora_a, lora_b, alpha, bits, group_size):
  delta = _peft.lora_delta(lora_a, lora_b, alpha)
  return _qat.fake_quantize(w.astype(jnp.float32) + delta, bits=bits, group_size=group_size)


_corrected_jit = jax.jit(_corrected, static_argnums=(3, 4, 5))


def lowrank_correction(w: jax.Array, x: jax.Array, y: jax.Array, key: jax.Array, *, bits: int = 4,
                       group_size: int | None = None, rank: int = 4, alpha: float | None = None, steps: int = 500,
                       learning_rate: float = 5e-4) -> tuple[jax.Array, jax.Array, jax.Array]:
  """QLLM's efficient error correction (arXiv:2310.08041, Sec. 3.2) for one layer: low-rank weights
  ``A (rank, in)``, ``B (out, rank)`` (peft layout; ``A`` kaiming-uniform, ``B`` zero, as the official
  ``LoRAQuantLinear``) minimize the reconstruction loss ``mean((x Q(W + s A^T B^T) - y)^2)`` with ``W`` frozen,
  through the weight quantizer ``Q`` with a straight-through estimator, by full-batch Adam (the official code:
  AdamW, lr 5e-4). ``x`` is the layer's input in the quantized model (already reassembled and activation-quantized)
  and ``y`` the full-precision model's output of the layer (without bias). Jittable training loop (``lax.scan``).

  Args:
    w: kernel ``(in, out)`` (full precision; reassembled if the layer was).
    x: ``(..., in)`` inputs; y: ``(..., out)`` targets.
    key: PRNG key for ``A``.
    bits, group_size: the weight grid.
    rank: ``1 <= rank <= min(in, out)``.
    alpha: LoRA scale numerator, ``s = alpha / rank``; ``None`` is ``rank`` (``s = 1``: the official ``lora_alpha``
      is not in the released scripts).
    steps: Adam steps (``>= 0``); learning_rate: ``> 0``.

  Returns:
    ``(lora_A, lora_B, losses[steps])``.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  d_in, d_out = w.shape
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(d_in, d_out):
    raise ValueError(f"rank must be an int in [1, {min(d_in, d_out)}], got {rank!r}.")
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
    raise ValueError(f"steps must be a non-negative int, got {steps!r}.")
  _checks.check_positive("learning_rate", learning_rate)
  if np.shape(x)[-1] != d_in:
    raise ValueError(f"x must have {d_in} channels (w's in), got shape {np.shape(x)}.")
  x = jnp.asarray(x, jnp.float32).reshape(-1, d_in)
  y = jnp.asarray(y, jnp.float32).reshape(-1, np.shape(y)[-1])
  if y.shape != (x.shape[0], d_out):
    raise ValueError(f"y must have shape (..., {d_out}) with the tokens of x, got {tuple(np.shape(y))}.")
  alpha = float(rank if alpha is None else alpha)
  bound = 1.0 / math.sqrt(d_in)
  lora_a = jax.random.uniform(key, (int(rank), d_in), jnp.float32, -bound, bound)
  lora_b = jnp.zeros((d_out, int(rank)), jnp.float32)
  return _train_lowrank(w, x, y, lora_a, lora_b, alpha, bits, group_size, int(steps), float(learning_rate))


@functools.partial(jax.jit, static_argnums=(5, 6, 7, 8))
def _train_lowrank(w, x, y, lora_a, lora_b, alpha, bits, group_size, steps, learning_rate):
  tx = optax.adam(learning_rate)

  def loss_fn(ab):
    return jnp.mean(jnp.square(x @ _corrected(w, ab[0], ab[1], alpha, bits, group_size) - y))

  def step(carry, _):
    ab, opt = carry
    loss, g = jax.value_and_grad(loss_fn)(ab)
    upd, opt = tx.update(g, opt, ab)
    return (optax.apply_updates(ab, upd), opt), loss

  ab = (lora_a, lora_b)
  (ab, _), losses = jax.lax.scan(step, (ab, tx.init(ab)), None, length=steps)
  return ab[0], ab[1], losses


def fuse_lowrank(w: jax.Array, lora_a: jax.Array, lora_b: jax.Array, *, bits: int = 4, group_size: int | None = None,
                 alpha: float | None = None) -> jax.Array:
  """The fused, quantized kernel ``Q(W + (alpha / r) A^T B^T)`` (the one :func:`lowrank_correction` trained;
  ``alpha=None`` is ``r``). Jittable."""
  w = check_kernel("w", w)
  bits = check_bits(bits)
  if lora_a.shape[1] != w.shape[0] or lora_b.shape[0] != w.shape[1] or lora_a.shape[0] != lora_b.shape[1]:
    raise ValueError(f"lora_A (r, in) and lora_B (out, r) must match w {tuple(w.shape)}, got {lora_a.shape} and "
                     f"{lora_b.shape}.")
  alpha = float(lora_a.shape[0] if alpha is None else alpha)
  return _corrected_jit(w, lora_a, lora_b, alpha, bits, group_size).astype(w.dtype)
