"""Quantization-aware training (QAT): fake quantization with straight-through gradients, LSQ / LSQ+ step sizes,
oscillation dampening and iterative freezing, and the learnable bit depth of self-compressing networks.

Every quantizer here is a pure, jittable function of the float weight (and its quantization parameters) whose
forward value is a point of an integer grid and whose gradient follows the paper's estimator:

* :func:`fake_quantize` -- the PTQ grid of :func:`paperlab.quant.quantize_rtn` (asymmetric or symmetric min-max,
  per tensor / output channel / group of input rows) with the straight-through estimator (STE) of Bengio et al.,
  "Estimating or Propagating Gradients Through Stochastic Neurons", arXiv:1308.3432. The forward value *is*
  ``quantize_rtn(w).w_hat`` bit for bit (same functions, same order of float operations), so a QAT model exported
  with :func:`export_qat_params` dequantizes to exactly what it was trained with.
* :func:`lsq_quantize` -- LSQ (Esser et al., "Learned Step Size Quantization", arXiv:1902.08153) and its offset
  ``beta`` of LSQ+ (Bhalgat et al., "LSQ+: Improving low-bit quantization through learnable offsets and better
  initialization", arXiv:2004.09576).
* :func:`oscillation_dampening_loss`, :func:`oscillation_init` / :func:`oscillation_update` /
  :func:`apply_frozen` -- Nagel et al., "Overcoming Oscillations in Quantization-Aware Training",
  arXiv:2203.11086 (the oscillation metric that Liu et al., "Oscillation-free Quantization for Low-bit Vision
  Transformers", arXiv:2302.02210, build on).
* :func:`self_compress_quantize` / :func:`bit_size_penalty` -- Csefalvay & Imber, "Self-Compressing Neural
  Networks", arXiv:2301.13142.

Model helpers work on parameter pytrees (``nnx.State`` or dicts) with path-regex rules as
:func:`paperlab.quant.quantize_params` does: :func:`fake_quantize_params` inside a loss,
:func:`lsq_init_steps` / :func:`lsq_quantize_params` for LSQ, and :func:`export_qat_params` /
:func:`export_lsq_params` to the packed :class:`~paperlab.quant.QArray`.

Layout: a Flax kernel is ``(in, out)``; groups run along the input axis (axis 0) as in :mod:`paperlab.quant.rtn`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.quant import _rules
from paperlab.quant import qarray as _qa
from paperlab.quant import rtn as _rtn

__all__ = [
    "round_ste", "clip_open", "fake_quantize", "lsq_quantize", "lsq_init_step", "lsq_grad_scale",
    "statsq_quantize", "cga_freeze_mask", "oscillation_dampening_loss", "OscillationState", "oscillation_init", "oscillation_update", "apply_frozen",
    "self_compress_quantize", "bit_size_penalty", "SCNN_INIT_BITS", "SCNN_INIT_EXPONENT", "SCNN_GAMMA",
    "fake_quantize_params", "lsq_init_steps", "lsq_quantize_params", "export_qat_params", "export_lsq_params",
]

PyTree = Any


# ----------------------------------------------------------------------------------------------------------------
# the straight-through estimator


@jax.custom_jvp
def round_ste(x: jax.Array) -> jax.Array:
  """``jnp.round(x)`` (half to even) in the forward pass, identity in the backward pass: the straight-through
  estimator (Bengio et al., arXiv:1308.3432; the ``round_pass`` of LSQ, arXiv:1902.08153). Unlike
  ``x + stop_gradient(round(x) - x)`` the forward value is exactly ``round(x)``."""
  return jnp.round(x)


@round_ste.defjvp
def _round_ste_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return jnp.round(x), t


@jax.custom_jvp
def _straight_through(w: jax.Array, w_hat: jax.Array) -> jax.Array:
  """Value ``w_hat``, tangent (and so gradient) of ``w``: the STE around a whole quantizer."""
  del w
  return w_hat


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
  return primals[1], tangents[0]


@jax.custom_jvp
def clip_open(x: jax.Array, lo: float, hi: float) -> jax.Array:
  """``jnp.clip(x, lo, hi)`` whose derivative in ``x`` is 1 strictly inside ``(lo, hi)`` and 0 elsewhere, at the
  bounds included (PyTorch's ``clamp`` backward, which the official LSQ and EfficientQAT code rely on: after an
  integer rounding, weights land exactly on the bounds often; ``jnp.clip`` would give them 1/2). ``lo`` and ``hi``
  are constants (no gradient)."""
  return jnp.clip(x, lo, hi)


@clip_open.defjvp
def _clip_open_jvp(primals, tangents):
  x, lo, hi = primals
  inside = (x > lo) & (x < hi)
  return jnp.clip(x, lo, hi), jnp.where(inside, tangents[0], jnp.zeros_like(tangents[0]))


def _check_bits(bits: Any) -> int:
  return _rtn.check_bits(bits)


def fake_quantize(w: jax.Array, *, bits: int = 4, group_size: int | None = None, symmetric: bool = False,
                  per_tensor: bool = False) -> jax.Array:
  """Fake-quantize a kernel with the straight-through estimator: the forward value is the PTQ grid's, the gradient
  passes to ``w`` unchanged (Bengio et al., arXiv:1308.3432; the QAT baseline of Jacob et al., "Quantization and
  Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", arXiv:1712.05877).

  Forward: ``quantize_rtn(w, bits=bits, group_size=group_size, symmetric=symmetric).w_hat`` bit for bit (the grid
  of :mod:`paperlab.quant.rtn`: ``scale = (max - min) / (2^b - 1)``, ``q = clip(round(w / scale) + zero, 0,
  2^b - 1)``, ``w_hat = scale (q - zero)``, recomputed from the current ``w`` at every step). With
  ``per_tensor=True`` one ``(scale, zero)`` serves the whole tensor (any shape). Backward: ``dL/dw = dL/dw_hat``
  (the min-max grid covers every weight, so no weight is clipped and the STE is the identity).

  Args:
    w: floating kernel ``(in, out)`` (any shape when ``per_tensor``).
    bits: 2..8 (static).
    group_size: input rows per scale (static); ``None`` is one scale per output channel.
    symmetric: symmetric grid (zero point ``2^(b-1)``) instead of the asymmetric min-max grid.
    per_tensor: one scale for the whole tensor.

  Returns:
    The fake-quantized ``w`` (same shape and dtype). Jittable, vmappable.

  Raises:
    ValueError: unsupported ``bits``, a ``group_size`` that does not divide ``in``, a non-2-D ``w`` for per-channel
      or group quantization, non-finite concrete ``w``.
  """
  bits = _check_bits(bits)
  if per_tensor:
    if not (hasattr(w, "dtype") and jnp.issubdtype(w.dtype, jnp.floating)):
      raise TypeError(f"w must be a floating array, got {getattr(w, 'dtype', type(w).__name__)}.")
    _rtn.check_finite("w", w)
    w = jnp.asarray(w)
    w32 = w.astype(jnp.float32)
    scale, zero = _rtn.grid_params(jnp.min(w32), jnp.max(w32), bits, symmetric)
    w_hat = _rtn.dequantize_codes(_rtn.quantize_to_grid(w32, scale, zero, bits), scale, zero).astype(w.dtype)
  else:
    w = _rtn.check_kernel("w", w)
    g = _rtn.check_group_size(group_size, w.shape[0])
    w_hat = _rtn.grouped_rtn(w, bits, g, symmetric).w_hat
  return _straight_through(w, w_hat)


# ----------------------------------------------------------------------------------------------------------------
# LSQ / LSQ+


def _lsq_bounds(bits: int, signed: bool) -> tuple[int, int]:
  """``(Q_N, Q_P)`` of LSQ: signed ``[-2^(b-1), 2^(b-1) - 1]`` (lsq-net's default, non-narrow), unsigned
  ``[0, 2^b - 1]``."""
  return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def lsq_grad_scale(num_weights: int, bits: int, signed: bool = True) -> float:
  """LSQ's step-size gradient scale ``g = 1 / sqrt(N * Q_P)`` (Esser et al., arXiv:1902.08153, section 2.2), with
  ``N`` the number of weights the quantizer sees (lsq-net uses ``x.numel()`` also per channel)."""
  bits = _check_bits(bits)
  if not isinstance(num_weights, (int, np.integer)) or num_weights < 1:
    raise ValueError(f"num_weights must be a positive int, got {num_weights!r}.")
  return 1.0 / math.sqrt(num_weights * _lsq_bounds(bits, signed)[1])


def lsq_init_step(w: jax.Array, *, bits: int = 4, signed: bool = True, axis: int | Sequence[int] | None = None
                  ) -> jax.Array:
  """LSQ's initial step ``s = 2 <|w|> / sqrt(Q_P)`` (Esser et al., arXiv:1902.08153, section 2.1), the mean taken
  over ``axis`` with kept dims (``None``: per tensor, a scalar; ``axis=0`` of a kernel ``(in, out)``: one step per
  output channel, shape ``(1, out)``)."""
  bits = _check_bits(bits)
  w = jnp.asarray(w, jnp.float32)
  qp = _lsq_bounds(bits, signed)[1]
  mean_abs = jnp.mean(jnp.abs(w)) if axis is None else jnp.mean(jnp.abs(w), axis=axis, keepdims=True)
  return 2.0 * mean_abs / math.sqrt(qp)


def _grad_scale(x: jax.Array, scale: float | jax.Array) -> jax.Array:
  """Value ``x``, gradient ``scale * dL/dx`` (LSQ's ``grad_scale``)."""
  y = x * scale
  return jax.lax.stop_gradient(x - y) + y


def lsq_quantize(w: jax.Array, step: jax.Array, *, bits: int = 4, signed: bool = True,
                 grad_scale: float | None = None, offset: jax.Array | None = None) -> jax.Array:
  """LSQ fake quantization with a learnable step size (Esser et al., "Learned Step Size Quantization",
  arXiv:1902.08153, eqs. 1-3) and LSQ+'s learnable offset (Bhalgat et al., arXiv:2004.09576, eq. 3).

  ``w_hat = round(clip((w - beta) / s', -Q_N, Q_P)) * s' + beta`` with ``s' = s`` in value and ``g * dL/ds`` in
  gradient; ``round`` is straight-through. The gradients are the paper's eq. 3: ``dw_hat/ds = -v/s + round(v/s)``
  inside the range, ``-Q_N`` / ``Q_P`` outside, and ``dw_hat/dw = 1`` inside, ``0`` outside (``v = w - beta``).

  Args:
    w: float weight (any shape).
    step: positive step size broadcastable to ``w`` (a scalar, or ``(1, out)`` per output channel); init with
      :func:`lsq_init_step`.
    bits: 2..8 (static).
    signed: levels ``[-2^(b-1), 2^(b-1) - 1]`` (weights); ``False``: ``[0, 2^b - 1]`` (post-ReLU activations).
    grad_scale: ``g``; default ``1 / sqrt(w.size * Q_P)`` (:func:`lsq_grad_scale`).
    offset: LSQ+ ``beta`` broadcastable to ``w`` (``None``: no offset, plain LSQ).

  Returns:
    The fake-quantized ``w`` in float32.
  """
  bits = _check_bits(bits)
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"w must be a floating array, got {w.dtype}.")
  qn, qp = _lsq_bounds(bits, signed)
  g = lsq_grad_scale(int(w.size), bits, signed) if grad_scale is None else grad_scale
  s = _grad_scale(jnp.asarray(step, jnp.float32), g)
  v = w.astype(jnp.float32)
  if offset is not None:
    beta = _grad_scale(jnp.asarray(offset, jnp.float32), g)
    v = v - beta
  out = round_ste(clip_open(v / s, float(-qn), float(qp))) * s
  return out + beta if offset is not None else out


def statsq_quantize(w: jax.Array, *, bits: int = 2, axis: int | None = 0) -> jax.Array:
  """StatsQ (Liu et al., "Oscillation-free Quantization for Low-bit Vision Transformers", arXiv:2302.02210,
  section 4.1): the step is a statistic of the current weights, recomputed at every step and not learned,
  ``s = 2 mean|w| / sqrt(Q_P)`` over ``axis`` (LSQ's initialization, kept; per output channel with ``axis=0`` of
  a kernel), with no gradient through ``s``; then ``round(clip(w / s, -Q_N, Q_P)) s`` with the straight-through
  estimator (gradient 1 inside the range, 0 outside). There is no scale in the parameter tree. The catalogue marks
  the exact constant as unverified; this is LSQ's.
  """
  s = jax.lax.stop_gradient(lsq_init_step(w, bits=bits, signed=True, axis=axis))
  s = jnp.where(s > 0, s, 1.0)
  return lsq_quantize(w, s, bits=bits, signed=True, grad_scale=0.0)


def cga_freeze_mask(w: jax.Array, scale: jax.Array, threshold: float | jax.Array = 0.4) -> jax.Array:
  """Confidence-guided annealing's freeze mask (Liu et al., arXiv:2302.02210, section 4.2): a weight is confident
  when its latent value is far from a rounding boundary, ``c = 2 |w / s - floor(w / s) - 1/2|`` in [0, 1] (1 at a
  level, 0 on a boundary); weights with ``c >= threshold`` are frozen for the rest of training: zero their
  updates after the optimizer, ``jnp.where(mask, 0, update)`` (``optax.masked`` masks whole leaves, not
  elements). ``threshold``
  is the paper's hyperparameter (not given in the catalogue; 0.4 here).

  Returns:
    bool array of ``w``'s shape, True = frozen.
  """
  v = jnp.asarray(w, jnp.float32) / jnp.asarray(scale, jnp.float32)
  conf = 2.0 * jnp.abs(v - jnp.floor(v) - 0.5)
  return conf >= jnp.asarray(threshold, jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# oscillations (Nagel et al. 2022)


def _int_levels(w: jax.Array, scale: jax.Array, bits: int, signed: bool) -> jax.Array:
  qn, qp = _lsq_bounds(bits, signed)
  return jnp.clip(jnp.round(jnp.asarray(w, jnp.float32) / scale), -qn, qp)


def oscillation_dampening_loss(w: jax.Array, scale: jax.Array, *, bits: int = 4, signed: bool = True,
                               weight: float | jax.Array = 1.0) -> jax.Array:
  """Oscillation dampening (Nagel et al., "Overcoming Oscillations in Quantization-Aware Training",
  arXiv:2203.11086, eq. 7): ``lambda * sum((w - sg[s clip(round(w / s), -Q_N, Q_P)])^2)``, which pulls each latent
  weight toward the centre of its quantization bin (``sg`` = stop-gradient: the bin centre is a target, so
  ``dL/dw = 2 lambda (w - w_q)``). The paper anneals ``lambda`` with a cosine schedule; pass the current value as
  ``weight``.

  Returns:
    float32 scalar.
  """
  bits = _check_bits(bits)
  s = jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32))
  target = jax.lax.stop_gradient(_int_levels(w, s, bits, signed) * s)
  return jnp.asarray(weight, jnp.float32) * jnp.sum(jnp.square(jnp.asarray(w, jnp.float32) - target))


class OscillationState(NamedTuple):
  """Per-weight oscillation statistics (Nagel et al., arXiv:2203.11086, section 4).

  Attributes:
    prev_int: integer level at the previous step (float32).
    prev_dir: sign of the last non-zero change of the level (-1, 0, +1).
    frequency: EMA of "the level changed, in the direction opposite to its previous change".
    int_ema: EMA of the integer level (the value a frozen weight is fixed to, rounded).
    frozen: bool mask of frozen weights.
    frozen_int: the integer a frozen weight keeps.
  """
  prev_int: jax.Array
  prev_dir: jax.Array
  frequency: jax.Array
  int_ema: jax.Array
  frozen: jax.Array
  frozen_int: jax.Array


def oscillation_init(w_int: jax.Array) -> OscillationState:
  """Initial :class:`OscillationState` from the integer levels ``w_int`` at the first step."""
  q = jnp.asarray(w_int, jnp.float32)
  z = jnp.zeros_like(q)
  return OscillationState(q, z, z, q, jnp.zeros(q.shape, bool), q)


def oscillation_update(w_int: jax.Array, state: OscillationState, *, momentum: float | jax.Array = 0.01,
                       freeze_threshold: float | jax.Array | None = None) -> OscillationState:
  """One step of oscillation tracking and iterative weight freezing (Nagel et al., arXiv:2203.11086, section 4.2;
  defaults: EMA momentum ``m = 0.01``; the paper's freezing thresholds are 0.005-0.04 depending on the model).

  An oscillation at step ``t`` is a change of the integer level whose direction is opposite to the previous
  change: ``o_t = [Delta_t != 0] [sign(Delta_t) = -prev_dir]``; ``f_t = m o_t + (1 - m) f_{t-1}``. With a
  ``freeze_threshold``, weights with ``f_t > threshold`` are frozen (for good) to ``round(EMA of their level)``.

  Args:
    w_int: integer levels this step (e.g. ``round(clip(w / s))``), any shape.
    state: from :func:`oscillation_init` or the previous update.
    momentum: EMA momentum ``m`` in (0, 1].
    freeze_threshold: ``None`` to track only.

  Returns:
    The new state; ``state.frequency`` is the oscillation frequency, ``state.frozen`` the freeze mask.
  """
  q = jnp.asarray(w_int, jnp.float32)
  delta = q - state.prev_int
  direction = jnp.sign(delta)
  osc = (delta != 0) & (direction == -state.prev_dir)
  m = jnp.asarray(momentum, jnp.float32)
  freq = m * osc.astype(jnp.float32) + (1.0 - m) * state.frequency
  int_ema = m * q + (1.0 - m) * state.int_ema
  prev_dir = jnp.where(delta != 0, direction, state.prev_dir)
  frozen, frozen_int = state.frozen, state.frozen_int
  if freeze_threshold is not None:
    newly = (freq > jnp.asarray(freeze_threshold, jnp.float32)) & ~frozen
    frozen_int = jnp.where(newly, jnp.round(int_ema), frozen_int)
    frozen = frozen | newly
  return OscillationState(q, prev_dir, freq, int_ema, frozen, frozen_int)


def apply_frozen(w: jax.Array, scale: jax.Array, state: OscillationState) -> jax.Array:
  """Latent weights with the frozen ones set to ``scale * frozen_int`` (the bin centre they were frozen to), with
  no gradient through them (iterative freezing, Nagel et al., arXiv:2203.11086, section 4.2); mask their updates
  too (``optax.masked`` or ``jnp.where(state.frozen, 0, grad)``) so the latent value stays put."""
  w = jnp.asarray(w)
  fixed = (jnp.asarray(scale, jnp.float32) * state.frozen_int).astype(w.dtype)
  return jnp.where(state.frozen, jax.lax.stop_gradient(fixed), w)


# ----------------------------------------------------------------------------------------------------------------
# self-compressing networks (Csefalvay & Imber 2023)

SCNN_INIT_BITS = 2.0
"""Initial bit depth ``b`` of every channel in the paper's listing (arXiv:2301.13142, appendix)."""
SCNN_INIT_EXPONENT = -8.0
"""Initial exponent ``e`` (step ``2^-8``) of every channel in the paper's listing."""
SCNN_GAMMA = 0.05
"""Weight ``gamma`` of the bits-per-weight term in the paper's listing (``loss + 0.05 Q``)."""


def self_compress_quantize(w: jax.Array, b: jax.Array, e: jax.Array) -> jax.Array:
  """The differentiable quantizer of self-compressing networks (Csefalvay & Imber, "Self-Compressing Neural
  Networks", arXiv:2301.13142, eq. 1):

  ``q(w; b, e) = 2^e round(clip(2^-e w, -2^(relu(b) - 1), 2^(relu(b) - 1) - 1))``

  with ``round`` straight-through, so the bit depth ``b`` gets gradient through the clip bounds and the exponent
  ``e`` through the scale (both continuous, per output channel: shape ``(1, out)`` for a kernel ``(in, out)``).
  ``relu(b) = 0`` gives bounds ``[-0.5, -0.5]``, which rounds (half to even) to 0: the channel is removed.
  Paper init: ``b = 2`` (:data:`SCNN_INIT_BITS`), ``e = -8`` (:data:`SCNN_INIT_EXPONENT`).

  Returns:
    float32 array of ``w``'s shape.
  """
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"w must be a floating array, got {w.dtype}.")
  b = jax.nn.relu(jnp.asarray(b, jnp.float32))
  e = jnp.asarray(e, jnp.float32)
  half = jnp.exp2(b - 1.0)
  x = jnp.clip(jnp.exp2(-e) * w.astype(jnp.float32), -half, half - 1.0)
  return jnp.exp2(e) * round_ste(x)


