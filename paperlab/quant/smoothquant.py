"""SmoothQuant scales and SmoothQuant+ 4-bit weight-only quantization.

SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", arXiv:2211.10438, Eq. 4; official mit-han-lab/smoothquant ``smooth.py``) migrates activation outliers
into the weights with a per-input-channel factor ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (clamped at
1e-5): ``X diag(s)^-1`` is folded into the previous op and ``diag(s) W`` into the layer (rows of a Flax kernel),
which leaves the function unchanged.

SmoothQuant+ (Pan et al., "SmoothQuant+: Accurate and Efficient 4-bit Post-Training Weight Quantization for LLM",
2023; catalogue [88]) applies that smoothing before group-wise asymmetric 4-bit RTN of the weights (activations stay in
16 bits), with one model-wide ``alpha`` chosen by a grid search (step 0.05) on the quantized model's output error on
calibration data. The smoothed kernel is kept with its explicit factor (``w_hat = Q(diag(s) W) / s``), which equals
folding ``1/s`` into the previous op (:func:`paperlab.quant.fold_scale`).
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paperlab.quant.rtn import QuantizedWeight, check_finite, check_kernel, quantize_rtn

__all__ = ["smooth_scales", "SmoothedWeight", "smooth_quantize", "smoothquant_plus"]


def smooth_scales(x_absmax: jax.Array, w_absmax: jax.Array, alpha: float | jax.Array) -> jax.Array:
  """SmoothQuant's ``s = clamp(x_absmax^alpha / w_absmax^(1 - alpha), 1e-5)`` (arXiv:2211.10438, Eq. 4).

  Args:
    x_absmax: ``(in,)`` per-input-channel maximum of ``|X|`` over calibration tokens.
    w_absmax: ``(in,)`` per-input-channel maximum of ``|W|`` over output channels (rows of a Flax kernel).
    alpha: migration strength in [0, 1] (0.5 for OPT, 0.85 for Llama-2 in the official scripts). May be traced.

  Returns:
    ``(in,)`` float32 scales. Jittable.
  """
  x_absmax = jnp.asarray(x_absmax, jnp.float32)
  w_absmax = jnp.asarray(w_absmax, jnp.float32)
  if x_absmax.shape != w_absmax.shape or x_absmax.ndim != 1:
    raise ValueError(f"x_absmax and w_absmax must be 1-D of the same length, got {x_absmax.shape} and "
                     f"{w_absmax.shape}.")
  if not isinstance(alpha, jax.core.Tracer) and not 0.0 <= float(alpha) <= 1.0:
    raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
  return jnp.maximum(x_absmax ** alpha / w_absmax ** (1.0 - alpha), 1e-5)


class SmoothedWeight(NamedTuple):
  """A smoothed, RTN-quantized kernel: ``quantized`` holds ``Q(diag(s) W)``, ``input_scale`` is ``s``."""

  quantized: QuantizedWeight
  input_scale: jax.Array

  @property
  def w_hat(self) -> jax.Array:
    """The effective kernel ``diag(s)^-1 Q(diag(s) W)``."""
    q = self.quantized.w_hat
    return (q.astype(jnp.float32) / self.input_scale[:, None]).astype(q.dtype)


def smooth_quantize(w: jax.Array, x_absmax: jax.Array, alpha: float, *, bits: int = 4,
                    group_size: int | None = 128) -> SmoothedWeight:
  """Smooth one kernel with :func:`smooth_scales` and quantize it with asymmetric group-wise RTN (SmoothQuant+'s
  per-layer step)."""
  w = check_kernel("w", w)
  check_finite("x_absmax", x_absmax)
  s = smooth_scales(x_absmax, jnp.max(jnp.abs(w.astype(jnp.float32)), axis=1), alpha)
  return SmoothedWeight(quantize_rtn(w.astype(jnp.float32) * s[:, None], bits=bits, group_size=group_size), s)


def smoothquant_plus(model: nnx.Module, batches: Iterable[Any], *, bits: int = 4, group_size: int | None = 128,
                     alphas: Sequence[float] = tuple(np.round(np.arange(0.0, 1.0001, 0.05), 2)),
                     include: str | None = None, exclude: str | None = None):
  """SmoothQuant+ over a Flax NNX model: one model-wide ``alpha`` from ``alphas`` (0, 0.05, ..., 1), chosen by the
  mean squared error between the quantized and the full-precision model outputs on the calibration ``batches``.
  Activation maxima come from the full-precision model. Host loop over ``alphas`` (one full evaluation each).

  Returns:
    ``(quantized_model, alpha, {alpha: loss})``.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  batches = list(batches)
  xs = calibration.capture_inputs(model, batches, include=include, exclude=exclude)
  x_absmax = {p: jnp.max(jnp.abs(x), axis=0) for p, x in xs.items()}
  flat = dict(nnx.to_flat_state(nnx.split(model)[1]))
  kernels = {p: flat[tuple(int(q) if q.isdigit() else q for q in p.split("/")) + ("kernel",)].get_value()
             for p in xs}
  reference = [model(b) for b in batches]
  graphdef = nnx.split(model)[0]

  @jax.jit
  def loss(state):
    m = nnx.merge(graphdef, state)
    return sum(jnp.mean(jnp.square(m(b) - r)) for b, r in zip(batches, reference)) / len(batches)

  losses, best = {}, None
  for alpha in alphas:
    q = {p: smooth_quantize(k, x_absmax[p], float(alpha), bits=bits, group_size=group_size).w_hat
         for p, k in kernels.items()}
    candidate = calibration.replace_kernels(model, q)
    losses[float(alpha)] = float(loss(nnx.split(candidate)[1]))
    if best is None or losses[float(alpha)] < losses[best[0]]:
      best = (float(alpha), candidate)
  return best[1], best[0], losses
