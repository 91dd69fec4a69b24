"""AdaRound: learned up-or-down rounding of a layer's weights (Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", arXiv:2004.10568, ICML 2020).

Rounding to nearest is not optimal for the task loss: a second-order expansion turns the choice "round each weight
up or down" into a QUBO, which the paper relaxes to a layer-local problem (Eq. 21-25). With the weight grid
``(s, z)`` fixed beforehand, each weight of a Flax kernel ``(in, out)`` becomes

``W~ = s * (clip(floor(W / s) + h(V) + z, 0, 2^b - 1) - z)``, with the rectified sigmoid
``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1`` (Eq. 23),

and ``V`` (one per weight) minimizes (Eq. 25)

``||f_a(X W + b) - f_a(X~ W~ + b)||^2 + lambda * sum(1 - |2 h(V) - 1|^beta)``,

where ``X`` are the full-precision inputs of the layer, ``X~`` the inputs produced by the already-quantized earlier
layers (the paper's asymmetric reconstruction), ``lambda = 0.01`` and ``beta`` is annealed from 20 to 2 after a
warm-up of 20% of the iterations without the regulariser. Adam (lr 1e-3) for 10k iterations; ``V`` starts where
``h(V)`` equals the fractional part of ``W / s`` (so the soft weight starts at ``W`` itself); at the end the
rounding is made hard, ``h = 1[V >= 0]``.

The optimization loop, the loss normalization (squared error summed over output channels, averaged over tokens),
the annealing schedule (``LinearTempDecay``: ``beta`` held at 20 until the warm-up ends, then linear to 2 at the last
iteration; the step counter starts at 1) and the initialization of ``V`` are transcribed from the maintained
implementation in BRECQ (github:yhhhli/BRECQ, ``quant/adaptive_rounding.py``, ``quant/layer_recon.py`` and
``quant/block_recon.py``, commit e455d62), which is also what the AdaRound authors' AIMET follows. The integer grid
is :mod:`paperlab.quant.rtn`'s min-max grid (the one RTN, GPTQ and AWQ use here), so the methods differ only in how
they round. Everything is float32; one layer's optimization is a single jitted ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab.quant.rtn import (QuantizedWeight, check_bits, check_finite, check_group_size, check_kernel,
                                grouped_rtn)

__all__ = ["rectified_sigmoid", "rounding_regularizer", "annealed_beta", "init_rounding_logits",
           "soft_quantized_kernel", "adaround_loss", "adaround_optimize", "adaround_layer", "adaround_model"]

ZETA = 1.1
GAMMA = -0.1


def rectified_sigmoid(v: jax.Array) -> jax.Array:
  """AdaRound's rectified sigmoid ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` with ``zeta = 1.1``,
  ``gamma = -0.1`` (Nagel et al., arXiv:2004.10568, Eq. 23; Louizos et al.'s stretched sigmoid): it reaches 0 and 1
  exactly at finite ``V``, so the regulariser can drive every weight to a hard up/down decision."""
  v = jnp.asarray(v)
  return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rounding_regularizer(v: jax.Array, beta: float | jax.Array) -> jax.Array:
  """``f_reg(V) = sum(1 - |2 h(V) - 1|^beta)`` (arXiv:2004.10568, Eq. 24): zero when every ``h(V)`` is 0 or 1,
  largest at ``h = 1/2``; a large ``beta`` only pushes values already near 0/1, a small one pushes all.
  Returns a float32 scalar."""
  h = rectified_sigmoid(v).astype(jnp.float32)
  return jnp.sum(1.0 - jnp.abs(2.0 * h - 1.0) ** beta)


def annealed_beta(count: int | jax.Array, iters: int, *, beta: tuple[float, float] = (20.0, 2.0),
                  warmup: float = 0.2) -> tuple[jax.Array, jax.Array]:
  """The regulariser's temperature at optimization step ``count`` (1-based, as BRECQ's counter) and whether the
  regulariser is on.

  BRECQ's ``LinearTempDecay`` with ``rel_start_decay = warmup``: ``beta = beta_start`` while ``count < warmup *
  iters``, then ``beta_end + (beta_start - beta_end) * max(0, 1 - (count - warmup iters) / (iters - warmup
  iters))``; the regulariser is off while ``count < warmup * iters`` (the paper's 20% warm-up, Sec. 5,
  "annealing beta from 20 to 2"). Jittable in ``count``.

  Returns:
    ``(beta, on)``: float32 temperature and a float32 0/1 switch.
  """
  count = jnp.asarray(count, jnp.float32)
  start = warmup * iters
  rel = (count - start) / jnp.maximum(iters - start, 1e-12)
  b = jnp.where(count < start, beta[0], beta[1] + (beta[0] - beta[1]) * jnp.maximum(0.0, 1.0 - rel))
  return b.astype(jnp.float32), (count >= start).astype(jnp.float32)


def _expand(a: jax.Array, rows: int) -> jax.Array:
  """Group parameters ``(num_groups, out)`` -> per element ``(rows, out)``."""
  return jnp.repeat(a, rows // a.shape[0], axis=0)


def init_rounding_logits(w: jax.Array, scale: jax.Array) -> jax.Array:
  """``V`` with ``h(V) = frac(w / scale)`` (BRECQ ``init_alpha``: ``V = -log((zeta - gamma) / (rest - gamma) - 1)``),
  so the soft-rounded kernel starts at ``w`` (arXiv:2004.10568, Sec. 5). ``scale`` is ``(num_groups, out)``."""
  s = _expand(scale.astype(jnp.float32), w.shape[0])
  x = w.astype(jnp.float32) / s
  rest = x - jnp.floor(x)
  return -jnp.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


def soft_quantized_kernel(w: jax.Array, v: jax.Array, scale: jax.Array, zero: jax.Array, bits: int | jax.Array,
                          hard: bool = False) -> jax.Array:
  """``s * (clip(floor(w / s) + h + z, 0, 2^b - 1) - z)`` with ``h = h(V)`` (soft) or ``1[V >= 0]`` (``hard``),
  ``scale``/``zero`` of shape ``(num_groups, out)`` (arXiv:2004.10568, Eq. 22). float32."""
  rows = w.shape[0]
  s, z = _expand(scale.astype(jnp.float32), rows), _expand(zero.astype(jnp.float32), rows)
  h = (v >= 0).astype(jnp.float32) if hard else rectified_sigmoid(v)
  q = jnp.clip(jnp.floor(w.astype(jnp.float32) / s) + h + z, 0.0, 2.0 ** bits - 1.0)
  return s * (q - z)


def adaround_loss(v: jax.Array, w: jax.Array, scale: jax.Array, zero: jax.Array, x_q: jax.Array, y: jax.Array, *,
                  bits: int | jax.Array, lam: float | jax.Array, beta: float | jax.Array,
                  reg_on: float | jax.Array = 1.0, bias: jax.Array | None = None,
                  act: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
  """The relaxed layer objective (arXiv:2004.10568, Eq. 25) on tokens ``x_q`` ``(n, in)`` and targets ``y``
  ``(n, out)`` (``f_a(x_fp w + b)``): ``sum_out mean_tokens (f_a(x_q W~ + b) - y)^2 + reg_on * lam * f_reg(V)``,
  the reconstruction summed over output channels and averaged over tokens as BRECQ's ``lp_loss``."""
  w_soft = soft_quantized_kernel(w, v, scale, zero, bits)
  out = x_q @ w_soft
  if bias is not None:
    out = out + bias
  if act is not None:
    out = act(out)
  rec = jnp.mean(jnp.sum(jnp.square(out - y), axis=-1))
  return rec + reg_on * lam * rounding_regularizer(v, beta)