def bit_size_penalty(bits: Sequence[jax.Array], shapes: Sequence[tuple[int, ...]]) -> jax.Array:
  """Average bits per weight ``Q = sum_l sum_c relu(b_lc) n_lc / sum_l N_l`` (Csefalvay & Imber,
  arXiv:2301.13142, section 3.1: a channel's bits times the weights it quantizes, over the total weight count);
  add ``gamma * Q`` (paper: :data:`SCNN_GAMMA`) to the task loss.

  Args:
    bits: per-layer bit depths, each broadcastable to its layer's weight shape (e.g. ``(1, out)``).
    shapes: the weight shapes, in the same order.

  Returns:
    float32 scalar, differentiable in ``bits``.
  """
  if len(bits) != len(shapes) or not bits:
    raise ValueError(f"bits and shapes must be non-empty and of equal length, got {len(bits)} and {len(shapes)}.")
  total_bits, total = jnp.float32(0.0), 0
  for b, shape in zip(bits, shapes):
    b = jnp.asarray(b, jnp.float32)
    n = int(np.prod(shape, dtype=np.int64))
    try:
      np.broadcast_shapes(b.shape, tuple(shape))
    except ValueError:
      raise ValueError(f"bit depth of shape {b.shape} does not broadcast to its weight shape {tuple(shape)}.") from None
    total_bits = total_bits + jnp.sum(jax.nn.relu(b)) * (n / b.size)
    total += n
  return total_bits / total


