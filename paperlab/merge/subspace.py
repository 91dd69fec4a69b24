"""Subspace merging: isotropic merging (Iso-C, Iso-CTS) and MaTS (merging by matching models in task subspaces,
solved per layer by conjugate gradients).

Matrices are merged per 2-D leaf with ``jnp.linalg.svd`` / ``jax.scipy.sparse.linalg.cg`` (jittable); other
leaves use the mean task vector (Iso) or the plain average (MaTS). 2-D leaves are read as Flax ``(in, out)``
kernels; pass ``layout="torch"`` for PyTorch ``(out, in)`` weights.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab._tree import path_str
from paperlab.merge.averaging import (IntegerLeaves, _check_models, _compute_dtype, _integer_leaves, _is_float,
                                     _model_names, _scalars_as_arrays, _selected)

PyTree = Any

__all__ = ["iso_c", "iso_cts", "flatten_spectrum", "mats"]

_LAYOUTS = ("flax", "torch")


def _leaves(base, finetuned, include, exclude, integer_leaves: IntegerLeaves = "error"):
  """Flattened leaves (base leaves with the selected integer/bool ones resolved by the ``integer_leaves`` policy)."""
  base = _scalars_as_arrays(base)
  finetuned = _check_models(finetuned, "finetuned", base=base)
  flat, treedef = jax.tree_util.tree_flatten_with_path(base)
  names = [path_str(p) for p, _ in flat]
  chosen = _selected(base, include, exclude)
  ints = _integer_leaves([base, *finetuned], _model_names(len(finetuned), "finetuned", "base"), integer_leaves,
                         has_base=True, selected=chosen)
  b = [ints.get(i, x) for i, (_, x) in enumerate(flat)]
  ms = [treedef.flatten_up_to(m) for m in finetuned]
  sel = [s and _is_float(x) for s, x in zip(chosen, b)]
  return treedef, names, b, ms, sel


def flatten_spectrum(m: jax.Array) -> jax.Array:
  """``sigma_bar * U V^T`` for ``m = U diag(sigma) V^T``: the matrix with ``m``'s singular vectors and all singular
  values replaced by their mean (Marczak et al., arXiv:2502.04959, eq. 8)."""
  u, s, vt = jnp.linalg.svd(m, full_matrices=False)
  return jnp.mean(s) * (u @ vt)


@jax.jit
def _iso_c_leaf(taus):
  return flatten_spectrum(sum(taus))


@functools.partial(jax.jit, static_argnames=("k_common",))
def _iso_cts_leaf(taus, k_common):
  """Iso-CTS on (out, in) task matrices; ``k_common`` of the ``r = min(out, in)`` directions are common."""
  t = len(taus)
  r = min(taus[0].shape)
  per_task = (r - k_common) // t
  u, s, vt = jnp.linalg.svd(sum(taus), full_matrices=False)
  uc, sc, vc = u[:, :k_common], s[:k_common], vt[:k_common]
  us, ss, vs = [uc], [sc], [vc]
  if per_task > 0:
    for tau in taus:
      resid = tau - uc @ (uc.T @ tau)  # the task's part outside the common subspace
      ut, st, vtt = jnp.linalg.svd(resid, full_matrices=False)
      us.append(ut[:, :per_task])
      ss.append(st[:per_task])
      vs.append(vtt[:per_task])
  big_u = jnp.concatenate(us, axis=1)
  big_v = jnp.concatenate(vs, axis=0)
  # orthonormalize the stacked bases: the polar factor (nearest orthonormal matrix) of each
  pu, _, qu = jnp.linalg.svd(big_u, full_matrices=False)
  pv, _, qv = jnp.linalg.svd(big_v, full_matrices=False)
  sigma = jnp.mean(jnp.concatenate(ss))
  return sigma * ((pu @ qu) @ (pv @ qv))


def _iso(base, finetuned, alpha, include, exclude, svd_exclude, layout, matrix_fn, integer_leaves):
  _checks.check_choice("layout", layout, _LAYOUTS)
  treedef, names, b, ms, sel = _leaves(base, finetuned, include, exclude, integer_leaves)
  skip = re.compile(svd_exclude) if svd_exclude is not None else None
  out = []
  for i, (name, x) in enumerate(zip(names, b)):
    if not sel[i]:
      out.append(x)
      continue
    ct = _compute_dtype(x.dtype)
    taus = [m[i].astype(ct) - x.astype(ct) for m in ms]
    if x.ndim == 2 and (skip is None or not skip.search(name)):
      mats_ = [t.T if layout == "flax" else t for t in taus]  # work in (out, in)
      delta = matrix_fn(tuple(mats_))
      delta = delta.T if layout == "flax" else delta
    else:
      delta = sum(taus) / len(taus)
    out.append((x.astype(ct) + jnp.asarray(alpha, ct) * delta).astype(x.dtype))
  return jax.tree.unflatten(treedef, out)


def iso_c(base: PyTree, finetuned: Sequence[PyTree], alpha: float | jax.Array = 1.0, *,
          svd_exclude: str | None = "embed", layout: str = "flax", include: str | None = None,
          exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Iso-C: isotropic merging in the common subspace (Marczak et al., "No Task Left Behind: Isotropic Model Merging
  with Common and Task-Specific Subspaces", arXiv:2502.04959, Sec. 4.1, eq. 8).

  For each 2-D leaf, ``Delta = sum_t tau_t = U diag(sigma) V^T`` is replaced by ``mean(sigma) U V^T`` (a flat
  spectrum); other leaves (and 2-D leaves whose path matches ``svd_exclude``) use ``mean_t tau_t``; then
  ``theta = theta_base + alpha * Delta_iso``.

  Args:
    alpha: scaling (1.0 in FusionBench's config, 1.5 in its ViT examples; tune on validation data).
    svd_exclude: regex of 2-D leaves merged by the mean instead (embeddings, as FusionBench does).
    layout: ``"flax"`` (2-D leaves are ``(in, out)``) or ``"torch"`` (``(out, in)``); Iso-C itself does not depend
      on it.
    include, exclude: path filters; unselected leaves are the base's.
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``); or ``"first"``, ``"last"``, ``"base"`` or a callable
      ``(path, leaves) -> leaf`` (see :mod:`paperlab.merge.averaging`).
  """
  return _iso(base, finetuned, alpha, include, exclude, svd_exclude, layout, _iso_c_leaf, integer_leaves)