@functools.partial(jax.jit, static_argnames=("iters", "batch_size", "act", "warmup", "beta"))
def _optimize(v0, w, scale, zero, x_q, y, bias, key, bits, lam, lr, *, iters, batch_size, act, warmup, beta):
  tx = optax.adam(lr)

  def step(carry, count):
    v, opt_state, key = carry
    key, sub = jax.random.split(key)
    if batch_size is None:
      xb, yb = x_q, y
    else:  # BRECQ: a random mini-batch of the cached inputs each step
      idx = jax.random.permutation(sub, x_q.shape[0])[:batch_size]
      xb, yb = x_q[idx], y[idx]
    b, on = annealed_beta(count, iters, beta=beta, warmup=warmup)
    loss, g = jax.value_and_grad(adaround_loss)(v, w, scale, zero, xb, yb, bits=bits, lam=lam, beta=b, reg_on=on,
                                                bias=bias, act=act)
    updates, opt_state = tx.update(g, opt_state, v)
    return (optax.apply_updates(v, updates), opt_state, key), loss

  (v, _, _), losses = jax.lax.scan(step, (v0, tx.init(v0), key), jnp.arange(1, iters + 1))
  return v, losses


def _tokens(name: str, x: Any, width: int) -> jax.Array:
  if not hasattr(x, "shape") or len(x.shape) < 2 or x.shape[-1] != width:
    raise ValueError(f"{name} must have shape (..., {width}), got {getattr(x, 'shape', type(x).__name__)}.")
  check_finite(name, x)
  return jnp.asarray(x).reshape(-1, width).astype(jnp.float32)


def _check_iters(iters: Any) -> int:
  if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
    raise ValueError(f"iters must be a positive int, got {iters!r}.")
  return iters


