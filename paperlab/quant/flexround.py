"""FlexRound: learnable rounding by element-wise division (Lee et al., "FlexRound: Learnable Rounding based on
Element-wise Division for Post-Training Quantization", arXiv:2306.00317, ICML 2023).

Instead of adding a learned up/down offset (AdaRound), FlexRound divides every weight by its own learned scale
before rounding (Eq. 2, Flax kernel ``(in, out)``):

``W~ = s1 * round(W / (s1 * S2 * s3 [* s4]))`` clipped to the integer grid,

with ``s1`` the common grid size (per tensor, or per output channel), ``S2`` an element-wise scale of ``W``'s shape,
``s3`` a per-output-channel and ``s4`` a per-input-channel vector (the paper uses ``s4`` for convolutions only).
All start at 1 (``s1`` at the grid's step) and are learned in log space, ``round`` passes gradients straight
through (STE). Because ``W`` is divided, ``d W~ / d log S2 = -W * e^{-log S2}`` (the "reciprocal rule", Sec. 3.2):
weights of large magnitude get a larger rounding flexibility and may move by more than one grid step. ``s1``, ``S2``,
``s3`` minimize the block or layer output reconstruction error with Adam; there is no rounding regulariser.

Transcribed from the official code (github:onliwad101/FlexRound_LRQ, ``quant/UniformAffineQuantizer.py``,
``mode='flexround'``, commit 59d4665): ``delta1 = log s1`` (initialized from the min-max grid: the released scripts
run with ``clipping=False``, which skips the MSE search), ``delta2 = log S2 = 0``, ``delta3 = log s3 = 0``; the
asymmetric forward is ``clamp(round_ste(W / exp(delta1 + delta2 + delta3)), -zero_point, 2^b - 1 - zero_point) *
exp(delta1)``; the loss is ``lp_loss`` (squared error summed over output channels, averaged over tokens). Defaults
of the released W3/W4 scripts: Adam, 5000 iterations per block, lr 2.5e-3 (LLaMA-2; 1e-3..5e-3 in the paper's
tables). Everything is float32; one layer's optimization is a single jitted ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab.quant.rtn import QuantizedWeight, check_bits, check_finite, check_kernel, grid_params

__all__ = ["FlexRoundParams", "flexround_init", "flexround_apply", "flexround_layer", "flexround_model"]


class FlexRoundParams(NamedTuple):
  """FlexRound's learnable scales of one kernel ``(in, out)``, all in log space.

  Attributes:
    log_s1: common grid size ``log s1``: shape ``()`` per tensor or ``(1, out)`` per output channel.
    log_s2: element-wise ``log S2``, shape ``(in, out)``.
    log_s3: per-output-channel ``log s3``, shape ``(1, out)``.
    log_s4: per-input-channel ``log s4``, shape ``(in, 1)`` (zeros and not trained unless enabled).
    zero: the fixed integer zero point (asymmetric grid), shape of ``log_s1``; not trained.
  """

  log_s1: jax.Array
  log_s2: jax.Array
  log_s3: jax.Array
  log_s4: jax.Array
  zero: jax.Array


@jax.custom_vjp
def _round_ste(x: jax.Array) -> jax.Array:
  return jnp.round(x)


_round_ste.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))


def flexround_init(w: jax.Array, *, bits: int = 4, per_tensor: bool = False, symmetric: bool = False
                   ) -> FlexRoundParams:
  """Initial FlexRound scales (arXiv:2306.00317, Sec. 3): ``s1`` the min-max grid step (per tensor or per output
  channel, :func:`paperlab.quant.grid_params`), ``S2 = s3 = s4 = 1``. With these :func:`flexround_apply` is
  round-to-nearest on that grid.

  Raises:
    ValueError / TypeError: unsupported ``bits``; ``w`` not a finite 2-D floating kernel.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  wf = w.astype(jnp.float32)
  if per_tensor:
    scale, zero = grid_params(jnp.min(wf), jnp.max(wf), bits, bool(symmetric))
  else:
    scale, zero = grid_params(wf.min(axis=0, keepdims=True), wf.max(axis=0, keepdims=True), bits, bool(symmetric))
  return FlexRoundParams(jnp.log(scale), jnp.zeros(w.shape, jnp.float32), jnp.zeros((1, w.shape[1]), jnp.float32),
                         jnp.zeros((w.shape[0], 1), jnp.float32), zero)