def iso_cts(base: PyTree, finetuned: Sequence[PyTree], alpha: float | jax.Array = 1.0, *,
            common_fraction: float = 0.8, svd_exclude: str | None = "embed", layout: str = "flax",
            include: str | None = None, exclude: str | None = None, integer_leaves: IntegerLeaves = "error"
            ) -> PyTree:
  """Iso-CTS: isotropic merging with common and task-specific subspaces (arXiv:2502.04959, Sec. 4.2, Alg. 1).

  Per 2-D leaf (in ``(out, in)`` orientation): keep the top ``k`` singular directions of ``sum_t tau_t`` as the
  common subspace (``k ~ common_fraction * r``, adjusted so that ``r - k`` divides evenly among the ``T`` tasks),
  add each task's top ``(r - k) / T`` directions of its component orthogonal to the common left subspace,
  orthonormalize the stacked bases (polar factor) and give every direction the mean singular value. Other leaves
  use ``mean_t tau_t``. ``theta = theta_base + alpha * Delta``. Integer/bool leaves follow ``integer_leaves``
  (equal -> kept, different -> ``ValueError``; see :func:`iso_c`).
  """
  _checks.check_range("common_fraction", common_fraction, 0.0, 1.0, low_inclusive=False)
  t = len(finetuned) if isinstance(finetuned, (list, tuple)) else 0

  def matrix_fn(taus):
    r = min(taus[0].shape)
    k = int(r * common_fraction)
    k = r - round((r - k) / t) * t
    k = min(max(k, 1), r)
    return _iso_cts_leaf(taus, k)

  return _iso(base, finetuned, alpha, include, exclude, svd_exclude, layout, matrix_fn, integer_leaves)


@functools.partial(jax.jit, static_argnames=("iters",))
def _mats_leaf(ws, gin, gout, x0, iters):
  def op(w):
    return sum(a @ w @ s for a, s in zip(gin, gout))

  rhs = sum(a @ w @ s for a, w, s in zip(gin, ws, gout))
  sol, _ = jax.scipy.sparse.linalg.cg(op, rhs, x0=x0, tol=0.0, atol=0.0, maxiter=iters)
  return sol


