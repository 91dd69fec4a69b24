"""Double Rounding: one stored integer model that switches bit width by a rounding shift, trained jointly over a set
of precisions (Huang et al., "Nearly Lossless Adaptive Bit Switching", arXiv:2502.01199).

Only the highest-precision integers are stored, ``q_h`` with step ``s_h`` (e.g. INT8); the ``b``-bit model is
derived from them by a second rounding (Sec. 3.1):

``q_b = clip(round(q_h / 2^(h - b)), -2^(b-1), 2^(b-1) - 1)``,  ``s_b = s_h 2^(h - b)``,

so switching needs no float master copy ("double rounding": float -> ``q_h`` -> ``q_b``; :func:`double_round`).
In training, every precision of the bit set shares ``s_h`` (an LSQ step, :func:`paperlab.quant.lsq_quantize`) and
the precisions' losses are summed (:func:`multi_bit_qat_loss`). Because ``s_b = s_h 2^(h - b)``, the ``b``-bit
loss reaches ``s_h`` with its gradient amplified by ``2^(h - b)``: the precisions pull the shared step with very
different strengths (the paper's "competitive interference"). ALRS (adaptive learning-rate scaling) gives the step
a per-precision learning-rate multiplier; the catalogue marks the paper's exact rule unverified, and here it is
the multiplier that undoes the amplification, ``2^(b - h)`` (:func:`alrs_scale_lr`), applied to each precision's
step gradient before the optimizer by :func:`scale_by_alrs`, an optax transformation.

Rounding is half to even (``jnp.round``, as ``torch.round``); gradients are LSQ's straight-through estimator
(:func:`paperlab.quant.round_ste`, :func:`paperlab.quant.clip_open`) through both roundings. Weights only; the
paper also quantizes activations (and mixes precisions per layer with HASB, not implemented here).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from paperlab._tree import path_str
from paperlab.quant import qat as _qat
from paperlab.quant.rtn import check_bits

__all__ = ["double_round", "double_rounding_quantize", "double_rounding_params", "multi_bit_qat_loss",
           "multi_bit_qat_grads", "alrs_scale_lr", "ScaleByAlrsState", "scale_by_alrs"]

PyTree = Any


def _check_pair(bits_hi: Any, bits_lo: Any) -> tuple[int, int]:
  bits_hi, bits_lo = check_bits(bits_hi), check_bits(bits_lo)
  if bits_lo > bits_hi:
    raise ValueError(f"bits_lo must be <= bits_hi ({bits_hi}), got {bits_lo}.")
  return bits_hi, bits_lo


def double_round(q_hi: jax.Array, s_hi: jax.Array, bits_hi: int = 8, bits_lo: int = 4) -> tuple[jax.Array,
                                                                                                jax.Array]:
  """Switch stored ``bits_hi``-bit integers to ``bits_lo`` bits by a second rounding (Huang et al.,
  arXiv:2502.01199, Sec. 3.1): ``q_lo = clip(round(q_hi / 2^(h - l)), -2^(l-1), 2^(l-1) - 1)``, ``s_lo = s_hi
  2^(h - l)``. Half-way cases (``q_hi / 2^(h - l)`` ending in .5: the double-rounding ties) round to even.

  Args:
    q_hi: signed integer codes in ``[-2^(h-1), 2^(h-1) - 1]`` (any integer dtype, any shape).
    s_hi: their step, broadcastable to ``q_hi`` (per tensor or per channel).
    bits_hi, bits_lo: ``h`` and ``l``, ``2 <= l <= h <= 8`` (static).

  Returns:
    ``(q_lo, s_lo)``: ``q_lo`` in ``q_hi``'s dtype and shape, ``s_lo`` float32. Jittable and vmappable; the
    codes are exact (``|q_hi| < 2^24`` divides exactly by a power of two in float32).
  """
  bits_hi, bits_lo = _check_pair(bits_hi, bits_lo)
  q_hi = jnp.asarray(q_hi)
  if not jnp.issubdtype(q_hi.dtype, jnp.integer):
    raise TypeError(f"q_hi must be an integer array of codes, got {q_hi.dtype}.")
  shift = 2.0 ** (bits_hi - bits_lo)
  lo, hi = -(2 ** (bits_lo - 1)), 2 ** (bits_lo - 1) - 1
  q_lo = jnp.clip(jnp.round(q_hi.astype(jnp.float32) / shift), lo, hi).astype(q_hi.dtype)
  return q_lo, jnp.asarray(s_hi, jnp.float32) * shift


def double_rounding_quantize(w: jax.Array, step: jax.Array, *, bits: int = 4, bits_hi: int = 8,
                             grad_scale: float | None = None) -> jax.Array:
  """Fake quantization of ``w`` at ``bits`` through the shared ``bits_hi`` step (Huang et al., arXiv:2502.01199,
  Eq. 3-4): ``q_h = round(clip(w / s, -2^(h-1), 2^(h-1) - 1))``, ``q_b = round(clip(q_h / 2^(h-b), -2^(b-1),
  2^(b-1) - 1))``, value ``s 2^(h-b) q_b`` -- :func:`double_round` of the ``h``-bit codes, with straight-through
  gradients through both roundings. At ``bits == bits_hi`` it is :func:`paperlab.quant.lsq_quantize`.

  Args:
    w: float weight (any shape).
    step: the shared positive ``h``-bit LSQ step, broadcastable to ``w`` (``(1, out)`` per output channel; init
      with ``paperlab.quant.lsq_init_step(w, bits=bits_hi, axis=0)``).
    bits, bits_hi: the precision used now and the stored one (static, ``2 <= bits <= bits_hi <= 8``).
    grad_scale: LSQ's step-gradient scale; default ``1 / sqrt(w.size * Q_P)`` of the ``h``-bit grid.

  Returns:
    float32 array of ``w``'s shape. Jittable, vmappable.
  """
  bits_hi, bits = _check_pair(bits_hi, bits)
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"w must be a floating array, got {w.dtype}.")
  g = _qat.lsq_grad_scale(int(w.size), bits_hi) if grad_scale is None else grad_scale
  if bits == bits_hi:
    return _qat.lsq_quantize(w, step, bits=bits_hi, grad_scale=g)
  s = jnp.asarray(step, jnp.float32)
  s = jax.lax.stop_gradient(s - s * g) + s * g  # value s, gradient g dL/ds (LSQ's grad_scale)
  shift = 2.0 ** (bits_hi - bits)
  q_hi = _qat.round_ste(_qat.clip_open(w.astype(jnp.float32) / s, -(2.0 ** (bits_hi - 1)),
                                       2.0 ** (bits_hi - 1) - 1))
  q_lo = _qat.round_ste(_qat.clip_open(q_hi / shift, -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1))
  return q_lo * (s * shift)


def double_rounding_params(params: PyTree, steps: Mapping[str, jax.Array], bits: int, *,
                           bits_hi: int = 8) -> PyTree:
  """``params`` with every leaf whose ``/``-joined path is a key of ``steps`` fake-quantized by
  :func:`double_rounding_quantize` at ``bits`` (in its dtype); other leaves unchanged. Jittable."""
  found = set()

  def one(p, w):
    key = path_str(p)
    if key not in steps:
      return w
    found.add(key)
    return double_rounding_quantize(w, steps[key], bits=bits, bits_hi=bits_hi).astype(w.dtype)

  out = jax.tree_util.tree_map_with_path(one, params)
  missing = set(steps) - found
  if missing:
    raise ValueError(f"steps has paths that are not leaves of params: {sorted(missing)}.")
  return out


def _check_bit_set(bit_set: Any, bits_hi: int | None) -> tuple[tuple[int, ...], int]:
  if isinstance(bit_set, (str, bytes)) or not isinstance(bit_set, Sequence) or not bit_set:
    raise ValueError(f"bit_set must be a non-empty sequence of bit widths, got {bit_set!r}.")
  bit_set = tuple(check_bits(b) for b in bit_set)
  if len(set(bit_set)) != len(bit_set):
    raise ValueError(f"bit_set must not repeat a bit width, got {bit_set}.")
  hi = max(bit_set) if bits_hi is None else check_bits(bits_hi)
  if max(bit_set) > hi:
    raise ValueError(f"bits_hi ({hi}) must be >= every width in bit_set {bit_set}.")
  return bit_set, hi


def multi_bit_qat_loss(loss_fn: Callable[..., jax.Array], params: PyTree, steps: Mapping[str, jax.Array], *args,
                       bit_set: Sequence[int] = (8, 6, 4, 2), bits_hi: int | None = None
                       ) -> tuple[jax.Array, jax.Array]:
  """Joint multi-precision QAT loss (Huang et al., arXiv:2502.01199, Sec. 3.2): ``sum_b loss_fn(Q_b(params),
  *args)`` over ``bit_set`` with every precision derived from the shared ``bits_hi`` steps by double rounding
  (:func:`double_rounding_params`); ``bits_hi`` defaults to ``max(bit_set)``.

  Returns:
    ``(total, per_bit)``: float32 scalar and ``(len(bit_set),)`` losses in ``bit_set`` order. Jittable;
    differentiate ``total`` for plain joint training, or use :func:`multi_bit_qat_grads` for ALRS.
  """
  bit_set, hi = _check_bit_set(bit_set, bits_hi)
  per_bit = jnp.stack([jnp.asarray(loss_fn(double_rounding_params(params, steps, b, bits_hi=hi), *args),
                                   jnp.float32) for b in bit_set])
  return jnp.sum(per_bit), per_bit


def multi_bit_qat_grads(loss_fn: Callable[..., jax.Array], params: PyTree, steps: Mapping[str, jax.Array], *args,
                        bit_set: Sequence[int] = (8, 6, 4, 2), bits_hi: int | None = None
                        ) -> tuple[jax.Array, dict]:
  """Per-precision losses and gradients of :func:`multi_bit_qat_loss`: ``(per_bit, {b: {"params": dL_b/dparams,
  "steps": dL_b/dsteps}})``, the input of :func:`scale_by_alrs`. Their sum over ``b`` is the gradient of the
  total loss (each precision's forward and backward run once either way). Jittable."""
  bit_set, hi = _check_bit_set(bit_set, bits_hi)
  losses, grads = [], {}
  for b in bit_set:
    def one(tree, b=b):
      return jnp.asarray(loss_fn(double_rounding_params(tree["params"], tree["steps"], b, bits_hi=hi), *args),
                         jnp.float32)
    loss, grads[b] = jax.value_and_grad(one)({"params": params, "steps": dict(steps)})
    losses.append(loss)
  return jnp.stack(losses), grads


def alrs_scale_lr(bits: int, bits_hi: int = 8) -> float:
  """ALRS's learning-rate multiplier of the shared step for precision ``bits`` (Huang et al., arXiv:2502.01199,
  Sec. 3.3; the exact rule is unverified in the catalogue): ``2^(bits - bits_hi)``, the inverse of the factor
  ``2^(bits_hi - bits)`` by which ``s_b = s_h 2^(h - b)`` amplifies the ``b``-bit loss's step gradient, so that
  every precision moves the shared step at the same rate (1 at ``bits_hi``)."""
  bits_hi, bits = _check_pair(bits_hi, bits)
  return float(2.0 ** (bits - bits_hi))


class ScaleByAlrsState(NamedTuple):
  """Stateless (``scale_by_alrs`` keeps nothing between steps)."""


def scale_by_alrs(bit_set: Sequence[int] = (8, 6, 4, 2), *, bits_hi: int | None = None,
                  is_scale: Callable[[str], bool] | None = None,
                  multipliers: Mapping[int, float] | None = None) -> optax.GradientTransformation:
  """ALRS as an optax transformation (Huang et al., arXiv:2502.01199, Sec. 3.3): combine per-precision gradients
  into one update, the step (scale) leaves of precision ``b`` multiplied by ``alrs_scale_lr(b, bits_hi)``:

  ``u = sum_b m_b(leaf) g_b``, ``m_b = alrs_scale_lr(b)`` on scale leaves, 1 on the others,

  so ``optax.chain(scale_by_alrs(bit_set), optax.sgd(lr))`` gives precision ``b`` the step learning rate
  ``lr * m_b``. Put it first in the chain: its ``updates`` are the ``{b: grads}`` dict of
  :func:`multi_bit_qat_grads` (keys exactly ``bit_set``, each a pytree of the parameters' structure) and its output
  has the parameters' structure.

  Args:
    bit_set: the precisions (keys of the incoming dict).
    bits_hi: the stored precision (default ``max(bit_set)``).
    is_scale: ``path -> bool`` on ``/``-joined leaf paths; default: paths starting with ``"steps/"`` (the layout
      of :func:`multi_bit_qat_grads`).
    multipliers: ``{b: m_b}`` overriding :func:`alrs_scale_lr` (e.g. all 1 to switch ALRS off).

  Returns:
    ``optax.GradientTransformation`` (stateless, jittable).
  """
  bit_set, hi = _check_bit_set(bit_set, bits_hi)
  mult = {b: alrs_scale_lr(b, hi) for b in bit_set}
  if multipliers is not None:
    if set(multipliers) != set(bit_set):
      raise ValueError(f"multipliers must have one entry per bit width {bit_set}, got keys {sorted(multipliers)}.")
    mult = {b: float(multipliers[b]) for b in bit_set}
  is_scale = (lambda p: p.startswith("steps/")) if is_scale is None else is_scale

  def init_fn(params):
    del params
    return ScaleByAlrsState()

  def update_fn(updates, state, params=None):
    del params
    if not isinstance(updates, Mapping) or set(updates) != set(bit_set):
      keys = sorted(updates) if isinstance(updates, Mapping) else type(updates).__name__
      raise ValueError(f"scale_by_alrs: updates must be a dict with one gradient per bit width {bit_set}, got "
                       f"{keys}.")

    def combine(path, *gs):
      m = [mult[b] if is_scale(path_str(path)) else 1.0 for b in bit_set]
      return sum(mi * g for mi, g in zip(m, gs))

    return jax.tree_util.tree_map_with_path(combine, *(updates[b] for b in bit_set)), state

  return optax.GradientTransformation(init_fn, update_fn)