# ----------------------------------------------------------------------------------------------------------------
# models: path-regex rules over parameter pytrees


def _map_rules(params: PyTree, rules: Sequence[tuple[str, Any]], fn, what: str) -> PyTree:
  def spec_fn(pattern: str, spec: Any) -> dict | None:
    if spec is not None and not isinstance(spec, Mapping):
      raise ValueError(f"rule {pattern!r}: spec must be a dict of {what} arguments or None, got {spec!r}.")
    return None if spec is None else dict(spec)

  return _rules.map_rules(params, _rules.compile_rules(rules, spec_fn), fn, what)


def fake_quantize_params(params: PyTree, rules: Sequence[tuple[str, Any]]) -> PyTree:
  """Fake-quantize (STE, :func:`fake_quantize`) the leaves of a parameter pytree chosen by path-regex rules, for
  use inside a QAT loss: ``loss(nnx.merge(graphdef, fake_quantize_params(params, rules)), batch)``.

  Args:
    params: pytree of arrays (``nnx.State`` or dicts); paths are ``/``-joined keys (``"blocks/0/fc1/kernel"``).
    rules: ``(regex, spec)`` pairs matched with ``re.fullmatch`` (first match wins, as in
      :func:`paperlab.quant.quantize_params`); ``spec`` is a dict of :func:`fake_quantize` keyword arguments
      (``{"bits": 4, "group_size": 32}``) or ``None`` to keep matching leaves in float.

  Raises:
    ValueError: a rule that matches no floating leaf, or a :func:`fake_quantize` error prefixed with the path.
  """
  return _map_rules(params, rules, lambda p, w, kw: fake_quantize(w, **kw), "fake_quantize_params")


