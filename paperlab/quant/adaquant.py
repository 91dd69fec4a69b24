"""AdaQuant layer-wise calibration and bias tuning (Hubara et al., "Improving Post Training Neural Quantization:
Layer-wise Calibration and Integer Programming", arXiv:2006.10518).

**AdaQuant** (Sec. 3, Eq. 2) fits each layer on a small calibration set by minimizing the squared error between its
full-precision output and the output of its quantized version,

``min_{V, dw, dx} || W X - Q_dw(W + V) Q_dx(X) ||^2``,

where ``V`` is a *continuous* perturbation of the weights (not only an up/down rounding choice, unlike AdaRound)
and ``dw`` / ``dx`` are the weight and activation quantization parameters, all optimized jointly by Adam through the
straight-through estimator. The layer's bias is optimized too. In the *sequential* variant ``X`` is the input the
layer receives from the already-quantized earlier layers while the target stays the full-precision output.

The quantizer and the optimization loop are transcribed from the authors' official code (github:
papers-submission/CalibTIP, commit 05354a9): ``models/modules/quantize.py`` (``quantize_with_grad``: a min/offset +
range parametrization with the zero point rounded and clamped to the integer grid, round and clamp with
straight-through gradients; ``calculate_qparams``: the initial range, per output channel for weights and the
batch mean of per-sample minima / maxima for inputs) and ``utils/adaquant.py`` / ``BERT-base/src/mse_optimization.py``
(``adaquant``: four Adam optimizers with learning rates 1e-5 for the weights, 1e-3 for the bias, 1e-3 for the
weight quantization parameters, 1e-1 for the input quantization parameters, ``F.mse_loss`` on a random mini-batch
of 50 cached samples per step, 100 steps). The bias itself is kept in float here (the official layer quantizes it
to ``bits_w + bits_a`` bits, a negligible change).

**Bias tuning** (Sec. 5, "global statistics tuning"; the official ``--bias-tuning --update_only_th --kld_loss``
run): after the layer-wise step, only the biases of the whole quantized network are trained on the calibration set
to match the full-precision network's output distribution (KL divergence), :func:`bias_tuning`.

Layout: Flax kernels are ``(in, out)``; weight quantization parameters have shape ``(out,)`` (per output channel,
the official ``perC=True``), input ones are scalars (per tensor). Everything is float32; one layer's optimization is
one jitted ``lax.scan``.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab._tree import path_str
from paperlab.quant.qat import clip_open, round_ste
from paperlab.quant.rtn import check_bits, check_finite, check_kernel

__all__ = ["AdaQuantParams", "AdaQuantResult", "fake_quantize_range", "weight_qparams", "input_qparams",
           "adaquant_forward", "adaquant_loss", "adaquant_layer", "bias_tuning"]

_RANGE_MIN, _RANGE_MAX = 1e-6, 1e5


class AdaQuantParams(NamedTuple):
  """The trainable state of one AdaQuant layer.

  Attributes:
    kernel: the continuous weights ``W + V``, ``(in, out)``.
    bias: ``(out,)``.
    w_range, w_offset: weight quantization range and offset (the grid's lowest value), ``(out,)``.
    x_range, x_offset: input quantization range and offset, scalars.
  """

  kernel: jax.Array
  bias: jax.Array
  w_range: jax.Array
  w_offset: jax.Array
  x_range: jax.Array
  x_offset: jax.Array


class AdaQuantResult(NamedTuple):
  """What :func:`adaquant_layer` returns.

  Attributes:
    params: the optimized :class:`AdaQuantParams`.
    w_hat: the quantized kernel ``Q_dw(W + V)`` (on the integer grid of ``params``), ``(in, out)`` float32.
    losses: the per-step objective ``(iters,)``.
  """

  params: AdaQuantParams
  w_hat: jax.Array
  losses: jax.Array


def fake_quantize_range(x: jax.Array, value_range: jax.Array, offset: jax.Array, bits: int | jax.Array
                        ) -> jax.Array:
  """The official AdaQuant quantizer (CalibTIP ``quantize_with_grad``, signed grid), differentiable by STE.

  With ``qmin = -2^(b-1)``, ``qmax = qmin + 2^b - 1``, ``r = clip(range, 1e-6, 1e5)``, ``s = r / (2^b - 1)``:
  the zero point ``c = clip(round(qmin - offset / s), qmin, qmax)`` is an integer of the grid, ``z = (qmin - c) s``,
  and ``x_hat = round(clip((x + qmin s - z) / s, qmin, qmax)) s + z - qmin s``; i.e. the grid
  ``{s (k - c), k = qmin..qmax}`` starting near ``offset`` and spanning ``range``. ``round`` is half-to-even with
  the identity as derivative and ``clip`` has derivative 1 strictly inside its bounds (PyTorch's ``Round`` and
  ``clamp_``), so gradients reach ``x``, ``value_range`` and ``offset``. Jittable; ``bits`` may be traced;
  ``value_range`` / ``offset`` broadcast against ``x``.
  """
  x = jnp.asarray(x, jnp.float32)
  bits = jnp.asarray(bits, jnp.float32)
  qmin = -(2.0 ** (bits - 1.0))
  qmax = qmin + 2.0 ** bits - 1.0
  r = clip_open(jnp.asarray(value_range, jnp.float32), _RANGE_MIN, _RANGE_MAX)
  scale = r / (qmax - qmin)
  zp_round = round_ste(qmin - jnp.asarray(offset, jnp.float32) / scale)
  zero = (qmin - clip_open(zp_round, qmin, qmax)) * scale
  out = (x + (qmin * scale - zero)) / scale
  q = round_ste(clip_open(out, qmin, qmax))
  return q * scale + (zero - qmin * scale)


def _range_of(lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``calculate_qparams``' tail: the grid must hold 0 (``lo <= 0 <= hi``) and an empty range becomes 1."""
  lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
  r = hi - lo
  return jnp.where(r == 0, 1.0, r).astype(jnp.float32), lo.astype(jnp.float32)


def weight_qparams(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Initial ``(range, offset)`` of a kernel ``(in, out)``, per output channel (``(out,)`` each): the channel's
  ``max - min`` and ``min`` with 0 inside the range (CalibTIP ``calculate_qparams`` with ``reduce_dim=None``)."""
  w = check_kernel("w", w).astype(jnp.float32)
  return _range_of(w.min(axis=0), w.max(axis=0))


def input_qparams(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Initial per-tensor ``(range, offset)`` of layer inputs ``x`` ``(samples, ...)``: the mean over samples of each
  sample's minimum and maximum (CalibTIP's measure pass, ``calculate_qparams`` with ``reduce_dim=0``,
  ``reduce_type='mean'``), with 0 inside the range. Scalars (float32)."""
  if not hasattr(x, "shape") or len(x.shape) < 2:
    raise ValueError(f"x must have shape (samples, features...), got {getattr(x, 'shape', type(x).__name__)}.")
  check_finite("x", x)
  flat = jnp.asarray(x, jnp.float32).reshape(x.shape[0], -1)
  return _range_of(flat.min(axis=1).mean(), flat.max(axis=1).mean())


def adaquant_forward(params: AdaQuantParams, x: jax.Array, bits: int | jax.Array,
                     act_bits: int | jax.Array | None = None) -> jax.Array:
  """``Q_dx(x) Q_dw(W + V) + b`` (``act_bits=None``: inputs in float), the quantized layer of AdaQuant
  (arXiv:2006.10518, Eq. 2). float32 ``(..., out)``."""
  w_hat = fake_quantize_range(params.kernel, params.w_range, params.w_offset, bits)
  x = jnp.asarray(x, jnp.float32)
  if act_bits is not None:
    x = fake_quantize_range(x, params.x_range, params.x_offset, act_bits)
  return x @ w_hat + params.bias


def adaquant_loss(params: AdaQuantParams, x: jax.Array, y: jax.Array, bits: int | jax.Array,
                  act_bits: int | jax.Array | None = None) -> jax.Array:
  """AdaQuant's layer objective (arXiv:2006.10518, Eq. 2) as the official ``F.mse_loss``: the mean over tokens and
  output channels of ``(adaquant_forward(params, x) - y)^2``."""
  return jnp.mean(jnp.square(adaquant_forward(params, x, bits, act_bits) - y))


def _loss_switch(p, x, y, bits, act_bits, quantize_inputs):
  """:func:`adaquant_loss` with the input quantizer switched by a traced flag (one program for both modes)."""
  w_hat = fake_quantize_range(p.kernel, p.w_range, p.w_offset, bits)
  x = jnp.where(quantize_inputs, fake_quantize_range(x, p.x_range, p.x_offset, act_bits), x)
  return jnp.mean(jnp.square(x @ w_hat + p.bias - y))


@functools.partial(jax.jit, static_argnames=("iters", "batch_size"))
def _optimize(p0, x, y, key, bits, act_bits, lrs, quantize_inputs, keep_best, *, iters, batch_size):
  full_loss = lambda p: _loss_switch(p, x, y, bits, act_bits, quantize_inputs)
  # torch's Adam with one learning rate per parameter group == the lr-free Adam direction times a per-leaf lr
  tx = optax.scale_by_adam()

  def step(carry, _):
    p, opt_state, key, best, best_loss = carry
    key, sub = jax.random.split(key)
    if batch_size is None:
      xb, yb = x, y
    else:  # official: torch.randperm(n)[:batch_size] each step
      idx = jax.random.permutation(sub, x.shape[0])[:batch_size]
      xb, yb = x[idx], y[idx]
    loss, g = jax.value_and_grad(_loss_switch)(p, xb, yb, bits, act_bits, quantize_inputs)
    direction, opt_state = tx.update(g, opt_state, p)
    p = jax.tree.map(lambda a, d, lr: a - lr * d, p, direction, lrs)
    new_loss = full_loss(p)
    better = new_loss < best_loss
    best = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best)
    best_loss = jnp.minimum(new_loss, best_loss)
    return (p, opt_state, key, best, best_loss), loss

  init = (p0, tx.init(p0), key, p0, full_loss(p0))
  (p, _, _, best, _), losses = jax.lax.scan(step, init, None, length=iters)
  p = jax.tree.map(lambda a, b: jnp.where(keep_best, a, b), best, p)
  return p, fake_quantize_range(p.kernel, p.w_range, p.w_offset, bits), losses


def _tokens(name: str, x: Any, width: int) -> jax.Array:
  if not hasattr(x, "shape") or len(x.shape) < 2 or x.shape[-1] != width:
    raise ValueError(f"{name} must have shape (..., {width}), got {getattr(x, 'shape', type(x).__name__)}.")
  check_finite(name, x)
  return jnp.asarray(x, jnp.float32).reshape(-1, width)


def adaquant_layer(w: jax.Array, x_q: jax.Array, y_fp: jax.Array, *, bias: jax.Array | None = None, bits: int = 4,
                   act_bits: int | None = None, iters: int = 100, batch_size: int | None = 50, lr_w: float = 1e-5,
                   lr_b: float = 1e-3, lr_w_qparams: float = 1e-3, lr_x_qparams: float = 1e-1,
                   x_qparams: tuple[jax.Array, jax.Array] | None = None, keep_best: bool = True,
                   key: jax.Array | None = None) -> AdaQuantResult:
  """AdaQuant on one Dense layer (Hubara et al., arXiv:2006.10518, Eq. 2; official ``adaquant``, module doc).

  Starts from ``V = 0`` and the min/max grids (:func:`weight_qparams`, :func:`input_qparams`), so step 0 is plain
  round-to-nearest of the layer and Adam only moves away from it. Defaults are the official code's (100 steps,
  mini-batches of 50 samples, learning rates 1e-5 / 1e-3 / 1e-3 / 1e-1 for weights / bias / weight grid / input
  grid; "tuned for 8 bit" per its comment -- lower bit widths may want larger weight steps).

  Args:
    w: kernel ``(in, out)``.
    x_q: the layer's calibration inputs ``(..., in)`` as the (already quantized) network produces them.
    y_fp: the full-precision layer outputs ``x_fp w + b`` on the same tokens, ``(..., out)``.
    bias: ``(out,)`` (zeros if ``None``).
    bits: weight bits, 2..8. act_bits: input bits (2..8) or ``None`` for float inputs (weight-only).
    iters: Adam steps. batch_size: samples per step drawn with ``key``; ``None`` uses all (deterministic).
    lr_w, lr_b, lr_w_qparams, lr_x_qparams: Adam learning rates of the four parameter groups.
    x_qparams: initial input ``(range, offset)``; default :func:`input_qparams` of ``x_q``.
    keep_best: return the parameters (initial ones included) with the lowest objective on *all* of ``x_q``, a
      guard the official code lacks (it returns the last step, which the mini-batch noise of the input-grid step
      1e-1 can leave worse than the start); so the layer error never exceeds that of the initial min/max grid
      (round to nearest). ``False`` returns the last step, as the official code.
    key: PRNG key for the mini-batches (default ``jax.random.key(0)``).

  Returns:
    :class:`AdaQuantResult` (optimized parameters, quantized kernel, per-step losses).

  Raises:
    ValueError: bad shapes, ``bits``/``act_bits``, ``iters``, ``batch_size``, non-positive learning rates,
      non-finite inputs.
  """
  w = check_kernel("w", w).astype(jnp.float32)
  bits = check_bits(bits)
  if act_bits is not None:
    act_bits = check_bits(act_bits)
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
    raise ValueError(f"iters must be a positive int, got {iters!r}.")
  x_q = _tokens("x_q", x_q, w.shape[0])
  y_fp = _tokens("y_fp", y_fp, w.shape[1])
  if y_fp.shape[0] != x_q.shape[0]:
    raise ValueError(f"y_fp must hold one output per token of x_q ({x_q.shape[0]}), got {y_fp.shape[0]}.")
  if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or not 1 <= batch_size <= x_q.shape[0]):
    raise ValueError(f"batch_size must be None or an int in [1, {x_q.shape[0]}] (the number of tokens), "
                     f"got {batch_size!r}.")
  for name, lr in (("lr_w", lr_w), ("lr_b", lr_b), ("lr_w_qparams", lr_w_qparams), ("lr_x_qparams", lr_x_qparams)):
    _checks.check_non_negative(name, lr)
  b = jnp.zeros((w.shape[1],), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)
  if b.shape != (w.shape[1],):
    raise ValueError(f"bias must have shape ({w.shape[1]},), got {b.shape}.")
  w_range, w_offset = weight_qparams(w)
  if x_qparams is None:
    x_range, x_offset = input_qparams(x_q)
  else:
    if not (isinstance(x_qparams, (tuple, list)) and len(x_qparams) == 2
            and all(jnp.size(v) == 1 for v in x_qparams)):
      raise ValueError(f"x_qparams must be a (range, offset) pair of scalars, got {x_qparams!r}.")
    x_range, x_offset = (jnp.asarray(v, jnp.float32) for v in x_qparams)
  p0 = AdaQuantParams(w, b, w_range, w_offset, x_range.reshape(()), x_offset.reshape(()))
  lrs = AdaQuantParams(*(jnp.float32(v) for v in (lr_w, lr_b, lr_w_qparams, lr_w_qparams, lr_x_qparams,
                                                  lr_x_qparams)))
  key = jax.random.key(0) if key is None else key
  p, w_hat, losses = _optimize(p0, x_q, y_fp, key, jnp.float32(bits), jnp.float32(act_bits or 8), lrs,
                               jnp.bool_(act_bits is not None), jnp.bool_(keep_best), iters=iters,
                               batch_size=batch_size)
  return AdaQuantResult(p, w_hat, losses)


