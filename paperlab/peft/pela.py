"""PELA: replace dense kernels by a low-rank product initialized from their SVD, then fine-tune with feature
distillation and a weight-perturbation regularizer.

Guo et al., "PELA: Learning Parameter-Efficient Models with Low-Rank Approximation", arXiv:2310.10700 (Sec. 3).
Each selected kernel ``W (in, out)`` becomes ``L R^T`` with the half-singular-value split of its truncated SVD,

    W = U S V^T  ->  L = U_r S_r^{1/2} (in, r),  R = V_r S_r^{1/2} (out, r),

at rank ``r = floor(in * out / (c (in + out)))`` for a compression ratio ``c`` (default 2, so the factors hold half
the kernel's parameters); the official code (guoyang9/PELA, ``DeiT/low_rank.py`` ``low_rank_approximate`` and
``ModuleLowRank``, commit e0d3e1f) skips layers with ``out < 10`` (heads). The low-rank model is then fine-tuned
(all its parameters) against the dense teacher with the feature-distillation loss ``L_fm`` (mean of per-layer MSE;
``kd_alpha = 1``) and the weight-perturbation regularizer ``L_wp = mean_l (max|L R^T - W| - eps)^2``
(``eps = 1e-3``; ``DeiT/engine.py`` ``inf_norm``), which keeps every rebuilt kernel close to the original.

Factors are stored as ``{kernel path: {"pela_A": (r, in), "pela_B": (out, r)}}`` (torch layouts of the official
``nn.Sequential(Linear(in, r), Linear(r, out))``: ``pela_A = L^T``, ``pela_B = R``). :func:`apply_pela` replaces the
kernels by ``A^T B^T`` (the merge; the original kernel is not recoverable from it, keep the teacher).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.peft._select import check_paths, map_paths, select_leaves

PyTree = Any
PELAFactors = dict[str, dict[str, jax.Array]]

__all__ = ["PELA_RATIO", "PELA_EPS", "pela_rank", "pela_init", "pela_kernel", "pela_linear", "apply_pela",
           "pela_weight_regularizer", "pela_feature_loss"]

PELA_RATIO = 2.0  # --compression_ratio 2 (DeiT/scripts/train_base.sh)
PELA_EPS = 1e-3  # --inf_norm_eps


def pela_rank(shape: Sequence[int], compress_ratio: float = PELA_RATIO) -> int:
  """``floor(in * out / (c (in + out)))``, the rank at which the two factors hold ``1/c`` of the kernel's parameters
  (the official ``ModuleLowRank._apply``).

  Raises:
    ValueError: a non-2-D shape, ``compress_ratio <= 0``, or a ratio so large that the rank is 0.
  """
  if len(shape) != 2:
    raise ValueError(f"shape must be 2-D (in, out), got {tuple(shape)}.")
  _checks.check_positive("compress_ratio", compress_ratio)
  d_in, d_out = shape
  r = int((d_in * d_out) // (compress_ratio * (d_in + d_out)))
  if r < 1:
    raise ValueError(f"compress_ratio={compress_ratio!r} leaves rank 0 for a kernel of shape {tuple(shape)}; the "
                     f"largest ratio with rank >= 1 is {d_in * d_out / (d_in + d_out):g}.")
  return r


def pela_init(params: PyTree, *, include: str, compress_ratio: float = PELA_RATIO, exclude: str | None = None,
              min_out: int = 10, rank: int | None = None, dtype=None) -> PELAFactors:
  """Half-singular-value low-rank factors of the selected 2-D kernels (PELA, arXiv:2310.10700, Sec. 3.1).

  Args:
    params: parameter pytree (dict or ``nnx.State``) with Flax ``(in, out)`` kernels.
    include: regex on ``/``-joined paths (must select at least one 2-D leaf).
    compress_ratio: ``c`` of :func:`pela_rank` (default 2).
    exclude: optional regex of paths to leave alone.
    min_out: kernels with fewer outputs are skipped (official: ``out_features < 10``, classifier heads).
    rank: a fixed rank for every kernel instead of ``compress_ratio`` (``1 <= rank <= min(in, out)``).
    dtype: factor dtype (default: the kernel's).

  Returns:
    ``{path: {"pela_A": (r, in), "pela_B": (out, r)}}`` with ``A^T B^T`` the best rank-``r`` approximation of ``W``.

  Raises:
    ValueError: nothing left after ``min_out``, or a rank outside ``[1, min(in, out)]``.
  """
  kernels = {k: w for k, w in select_leaves(params, include, exclude, (2,)).items() if w.shape[1] >= min_out}
  if not kernels:
    raise ValueError(f"include={include!r}: every selected kernel has fewer than min_out={min_out} outputs.")
  out = {}
  for path, w in sorted(kernels.items()):
    r = pela_rank(w.shape, compress_ratio) if rank is None else rank
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= min(w.shape):
      raise ValueError(f"rank={r!r} must be an int in [1, {min(w.shape)}] for the kernel {path!r} with shape "
                       f"{tuple(w.shape)}.")
    u, s, vh = jnp.linalg.svd(w.astype(jnp.float32), full_matrices=False)
    half = jnp.sqrt(s[:r])
    dt = dtype or w.dtype
    out[path] = {"pela_A": (u[:, :r] * half).T.astype(dt), "pela_B": (vh[:r].T * half).astype(dt)}
  return out


def _check(path: str, factors: Mapping[str, jax.Array], shape: tuple[int, ...] | None = None) -> None:
  if set(factors) != {"pela_A", "pela_B"}:
    raise ValueError(f"PELA factors at {path!r}: names {sorted(factors)}, expected ['pela_A', 'pela_B'].")
  a, b = factors["pela_A"], factors["pela_B"]
  if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or (shape is not None and (a.shape[1], b.shape[0]) !=
                                                                tuple(shape)):
    raise ValueError(f"PELA factors at {path!r}: pela_A {tuple(a.shape)} and pela_B {tuple(b.shape)} do not form "
                     f"(r, in) and (out, r)" + (f" for a kernel of shape {tuple(shape)}." if shape else "."))


def pela_kernel(factors: Mapping[str, jax.Array]) -> jax.Array:
  """The rebuilt kernel ``A^T B^T = L R^T`` (in, out), float32."""
  _check("factors", factors)
  return factors["pela_A"].astype(jnp.float32).T @ factors["pela_B"].astype(jnp.float32).T


def pela_linear(x: jax.Array, factors: Mapping[str, jax.Array], b: jax.Array | None = None) -> jax.Array:
  """The low-rank layer as the official ``Sequential(Linear(in, r, bias=False), Linear(r, out))``:
  ``(x A^T) B^T + b``, float32."""
  _check("factors", factors)
  y = (x.astype(jnp.float32) @ factors["pela_A"].astype(jnp.float32).T) @ factors["pela_B"].astype(jnp.float32).T
  return y if b is None else y + b.astype(jnp.float32)


def apply_pela(params: PyTree, factors: PELAFactors) -> PyTree:
  """``params`` with every kernel named in ``factors`` replaced by ``A^T B^T`` in the kernel's dtype (jittable).

  Raises:
    ValueError: a path that is not a 2-D leaf of ``params``, or factors that do not fit its shape.
  """
  flat = check_paths(params, factors, (2,), "factors")
  for path, f in factors.items():
    _check(path, f, flat[path].shape)
  return map_paths(params, lambda p, x: pela_kernel(factors[p]).astype(x.dtype) if p in factors else x)


def pela_weight_regularizer(teacher: PyTree, factors: PELAFactors, eps: float = PELA_EPS) -> jax.Array:
  """Weight-perturbation regularizer ``mean_l (max|A_l^T B_l^T - W_l| - eps)^2`` over the factored layers
  (official ``inf_norm``: ``mse_loss(norm(rebuild - W, inf), eps)``), float32 scalar; ``teacher`` holds ``W``."""
  _checks.check_non_negative("eps", eps)
  flat = check_paths(teacher, factors, (2,), "factors")
  errs = []
  for path, f in factors.items():
    _check(path, f, flat[path].shape)
    errs.append((jnp.max(jnp.abs(pela_kernel(f) - flat[path].astype(jnp.float32))) - eps) ** 2)
  return jnp.mean(jnp.stack(errs))


def pela_feature_loss(student_features: Sequence[jax.Array], teacher_features: Sequence[jax.Array]) -> jax.Array:
  """Feature distillation ``L_fm = mean_l MSE(f_l^s, sg(f_l^t))`` (official ``train_one_epoch``), float32 scalar.

  Raises:
    ValueError: different numbers of features or mismatched shapes.
  """
  if len(student_features) != len(teacher_features) or not student_features:
    raise ValueError(f"student_features and teacher_features must be equally long non-empty sequences, got "
                     f"{len(student_features)} and {len(teacher_features)}.")
  losses = []
  for i, (s, t) in enumerate(zip(student_features, teacher_features)):
    if jnp.shape(s) != jnp.shape(t):
      raise ValueError(f"feature {i}: student shape {jnp.shape(s)} != teacher shape {jnp.shape(t)}.")
    losses.append(jnp.mean((s.astype(jnp.float32) - jax.lax.stop_gradient(t).astype(jnp.float32)) ** 2))
  return jnp.mean(jnp.stack(losses))