def export_qat_params(params: PyTree, rules: Sequence[tuple[str, Any]]) -> PyTree:
  """The trained leaves of :func:`fake_quantize_params` as packed :class:`~paperlab.quant.QArray` (``uint{bits}``
  codes with zero points, groups along axis 0, float32 scales); ``dequantize()`` equals the QAT forward value bit
  for bit. Host function (not jittable: packing validates concrete values). Same ``rules`` as in training."""
  def one(p, w, kw):
    kw = dict(kw)
    if kw.pop("per_tensor", False):
      raise ValueError("per_tensor fake quantization has no QArray layout here; export per channel or group.")
    bits = kw.get("bits", 4)
    return _rtn.to_qarray(_rtn.quantize_rtn(w, **kw), bits)
  return _map_rules(params, rules, one, "export_qat_params")


def lsq_init_steps(params: PyTree, rules: Sequence[tuple[str, Any]]) -> dict[str, jax.Array]:
  """``{path: step}`` LSQ steps (:func:`lsq_init_step`, per output channel: ``axis=0``, shape ``(1, out)``, unless
  the spec sets ``"per_tensor": True``) for the leaves the rules select; specs hold ``bits`` (and ``signed``)."""
  steps: dict[str, jax.Array] = {}

  def one(p, w, kw):
    axis = None if kw.get("per_tensor", False) else 0
    steps[p] = lsq_init_step(w, bits=kw.get("bits", 4), signed=kw.get("signed", True), axis=axis)
    return w
  _map_rules(params, rules, one, "lsq_init_steps")
  return steps