def _kl_to_reference(logits: jax.Array, ref_logits: jax.Array) -> jax.Array:
  ref = jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1)
  out = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(ref) * (ref - out), axis=-1))


def bias_tuning(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x_calib: jax.Array,
                ref_logits: jax.Array, *, select: str = r"(.*/)?bias", iters: int = 200, lr: float = 1e-3
                ) -> tuple[Any, jax.Array]:
  """Bias tuning of a quantized network (arXiv:2006.10518, Sec. 5; the official ``--bias-tuning --kld_loss``):
  Adam on the selected leaves only (the biases) to minimize ``KL(softmax(ref_logits) || softmax(apply_fn(params,
  x_calib)))`` over the calibration set, where ``ref_logits`` are the full-precision network's outputs. It corrects
  the mean shift that quantization adds to every layer's output.

  Args:
    apply_fn: ``(params, x) -> logits`` of the quantized network (static: one compiled program per function).
    params: a pytree; the leaves whose ``/``-joined path matches ``select`` (``re.fullmatch``) are trained.
    x_calib: calibration inputs. ref_logits: the full-precision logits on ``x_calib``.
    select: regex of the trained leaves (default: every ``bias``). iters: full-batch Adam steps. lr: Adam step.

  Returns:
    ``(params, losses)`` with the tuned leaves replaced and the per-step KL ``(iters,)``.

  Raises:
    ValueError: no leaf matches ``select``, bad ``iters``/``lr``, non-finite inputs.
  """
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
    raise ValueError(f"iters must be a positive int, got {iters!r}.")
  _checks.check_positive("lr", lr)
  check_finite("x_calib", x_calib)
  check_finite("ref_logits", ref_logits)
  rx = re.compile(select)
  paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  if not any(rx.fullmatch(p) for p in paths):
    raise ValueError(f"select={select!r} matches no leaf of params; its paths are {paths}.")
  return _tune(apply_fn, params, jnp.asarray(x_calib), jnp.asarray(ref_logits), jnp.float32(lr), iters, select)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _tune(apply_fn, params, x, ref, lr, iters, select):
  rx = re.compile(select)
  labels = jax.tree_util.tree_map_with_path(
      lambda p, _: "tune" if rx.fullmatch(path_str(p)) else "freeze", params)
  tx = optax.multi_transform({"tune": optax.adam(lr), "freeze": optax.set_to_zero()}, labels)

  def step(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(lambda q: _kl_to_reference(apply_fn(q, x), ref))(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), loss

  (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=iters)
  return p, losses
