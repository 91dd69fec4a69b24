"""MambaQuant's variance-aligned rotations (Xu et al., "MambaQuant: Quantizing the Mamba Family with Variance Aligned
Rotation Methods", arXiv:2501.13484, ICLR 2025).

A Hadamard rotation ``x -> x H`` (QuaRot) spreads outlier channels over all channels, but the rotated channels keep
unequal variances whenever the channels are correlated: ``(H^T C H)_ii`` differs across ``i`` for a non-diagonal
second-moment matrix ``C = E[x^T x]`` (e.g. a common positive mode, which post-activation features have).
MambaQuant (Sec. 4, "KLT-enhanced rotation") first applies the Karhunen-Loeve transform of the calibration activations,
``C = K Lambda K^T`` (eigenvectors ``K``), then the Hadamard matrix: ``R = K H``. Then
``R^T C R = H^T Lambda H`` and, ``H`` having entries ``+-1/sqrt(n)``, every diagonal entry equals
``trace(Lambda) / n``: the rotated channels all get the same variance. The rotation is fused into the layer as
``W' = R^T W`` with the input ``x' = x R``, so ``x' W' = x W`` before quantization.

**Smooth-fused rotation** (Sec. 4, "Smooth-fused rotation"): SmoothQuant's per-channel smoothing ``s = max|X|^alpha /
max|W|^(1 - alpha)`` (:func:`paperlab.quant.smooth_scales`) is applied before the rotation, ``X diag(s)^-1`` (fused
into the previous op in the paper) and ``diag(s) W``, and the KLT is computed on the smoothed activations. For the
SiLU-gated output path of Mamba the paper modifies the activation to absorb ``s``; that part is specific to Mamba's
gate and is not implemented here (an MLP's input transform is returned as an explicit matrix instead).

The method section's equations are implemented as stated here (their numbers were not checked against the paper's
text). ``K`` is computed as in a public MambaQuant code release (github.com/xzktx003/mambaquant-master, commit
029fba1, ``quantize/get_klt_matrix.py``, ``get_llm_act_klt``): ``torch.linalg.eigh`` of ``torch.cov`` of the
calibration activations (the covariance about the mean), eigenvectors in ``eigh``'s ascending order;
``centered=False`` uses the uncentered second moment ``X^T X / N`` instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from paperlab import _checks
from paperlab.quant.rtn import check_finite, check_kernel
from paperlab.quant.smoothquant import smooth_scales

__all__ = ["hadamard", "second_moment", "klt_hadamard_rotation", "apply_rotation", "RotatedLayer",
           "smooth_then_rotate"]


def _check_size(n) -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 or n & (n - 1):
    raise ValueError(f"n must be a positive power of two (Sylvester Hadamard size), got {n!r}.")
  return int(n)


def hadamard(n: int) -> jax.Array:
  """The normalized Sylvester Hadamard matrix ``H_n / sqrt(n)`` (``scipy.linalg.hadamard``), float32, orthogonal
  and symmetric. Built on the host from the static ``n`` (usable inside ``jit``: ``n`` is a shape).

  Raises:
    ValueError: ``n`` not a positive power of two.
  """
  n = _check_size(n)
  return jnp.asarray(scipy.linalg.hadamard(n).astype(np.float32) / np.float32(np.sqrt(n)))


def _check_x(name: str, x) -> jax.Array:
  if not hasattr(x, "shape") or len(x.shape) < 2:
    raise ValueError(f"{name} must have shape (..., n) with at least one token axis, got "
                     f"{getattr(x, 'shape', type(x).__name__)}.")
  check_finite(name, x)
  return jnp.asarray(x, jnp.float32).reshape(-1, x.shape[-1])


def second_moment(x_calib: jax.Array, *, centered: bool = False) -> jax.Array:
  """``C = X^T X / N`` over the calibration tokens ``x_calib (..., n)`` (``centered``: of ``X - mean(X)``),
  float32 ``(n, n)``. Jittable."""
  x = _check_x("x_calib", x_calib)
  if centered:
    x = x - jnp.mean(x, axis=0, keepdims=True)
  return x.T @ x / x.shape[0]


def klt_hadamard_rotation(x_calib: jax.Array, *, centered: bool = True) -> jax.Array:
  """MambaQuant's KLT-enhanced rotation ``R = K H`` (arXiv:2501.13484, Sec. 4, the KLT-enhanced rotation ``H_K = K H``).

  ``K`` holds the eigenvectors of the calibration covariance ``C`` (:func:`second_moment`, centered by default, as
  the release's ``torch.cov``) in ``jnp.linalg.eigh``'s ascending order of eigenvalue, ``H`` is :func:`hadamard`.
  Then ``R^T C R`` has all diagonal entries equal to ``trace(C) / n``. Jittable (``n`` is a static shape).

  Args:
    x_calib: calibration activations ``(..., n)``, ``n`` a power of two.
    centered: the covariance about the mean (default, as the release); ``False``: the uncentered ``X^T X / N``.

  Returns:
    ``(n, n)`` float32 orthogonal ``R``; rotate inputs as ``x R`` and kernels as ``R^T W``
    (:func:`apply_rotation`).
  """
  x = _check_x("x_calib", x_calib)
  n = _check_size(x.shape[1])
  _, k = jnp.linalg.eigh(second_moment(x, centered=centered))
  return k @ hadamard(n)


def apply_rotation(w_out: jax.Array, rotation: jax.Array, w_in: jax.Array | None = None,
                   b_in: jax.Array | None = None):
  """Fuse a rotation ``R`` into a layer: ``W_out' = R^T W_out`` (the layer reading the rotated input ``x R``).

  If the producer of ``x`` is linear (``x = h W_in + b_in``, no nonlinearity in between), its kernel and bias absorb
  the input rotation, ``W_in' = W_in R``, ``b_in' = b_in R``, and the pair computes the same function. Otherwise
  (e.g. a ReLU in between) ``x R`` is computed online, as QuaRot does before a down projection. Jittable.

  Returns:
    ``W_out'`` alone, or ``(W_in', b_in', W_out')`` when ``w_in`` is given (``b_in'`` is ``None`` without ``b_in``).
  """
  w_out = check_kernel("w_out", w_out)
  rotation = jnp.asarray(rotation)
  n = w_out.shape[0]
  if rotation.shape != (n, n):
    raise ValueError(f"rotation must be ({n}, {n}) to match w_out's input axis, got {tuple(rotation.shape)}.")
  w_new = (rotation.astype(jnp.float32).T @ w_out.astype(jnp.float32)).astype(w_out.dtype)
  if w_in is None:
    return w_new
  w_in = check_kernel("w_in", w_in)
  if w_in.shape[1] != n:
    raise ValueError(f"w_in must produce the {n} channels w_out reads, got shape {tuple(w_in.shape)}.")
  w_in_new = (w_in.astype(jnp.float32) @ rotation.astype(jnp.float32)).astype(w_in.dtype)
  b_new = None if b_in is None else (jnp.asarray(b_in, jnp.float32) @ rotation).astype(jnp.asarray(b_in).dtype)
  return w_in_new, b_new, w_new


class RotatedLayer(NamedTuple):
  """A smoothed and rotated layer: ``(x @ transform) @ w`` equals ``x @ w_original``.

  Attributes:
    w: ``R^T diag(s) W`` ``(n, out)``.
    transform: ``diag(1/s) R`` ``(n, n)``, the input transform (``diag(1/s)`` is what the paper folds into the
      previous op; ``R`` is the rotation).
    scales: the smoothing factors ``s`` ``(n,)`` (ones without smoothing).
    rotation: ``R`` ``(n, n)``.
  """

  w: jax.Array
  transform: jax.Array
  scales: jax.Array
  rotation: jax.Array


def smooth_then_rotate(w: jax.Array, x_calib: jax.Array, *, alpha: float | None = 0.5,
                       centered: bool = True) -> RotatedLayer:
  """MambaQuant's smooth-fused rotation (arXiv:2501.13484, Sec. 4, smooth-fused rotation): SmoothQuant smoothing ``s =
  max|X|^alpha / max|W|^(1 - alpha)`` (rows of the Flax kernel), then the KLT-enhanced rotation of the *smoothed*
  calibration activations ``X diag(s)^-1``. ``alpha=None`` skips the smoothing (plain KLT + Hadamard).
  ``alpha`` defaults to SmoothQuant's 0.5. Jittable.

  Args:
    w: kernel ``(n, out)``, ``n`` a power of two.
    x_calib: calibration inputs ``(..., n)``.
    alpha: migration strength in [0, 1], or ``None``.
    centered: as :func:`klt_hadamard_rotation`.

  Returns:
    :class:`RotatedLayer`; exact before quantization: ``x @ transform @ w' == x @ w``.
  """
  w = check_kernel("w", w)
  x = _check_x("x_calib", x_calib)
  if x.shape[1] != w.shape[0]:
    raise ValueError(f"x_calib must have {w.shape[0]} channels (w's in), got {x.shape[1]}.")
  if alpha is None:
    s = jnp.ones((w.shape[0],), jnp.float32)
  else:
    _checks.check_range("alpha", alpha, 0.0, 1.0)
    s = smooth_scales(jnp.max(jnp.abs(x), axis=0), jnp.max(jnp.abs(w.astype(jnp.float32)), axis=1), alpha)
  r = klt_hadamard_rotation(x / s, centered=centered)
  w_new = (r.T @ (w.astype(jnp.float32) * s[:, None])).astype(w.dtype)
  return RotatedLayer(w_new, r / s[:, None], s, r)