def mats(base: PyTree, finetuned: Sequence[PyTree], grams_in: Sequence[Mapping[str, jax.Array]],
         grams_out: Sequence[Mapping[str, jax.Array]] | None = None, *, init: str = "task_arithmetic",
         init_lam: float = 0.3, iters: int = 100, offdiag_scale: float = 1.0,
         integer_leaves: IntegerLeaves = "error") -> PyTree:
  """MaTS (Tam et al., "Merging by Matching Models in Task Parameter Subspaces", arXiv:2312.04339, Sec. 3-4):
  solve ``sum_i A_i W S_i = sum_i A_i W_i S_i`` for every Dense kernel ``W`` (Flax ``(in, out)``; a Conv kernel
  ``(*kernel_size, in, out)`` as its ``(prod(kernel_size) * in, out)`` im2col matrix) by conjugate
  gradients, where ``A_i`` is model i's input Gram (``in x in``) and ``S_i`` its output-gradient Gram
  (``out x out``; identity when ``grams_out`` is None, which makes the fixed point RegMean's closed form).

  Args:
    base, finetuned: pre-trained and fine-tuned parameters.
    grams_in: one mapping per model ``{kernel path: A_i}`` (e.g. ``paperlab.merge.gram_matrices``); kernels
      without a Gram are averaged, as are all other leaves.
    grams_out: optional mappings ``{kernel path: S_i}`` (block-diagonal Fisher / K-FAC output factor, e.g.
      from :func:`paperlab.merge.output_gradient_grams`).
    init: CG start: ``"task_arithmetic"`` (``theta_base + init_lam * sum tau``), ``"average"`` or ``"base"``.
    iters: CG iterations (the paper uses tens to ~100); ``iters=0`` returns the init.
    offdiag_scale: multiply off-diagonal Gram entries by this (RegMean's ``alpha``; 1 keeps them).
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``); or ``"first"``, ``"last"``, ``"base"`` or a callable
      ``(path, leaves) -> leaf`` (see :mod:`paperlab.merge.averaging`).
  """
  _checks.check_choice("init", init, ("task_arithmetic", "average", "base"))
  _checks.check_range("offdiag_scale", offdiag_scale, 0.0, 1.0)
  if not isinstance(iters, int) or iters < 0:
    raise ValueError(f"iters must be a non-negative int, got {iters!r}.")
  treedef, names, b, ms, sel = _leaves(base, finetuned, None, None, integer_leaves)
  if len(grams_in) != len(ms):
    raise ValueError(f"grams_in must hold one mapping per model ({len(ms)}), got {len(grams_in)}.")
  if grams_out is not None and len(grams_out) != len(ms):
    raise ValueError(f"grams_out must hold one mapping per model ({len(ms)}), got {len(grams_out)}.")

  def scaled(g):
    g = jnp.asarray(g, jnp.float32)
    return offdiag_scale * g + (1 - offdiag_scale) * jnp.diag(jnp.diag(g))

  out = []
  for i, (name, x) in enumerate(zip(names, b)):
    if not sel[i]:
      out.append(x)
      continue
    ws = tuple(m[i].astype(jnp.float32) for m in ms)
    avg = sum(ws) / len(ws)
    if x.ndim < 2 or not all(name in g for g in grams_in):
      out.append(avg.astype(x.dtype))
      continue
    # A convolution kernel (*kernel_size, in, out) is the (prod(kernel_size) * in, out) matrix of its im2col form.
    rows, cols = math.prod(x.shape[:-1]), x.shape[-1]
    ws = tuple(w.reshape(rows, cols) for w in ws)
    gin = tuple(scaled(g[name]) for g in grams_in)
    for g in gin:
      if g.shape != (rows, rows):
        raise ValueError(f"grams_in[...][{name!r}] must have shape {(rows, rows)}, got {g.shape}.")
    if grams_out is None:
      gout = tuple(jnp.eye(cols, dtype=jnp.float32) for _ in ms)
    else:
      gout = tuple(jnp.asarray(g[name], jnp.float32) for g in grams_out)
    xb = x.astype(jnp.float32).reshape(rows, cols)
    x0 = {"task_arithmetic": xb + init_lam * sum(w - xb for w in ws), "average": sum(ws) / len(ws), "base": xb}[init]
    out.append(_mats_leaf(ws, gin, gout, x0, iters).reshape(x.shape).astype(x.dtype))
  return jax.tree.unflatten(treedef, out)