def lsq_quantize_params(params: PyTree, steps: Mapping[str, jax.Array], rules: Sequence[tuple[str, Any]]) -> PyTree:
  """LSQ fake quantization (:func:`lsq_quantize`) of the leaves the rules select, with the steps of
  :func:`lsq_init_steps` (train ``params`` and ``steps`` together); jittable."""
  def one(p, w, kw):
    if p not in steps:
      raise ValueError(f"no LSQ step for {p!r}; steps has {sorted(steps)}.")
    return lsq_quantize(w, steps[p], bits=kw.get("bits", 4), signed=kw.get("signed", True)).astype(w.dtype)
  return _map_rules(params, rules, one, "lsq_quantize_params")


def export_lsq_params(params: PyTree, steps: Mapping[str, jax.Array], rules: Sequence[tuple[str, Any]]) -> PyTree:
  """LSQ-trained leaves as packed signed :class:`~paperlab.quant.QArray` (``int{bits}``, the learned step as a
  float32 scale per output channel); ``dequantize()`` equals :func:`lsq_quantize`'s forward value bit for bit
  (``clip(round(v))`` and ``round(clip(v))`` agree for integer bounds). Host function. Only ``signed`` steps
  (weights) are exported."""
  def one(p, w, kw):
    if not kw.get("signed", True):
      raise ValueError("only signed LSQ quantizers (weights) export to a QArray.")
    bits = kw.get("bits", 4)
    s = jnp.asarray(steps[p], jnp.float32)
    if kw.get("per_tensor", False):
      return _qa.quantize(w, f"int{bits}", axis=None, scale=s.reshape(1), scale_dtype=jnp.float32)
    return _qa.quantize(w, f"int{bits}", axis=0, scale=s.reshape(1, -1), scale_dtype=jnp.float32)
  return _map_rules(params, rules, one, "export_lsq_params")