def _codes(w, p: FlexRoundParams, bits, symmetric: bool):
  """``clip(round_ste(W / (s1 S2 s3 s4)), -z, 2^b - 1 - z)`` (signed, relative to the zero point).

  The gradient at the grid's ends follows the official ``torch.clamp`` calls: the asymmetric grid clamps with
  tensor bounds (``-zero_point``), whose gradient is halved where a value sits exactly on a bound (as
  ``jnp.clip``); the symmetric grid clamps with scalar bounds, whose gradient stops there. Rounded values land
  exactly on the ends (each channel's extreme weight), so the two differ.
  """
  div = jnp.exp(p.log_s1 + p.log_s2 + p.log_s3 + p.log_s4)
  x = _round_ste(w.astype(jnp.float32) / div)
  lo, hi = -p.zero, 2.0 ** bits - 1.0 - p.zero
  if not symmetric:
    return jnp.clip(x, lo, hi)
  inside = (x > lo) & (x < hi)
  return jnp.where(inside, x, jax.lax.stop_gradient(jnp.clip(x, lo, hi)))


def flexround_apply(w: jax.Array, params: FlexRoundParams, bits: int | jax.Array, symmetric: bool = False
                    ) -> jax.Array:
  """FlexRound's quantized kernel ``W~ = s1 * clip(round(W / (s1 S2 s3 s4)), -z, 2^b - 1 - z)`` (arXiv:2306.00317,
  Eq. 2; the official asymmetric forward), float32, with a straight-through ``round``: differentiable in every
  scale. A symmetric grid is the zero point ``2^(b-1)`` (``symmetric`` only changes the gradient at the grid's
  ends, as the official code; see ``_codes``). Jittable with ``symmetric`` static."""
  return jnp.exp(params.log_s1) * _codes(w, params, bits, symmetric)


def _flex_loss(train, fixed, w, x_q, y, bits, symmetric=False):
  p = FlexRoundParams(**train, **fixed)
  out = x_q @ flexround_apply(w, p, bits, symmetric)
  return jnp.mean(jnp.sum(jnp.square(out - y), axis=-1))


@functools.partial(jax.jit, static_argnames=("iters", "batch_size", "train_s4", "symmetric"))
def _optimize(params, w, x_q, y, key, bits, lr, *, iters, batch_size, train_s4, symmetric=False):
  names = ("log_s1", "log_s2", "log_s3") + (("log_s4",) if train_s4 else ())
  train = {k: getattr(params, k) for k in names}
  fixed = {k: getattr(params, k) for k in FlexRoundParams._fields if k not in names}
  tx = optax.adam(lr)

  def step(carry, _):
    train, opt_state, key = carry
    key, sub = jax.random.split(key)
    if batch_size is None:
      xb, yb = x_q, y
    else:
      idx = jax.random.permutation(sub, x_q.shape[0])[:batch_size]
      xb, yb = x_q[idx], y[idx]
    loss, g = jax.value_and_grad(_flex_loss)(train, fixed, w, xb, yb, bits, symmetric)
    updates, opt_state = tx.update(g, opt_state, train)
    return (optax.apply_updates(train, updates), opt_state, key), loss

  (train, _, _), losses = jax.lax.scan(step, (train, tx.init(train), key), None, length=iters)
  return FlexRoundParams(**train, **fixed), losses


def _tokens(name: str, x: Any, width: int) -> jax.Array:
  if not hasattr(x, "shape") or len(x.shape) < 2 or x.shape[-1] != width:
    raise ValueError(f"{name} must have shape (..., {width}), got {getattr(x, 'shape', type(x).__name__)}.")
  check_finite(name, x)
  return jnp.asarray(x).reshape(-1, width).astype(jnp.float32)