def adaround_optimize(w: jax.Array, x_q: jax.Array, y: jax.Array, scale: jax.Array, zero: jax.Array, *,
                      bits: int = 4, iters: int = 10_000, lam: float = 0.01, beta: tuple[float, float] = (20.0, 2.0),
                      warmup: float = 0.2, lr: float = 1e-3, batch_size: int | None = None,
                      bias: jax.Array | None = None, act: Callable[[jax.Array], jax.Array] | None = None,
                      v0: jax.Array | None = None, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Optimize AdaRound's rounding logits ``V`` of one kernel (arXiv:2004.10568, Eq. 25; BRECQ's
  ``layer_reconstruction``): ``iters`` Adam steps on :func:`adaround_loss` with the :func:`annealed_beta`.

  Args:
    w: kernel ``(in, out)``.
    x_q: inputs ``(..., in)`` the quantized layer sees (from the already-quantized earlier layers).
    y: targets ``(..., out)``: the full-precision layer output ``f_a(x_fp w + b)`` on the same tokens.
    scale, zero: the fixed grid, ``(num_groups, out)`` (e.g. :func:`paperlab.quant.quantize_rtn`'s).
    bits: 2..8. iters: Adam steps (10k in the paper). lam: regulariser weight (0.01). beta: ``(start, end)``
      temperature (20, 2). warmup: fraction of steps without the regulariser (0.2). lr: Adam step (1e-3).
    batch_size: tokens per step drawn at random with ``key`` (the paper: 32 images); ``None`` uses every token
      each step (deterministic).
    bias, act: the layer's bias and activation ``f_a`` (a static callable; ``None``: reconstruct ``x w``).
    v0: initial logits (default :func:`init_rounding_logits`). key: PRNG key for the mini-batches.

  Returns:
    ``(V, losses)``: final logits ``(in, out)`` and the per-step objective ``(iters,)``.

  Raises:
    ValueError: bad shapes, ``bits``, ``iters``, ``batch_size``, negative ``lam``/``lr``, ``warmup`` outside
      ``[0, 1)``, non-finite inputs.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  iters = _check_iters(iters)
  x_q = _tokens("x_q", x_q, w.shape[0])
  y = _tokens("y", y, w.shape[1])
  if y.shape[0] != x_q.shape[0]:
    raise ValueError(f"y must hold one target per token of x_q ({x_q.shape[0]}), got {y.shape[0]}.")
  scale, zero = jnp.asarray(scale, jnp.float32), jnp.asarray(zero, jnp.float32)
  if scale.ndim != 2 or scale.shape[1] != w.shape[1] or w.shape[0] % scale.shape[0] or zero.shape != scale.shape:
    raise ValueError(f"scale and zero must have shape (num_groups, {w.shape[1]}) with num_groups dividing "
                     f"{w.shape[0]}, got {scale.shape} and {zero.shape}.")
  _checks.check_non_negative("lam", lam)
  _checks.check_positive("lr", lr)
  _checks.check_range("warmup", warmup, 0.0, 1.0, high_inclusive=False)
  if not (isinstance(beta, (tuple, list)) and len(beta) == 2 and all(float(b) > 0 for b in beta)):
    raise ValueError(f"beta must be a (start, end) pair of positive temperatures, got {beta!r}.")
  if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                 or not 1 <= batch_size <= x_q.shape[0]):
    raise ValueError(f"batch_size must be None or an int in [1, {x_q.shape[0]}] (the number of tokens), "
                     f"got {batch_size!r}.")
  v0 = init_rounding_logits(w, scale) if v0 is None else jnp.asarray(v0, jnp.float32)
  if v0.shape != w.shape:
    raise ValueError(f"v0 must have the kernel's shape {w.shape}, got {v0.shape}.")
  key = jax.random.key(0) if key is None else key
  return _optimize(v0, w.astype(jnp.float32), scale, zero, x_q, y, bias, key, jnp.float32(bits),
                   jnp.float32(lam), jnp.float32(lr), iters=iters, batch_size=batch_size, act=act,
                   warmup=float(warmup), beta=(float(beta[0]), float(beta[1])))


