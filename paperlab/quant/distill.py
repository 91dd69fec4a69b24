"""Quantized distillation and differentiable quantization (Polino, Pascanu & Alistarh, "Model compression via
distillation and quantization", ICLR 2018, arXiv:1802.05668).

* :func:`bucket_quantize` -- the paper's uniform quantizer with bucketing (section 2.1): the flattened tensor is cut
  into buckets of ``bucket_size`` consecutive values, each scaled to ``[0, 1]`` by its own min/max, rounded to
  ``s = 2^bits`` evenly spaced points (deterministically or stochastically, unbiased) and scaled back. Transcribed
  from the official code, github:antspy/quantized_distillation (commit bb500b7a), ``quantization/
  quant_functions.py`` ``uniformQuantization`` and ``quantization/help_functions.py`` ``create_bucket_tensor``. In
  *quantized distillation* (section 3, Algorithm 1) the student keeps full-precision weights, every forward pass
  uses their quantized value and the gradient is applied to the full-precision weights (straight-through).
* :func:`quantized_distillation_loss` -- the loss the student trains on, ``(1 - alpha) CE(y) + alpha T^2
  KL(p_T^teacher || p_T^student)`` (Hinton et al.'s distillation loss, :func:`paperlab.losses.kd_loss`).
* :func:`codebook_init` / :func:`codebook_quantize` -- *differentiable quantization* (section 4): the quantization
  points ``p`` are learned; with the assignment of each weight to its nearest point held fixed, ``Q(v) = p_{a(v)}``
  is differentiable in ``p`` and ``dL/dp_j = sum_{v: a(v) = j} dL/dQ(v)``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab import losses as _losses

__all__ = ["DISTILL_ALPHA", "DISTILL_TEMPERATURE", "bucket_quantize", "quantized_distillation_loss",
           "codebook_init", "codebook_quantize"]

DISTILL_ALPHA = 0.7
"""Weight of the distillation term (``weight_teacher_loss = 0.7`` in the official ``cnn_models/help_fun.py``)."""
DISTILL_TEMPERATURE = 2.0
"""Distillation temperature (``temperature_distillation=2``, the official ``forward_and_backward`` default)."""

_TOL_ZERO = 1e-10  # the official ScalingFunction's tol_diff_zero: a constant bucket gets alpha = 1


def _check_bits(bits) -> int:
  if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
    raise ValueError(f"bits must be an int in [1, 8], got {bits!r}.")
  return bits


def _check_float(name: str, x) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating array, got dtype {x.dtype}.")
  if x.size == 0:
    raise ValueError(f"{name} must not be empty, got shape {x.shape}.")
  return x


def _ste(w: jax.Array, w_hat: jax.Array) -> jax.Array:
  """Value ``w_hat`` exactly (``w - w`` is 0), gradient identity to ``w``."""
  return jax.lax.stop_gradient(w_hat) + (w - jax.lax.stop_gradient(w))


def bucket_quantize(w: jax.Array, *, bits: int = 4, bucket_size: int | None = 256, stochastic: bool = False,
                    key: jax.Array | None = None) -> jax.Array:
  """Uniform quantization with bucketing and the straight-through estimator (Polino et al., arXiv:1802.05668,
  section 2.1, eq. 2; official ``uniformQuantization(tensor, s=2**bits, bucket_size=256)``).

  The tensor is flattened (row-major) and cut into buckets of ``bucket_size`` values, the last one padded with the
  last value (a tensor no larger than one bucket is one bucket). Per bucket ``beta = min``, ``alpha = max - min``
  (``1`` for a constant bucket), ``x = (v - beta) / alpha`` in ``[0, 1]``, then with ``L = 2^bits - 1`` intervals

  * deterministic: ``Q(x) = round(x L) / L``;
  * stochastic: ``Q(x) = (floor(x L) + [u <= x L - floor(x L)]) / L`` with ``u ~ U[0, 1)`` (unbiased:
    ``E[Q(x)] = x``);

  and ``v_hat = Q(x) alpha + beta``. The gradient passes to ``w`` unchanged (quantized distillation updates the
  full-precision weights with the gradient taken at the quantized ones). The official code buckets a torch weight
  ``(out, in)`` row-major, i.e. along the inputs of one output unit; for a Flax kernel ``(in, out)`` pass
  ``w.T`` and transpose back to bucket the same way.

  Args:
    w: floating array (any shape).
    bits: ``1..8``; ``s = 2^bits`` quantization points per bucket (paper: 2 and 4 bits).
    bucket_size: values per bucket (paper: 256); ``None`` is one bucket for the whole tensor.
    stochastic: stochastic (unbiased) rounding instead of round-to-nearest (half to even, as ``torch.round``).
    key: PRNG key, required with ``stochastic``.

  Returns:
    The quantized ``w``, same shape and dtype (computed in float32). Jittable; vmappable.

  Raises:
    ValueError: ``bits`` outside 1..8, a non-positive ``bucket_size``, ``stochastic`` without ``key``, empty ``w``.
    TypeError: non-floating ``w``.
  """
  w = _check_float("w", w)
  bits = _check_bits(bits)
  if bucket_size is not None and (isinstance(bucket_size, bool) or not isinstance(bucket_size, int)
                                  or bucket_size < 1):
    raise ValueError(f"bucket_size must be a positive int or None, got {bucket_size!r}.")
  if stochastic and key is None:
    raise ValueError("stochastic=True needs a PRNG key (key=None given).")
  flat = w.reshape(-1).astype(jnp.float32)
  n = flat.shape[0]
  size = n if bucket_size is None or n <= bucket_size else bucket_size
  pad = -n % size
  buckets = jnp.concatenate([flat, jnp.full((pad,), flat[-1])]).reshape(-1, size)
  beta = jnp.min(buckets, axis=1, keepdims=True)
  alpha = jnp.max(buckets, axis=1, keepdims=True) - beta
  alpha = jnp.where(alpha < _TOL_ZERO, 1.0, alpha)
  levels = float(2 ** bits - 1)
  x = (buckets - beta) / alpha * levels
  if stochastic:
    low = jnp.floor(x)
    u = jax.random.uniform(key, x.shape, jnp.float32)
    q = (low + (u <= x - low).astype(jnp.float32)) / levels
  else:
    q = jnp.round(x) / levels
  w_hat = (q * alpha + beta).reshape(-1)[:n].reshape(w.shape).astype(w.dtype)
  return _ste(w, w_hat)


def quantized_distillation_loss(student_logits: chex.Array, teacher_logits: chex.Array, labels: chex.Array, *,
                                temperature: float = DISTILL_TEMPERATURE, alpha: float = DISTILL_ALPHA,
                                where: chex.Array | None = None) -> jax.Array:
  r"""The student's loss in quantized distillation (Polino et al., arXiv:1802.05668, section 3; Hinton et al.,
  arXiv:1503.02531): :math:`(1 - \alpha)\, CE(s, y) + \alpha\, T^2\, KL(\mathrm{softmax}(t / T) \,\|\,
  \mathrm{softmax}(s / T))`, per example (the distillation term is :func:`paperlab.losses.kd_loss`; the teacher gets
  no gradient). Defaults from the official code: ``alpha = 0.7`` (:data:`DISTILL_ALPHA`), ``T = 2``
  (:data:`DISTILL_TEMPERATURE`). (The official ``nn.KLDivLoss()`` averages over batch *and* classes, a constant
  factor ``1 / num_classes`` on the KL term that this per-example form does not copy.)

  Args:
    student_logits: ``(..., num_classes)``.
    teacher_logits: same shape.
    labels: integer labels ``(...)``.
    temperature: ``T > 0``.
    alpha: weight of the distillation term in ``[0, 1]`` (may be traced: ``alpha = 0`` is plain cross entropy).
    where: optional mask; masked examples give 0.

  Returns:
    Per-example float32 loss of shape ``labels.shape``.

  Raises:
    ValueError: ``alpha`` outside ``[0, 1]``, non-positive ``temperature``, mismatched shapes.
  """
  if not isinstance(alpha, jax.core.Tracer) and not 0.0 <= float(alpha) <= 1.0:  # a traced alpha is not checked
    raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
  kd = _losses.kd_loss(student_logits, teacher_logits, temperature=temperature, where=where)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(jnp.asarray(student_logits, jnp.float32), labels)
  if where is not None:
    ce = jnp.where(where, ce, 0.0)
  return (1.0 - alpha) * ce + alpha * kd


def codebook_init(w: jax.Array, *, bits: int = 2, init: str = "uniform") -> jax.Array:
  """Initial quantization points of differentiable quantization (Polino et al., arXiv:1802.05668, section 4.1):
  ``2^bits`` points evenly spaced over ``[min w, max w]`` (``"uniform"``, the paper's linear initialization) or at
  the ``(i + 1/2) / 2^bits`` quantiles of ``w`` (``"quantile"``).

  Returns:
    float32 ``(2^bits,)``, sorted.

  Raises:
    ValueError: bad ``bits`` or ``init``.
  """
  w = _check_float("w", w).astype(jnp.float32).reshape(-1)
  bits = _check_bits(bits)
  k = 2 ** bits
  if init == "uniform":
    return jnp.linspace(jnp.min(w), jnp.max(w), k, dtype=jnp.float32)
  if init == "quantile":
    return jnp.quantile(w, (jnp.arange(k, dtype=jnp.float32) + 0.5) / k).astype(jnp.float32)
  raise ValueError(f"init must be 'uniform' or 'quantile', got {init!r}.")


def codebook_quantize(w: jax.Array, points: jax.Array) -> jax.Array:
  """Differentiable quantization (Polino et al., arXiv:1802.05668, section 4, eq. 5): each weight is assigned to
  its nearest point (ties to the lower index), ``Q(v) = p_{a(v)}``; with the assignment fixed, ``Q`` is
  differentiable in ``points`` and ``dL/dp_j = sum_{v: a(v) = j} dL/dQ(v)``. ``w`` is a constant here (no gradient:
  the paper trains the points with the full-precision weights fixed).

  Args:
    w: floating array (any shape), the full-precision weights.
    points: ``(k,)`` floating quantization points (init: :func:`codebook_init`).

  Returns:
    ``points[a(w)]`` of ``w``'s shape, in ``points``' dtype. Jittable; vmappable.

  Raises:
    ValueError: ``points`` not 1-D.
    TypeError: non-floating inputs.
  """
  w = _check_float("w", w)
  points = _check_float("points", points)
  if points.ndim != 1:
    raise ValueError(f"points must be 1-D (k,), got shape {points.shape}.")
  p = jax.lax.stop_gradient(points)
  assign = jnp.argmin(jnp.abs(jax.lax.stop_gradient(w)[..., None].astype(p.dtype) - p), axis=-1)
  return points[assign]