def flexround_layer(w: jax.Array, x_q: jax.Array, *, x_fp: jax.Array | None = None, bits: int = 4,
                    per_tensor: bool = False, symmetric: bool = False, iters: int = 5000, lr: float = 2.5e-3,
                    batch_size: int | None = None, train_s4: bool = False, key: jax.Array | None = None,
                    return_params: bool = False):
  """FlexRound quantization of one Flax kernel by layer output reconstruction (arXiv:2306.00317; module
  docstring): ``iters`` Adam steps on ``sum_out mean_tokens (x_q W~ - x_fp W)^2`` over ``s1``, ``S2``, ``s3`` (and
  ``s4`` with ``train_s4``), then the codes ``round(W / (s1 S2 s3 s4)) + z`` on the grid of step ``s1``.

  Args:
    w: kernel ``(in, out)``. x_q: inputs ``(..., in)`` from the already-quantized network.
    x_fp: full-precision inputs of the same tokens for the target ``x_fp w`` (default ``x_q``).
    bits: 2..8. per_tensor: one ``s1`` for the whole kernel (the paper's per-tensor setting) instead of one per
      output channel. symmetric: symmetric grid.
    iters, lr: Adam steps and step size (official scripts: 5000, 2.5e-3).
    batch_size: tokens per step drawn at random with ``key``; ``None`` uses every token.
    train_s4: also learn the per-input-channel ``s4`` (the paper: convolutions).
    return_params: also return the learned :class:`FlexRoundParams`.

  Returns:
    :class:`~paperlab.quant.rtn.QuantizedWeight` (``scale = s1``, ``zero = z`` broadcast to ``(1, out)``);
    with ``return_params`` the pair ``(QuantizedWeight, FlexRoundParams)``.

  Raises:
    ValueError: bad shapes, ``bits``, ``iters``, ``batch_size``, ``lr``; non-finite inputs.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
    raise ValueError(f"iters must be a positive int, got {iters!r}.")
  _checks.check_positive("lr", lr)
  x_q = _tokens("x_q", x_q, w.shape[0])
  x_fp = x_q if x_fp is None else _tokens("x_fp", x_fp, w.shape[0])
  if x_fp.shape != x_q.shape:
    raise ValueError(f"x_fp must have the shape of x_q {x_q.shape}, got {x_fp.shape}.")
  if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or not 1 <= batch_size <= x_q.shape[0]):
    raise ValueError(f"batch_size must be None or an int in [1, {x_q.shape[0]}] (the number of tokens), "
                     f"got {batch_size!r}.")
  p0 = flexround_init(w, bits=bits, per_tensor=per_tensor, symmetric=symmetric)
  y = x_fp @ w.astype(jnp.float32)
  key = jax.random.key(0) if key is None else key
  p, _ = _optimize(p0, w.astype(jnp.float32), x_q, y, key, jnp.float32(bits), jnp.float32(lr), iters=iters,
                   batch_size=batch_size, train_s4=bool(train_s4), symmetric=bool(symmetric))
  q = _harden(w, p, bits)
  return (q, p) if return_params else q


@functools.partial(jax.jit, static_argnames=("bits",))
def _harden(w, p, bits):
  signed = _codes(w, p, bits, False)  # forward only: the clamp's gradient rule does not matter
  scale = jnp.broadcast_to(jnp.exp(p.log_s1), (1, w.shape[1]))
  zero = jnp.broadcast_to(p.zero, (1, w.shape[1]))
  w_hat = (scale * signed).astype(w.dtype)
  return QuantizedWeight(w_hat, (signed + zero).astype(jnp.uint8), scale, zero,
                         jnp.zeros((w.shape[0],), jnp.int32))


def flexround_model(model, batches: Iterable[Any], *, bits: int = 4, per_tensor: bool = False,
                    symmetric: bool = False, iters: int = 5000, lr: float = 2.5e-3, batch_size: int | None = None,
                    include: str | None = None, exclude: str | None = None, key: jax.Array | None = None):
  """FlexRound over the Dense (``nnx.Linear``) layers of a Flax NNX model, layer by layer in forward order: each
  layer reconstructs its full-precision output ``x_fp w`` from the inputs ``x_q`` of the network whose earlier
  layers are already quantized (layer-wise reconstruction; the paper also reports block-wise).

  Returns:
    ``(quantized_model, {path: QuantizedWeight})``.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  batches = list(batches)
  x_fp_all = calibration.capture_inputs(model, batches, include=include, exclude=exclude)
  key = jax.random.key(0) if key is None else key
  counter = iter(range(1 << 30))

  def solve(path, kernel, x_q):
    return flexround_layer(kernel, x_q, x_fp=x_fp_all[path], bits=bits, per_tensor=per_tensor, symmetric=symmetric,
                           iters=iters, lr=lr, batch_size=batch_size, key=jax.random.fold_in(key, next(counter)))

  return calibration.sequential(model, batches, solve, statistic="inputs", include=include, exclude=exclude,
                                true_sequential=True)