def adaround_layer(w: jax.Array, x_q: jax.Array, *, x_fp: jax.Array | None = None, bits: int = 4,
                   group_size: int | None = None, symmetric: bool = False, iters: int = 10_000, lam: float = 0.01,
                   beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, lr: float = 1e-3,
                   batch_size: int | None = None, bias: jax.Array | None = None,
                   act: Callable[[jax.Array], jax.Array] | None = None,
                   key: jax.Array | None = None) -> QuantizedWeight:
  """AdaRound quantization of one Flax kernel (Nagel et al., arXiv:2004.10568; module docstring).

  The grid is RTN's min-max grid (:func:`paperlab.quant.quantize_rtn` with the same ``bits``, ``group_size``,
  ``symmetric``); only the up/down decision of every weight is learned, so each code differs from RTN's by at most
  one level. ``paperlab.quant.to_qarray(result, bits)`` packs the result into a :class:`~paperlab.quant.QArray`.

  Args:
    w: kernel ``(in, out)``.
    x_q: calibration inputs ``(..., in)`` as the quantized network produces them.
    x_fp: the same tokens' full-precision inputs for the target ``f_a(x_fp w + b)``; default ``x_q``.
    bits, group_size, symmetric: the grid (2..8 bits; ``None`` group size = per output channel).
    iters, lam, beta, warmup, lr, batch_size, bias, act, key: as :func:`adaround_optimize` (paper: 10k, 0.01,
      (20, 2), 0.2, 1e-3).

  Returns:
    :class:`~paperlab.quant.rtn.QuantizedWeight` with the hard-rounded codes (``w_hat`` in ``w``'s dtype).
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  g = check_group_size(group_size, w.shape[0])
  x_q = _tokens("x_q", x_q, w.shape[0])
  x_fp = x_q if x_fp is None else _tokens("x_fp", x_fp, w.shape[0])
  if x_fp.shape != x_q.shape:
    raise ValueError(f"x_fp must have the shape of x_q {x_q.shape}, got {x_fp.shape}.")
  rtn = grouped_rtn(w, bits, g, bool(symmetric))
  y = x_fp @ w.astype(jnp.float32)
  if bias is not None:
    y = y + bias
  if act is not None:
    y = act(y)
  v, _ = adaround_optimize(w, x_q, y, rtn.scale, rtn.zero, bits=bits, iters=iters, lam=lam, beta=beta,
                           warmup=warmup, lr=lr, batch_size=batch_size, bias=bias, act=act, key=key)
  return _harden(w, v, rtn.scale, rtn.zero, bits, g)


@functools.partial(jax.jit, static_argnames=("bits", "group_size"))
def _harden(w, v, scale, zero, bits, group_size):
  rows = w.shape[0]
  s, z = _expand(scale, rows), _expand(zero, rows)
  codes = jnp.clip(jnp.floor(w.astype(jnp.float32) / s) + (v >= 0).astype(jnp.float32) + z, 0.0, 2.0 ** bits - 1)
  w_hat = (s * (codes - z)).astype(w.dtype)
  return QuantizedWeight(w_hat, codes.astype(jnp.uint8), scale, zero,
                         jnp.arange(rows, dtype=jnp.int32) // group_size)


def adaround_model(model, batches: Iterable[Any], *, bits: int = 4, group_size: int | None = None,
                   symmetric: bool = False, iters: int = 10_000, lam: float = 0.01,
                   beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, lr: float = 1e-3,
                   batch_size: int | None = None, include: str | None = None, exclude: str | None = None,
                   key: jax.Array | None = None):
  """AdaRound over the Dense (``nnx.Linear``) layers of a Flax NNX model, layer by layer in forward order
  (arXiv:2004.10568, Sec. 5: each layer reconstructs the full-precision output ``x_fp w`` from the inputs ``x_q``
  of the network whose earlier layers are already quantized -- the paper's asymmetric reconstruction).

  The pre-activation output is reconstructed (``act=None``: the model's activations are not known to the walker;
  the bias cancels in ``x_fp w + b - (x_q W~ + b)``). Host loop over layers, one jitted optimization per layer;
  output channels are zero-padded (:func:`paperlab.quant.pad_outputs`) so layers of equal input width share one
  compiled program (a zero column adds a constant to the loss and does not touch the others).

  Args:
    model: an ``nnx.Module`` (not modified). batches: calibration inputs, each accepted by ``model(batch)``.
    bits, group_size, symmetric, iters, lam, beta, warmup, lr, batch_size: as :func:`adaround_layer`.
    include, exclude: regexes on layer paths (``blocks/0/mlp/fc1``). key: PRNG key (mini-batches).

  Returns:
    ``(quantized_model, {path: QuantizedWeight})``.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  batches = list(batches)
  x_fp_all = calibration.capture_inputs(model, batches, include=include, exclude=exclude)
  key = jax.random.key(0) if key is None else key
  counter = iter(range(1 << 30))

  def solve(path, kernel, x_q):
    out = kernel.shape[1]
    q = adaround_layer(calibration.pad_outputs(kernel), x_q, x_fp=x_fp_all[path], bits=bits, group_size=group_size,
                       symmetric=symmetric, iters=iters, lam=lam, beta=beta, warmup=warmup, lr=lr,
                       batch_size=batch_size, key=jax.random.fold_in(key, next(counter)))
    return QuantizedWeight(q.w_hat[:, :out], q.codes[:, :out], q.scale[:, :out], q.zero[:, :out], q.g_idx)

  return calibration.sequential(model, batches, solve, statistic="inputs", include=include, exclude=exclude,
                                true_sequential=True)
