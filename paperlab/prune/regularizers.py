"""HyperSparse regularization for Adaptive Regularized Training (ART).

Glandorf et al., "HyperSparse Neural Networks: Shifting Exploration to Exploitation through Adaptive
Regularization", arXiv:2308.07163, eq. 5-7; transcribed from the official code (GreenAutoML4FAS/HyperSparse at commit
ec945f9, ``loss/HyperSparse.py``, ``hyperSparse`` and ``grad_HS_loss``; defaults from ``utils/arg.py``).

Over all prunable weights ``w`` (concatenated), with ``|w|_(k)`` the magnitude at index ``floor(prune_rate * n)``
of the ascending sort and ``t = 0.6585 / |w|_(k)`` (so ``tanh(t |w|_(k)) ~ 0.577``),

    R_HS(w) = sum_i |w_i| * sum_j tanh(t |w_j|) / sg(sum_j tanh(t |w_j|)) - sum_i |w_i|,

whose value is 0 up to rounding but whose gradient is
``sign(w_i) t / cosh^2(t |w_i|) * sum_j |w_j| / sum_j tanh(t |w_j|)``: small weights are pushed to zero, large ones
(beyond the threshold) barely regularized. ``t`` is a constant of the gradient (``sg``, the official code's
``detach``). ART multiplies the penalty by ``lambda_e = lambda_0 eta^e`` (``lambda_0 = 5e-6``, ``eta = 1.05``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.prune.masks import prunable

PyTree = Any

__all__ = ["HS_CONSTANT", "hypersparse_penalty", "hypersparse_grad", "art_lambda"]

HS_CONSTANT = 0.6585  # tanh(0.6585) = 0.5774


def _prunable_flat(params: PyTree, include, exclude) -> tuple[jax.Array, list[bool]]:
  sel = jax.tree.leaves(prunable(params, include, exclude))
  leaves = jax.tree.leaves(params)
  return jnp.concatenate([x.reshape(-1).astype(jnp.float32) for x, s in zip(leaves, sel) if s]), sel


def _slope(w_abs: jax.Array, prune_rate) -> jax.Array:
  v = _checks._concrete(prune_rate)
  idx = math.floor(v * w_abs.size) if v is not None else jnp.floor(prune_rate * w_abs.size).astype(jnp.int32)
  return HS_CONSTANT / jax.lax.stop_gradient(jnp.sort(w_abs)[idx])


def hypersparse_penalty(params: PyTree, prune_rate: float, *, include: str | None = None,
                        exclude: str | None = None) -> jax.Array:
  """The HyperSparse regularizer ``R_HS`` (module docstring) over the prunable leaves (``ndim >= 2`` by default),
  float32 scalar; differentiate it with ``jax.grad`` (jittable).

  Args:
    params: parameter pytree.
    prune_rate: the target fraction of pruned weights ``kappa``, in ``[0, 1)`` (e.g. 0.98).
    include, exclude: path filter of prunable leaves.
  """
  _checks.check_range("prune_rate", prune_rate, 0.0, 1.0, high_inclusive=False)
  w, _ = _prunable_flat(params, include, exclude)
  w_abs = jnp.abs(w)
  t = _slope(w_abs, prune_rate)
  tanh_sum = jnp.sum(jnp.tanh(t * w_abs))
  return jnp.sum(w_abs * tanh_sum / jax.lax.stop_gradient(tanh_sum) - w_abs)


def hypersparse_grad(params: PyTree, prune_rate: float, *, include: str | None = None,
                     exclude: str | None = None) -> PyTree:
  """The closed-form gradient of :func:`hypersparse_penalty` (the official ``grad_HS_loss``):
  ``sign(w) t / cosh^2(t |w|) * sum |w| / sum tanh(t |w|)`` on prunable leaves, zero elsewhere."""
  _checks.check_range("prune_rate", prune_rate, 0.0, 1.0, high_inclusive=False)
  w, sel = _prunable_flat(params, include, exclude)
  w_abs = jnp.abs(w)
  t = _slope(w_abs, prune_rate)
  g = jnp.sign(w) * t / jnp.cosh(t * w_abs) ** 2 * jnp.sum(w_abs) / jnp.sum(jnp.tanh(t * w_abs))
  leaves, treedef = jax.tree.flatten(params)
  out, start = [], 0
  for x, s in zip(leaves, sel):
    if s:
      out.append(g[start:start + x.size].reshape(x.shape).astype(x.dtype))
      start += x.size
    else:
      out.append(jnp.zeros_like(x))
  return jax.tree.unflatten(treedef, out)


def art_lambda(epoch, lam0: float = 5e-6, eta: float = 1.05) -> jax.Array:
  """ART's regularization weight ``lambda_e = lambda_0 eta^e`` (official defaults ``lambda_init = 5e-6``,
  ``eta = 1.05``), increased every epoch until pruning no longer hurts."""
  _checks.check_positive("lam0", lam0)
  _checks.check_range("eta", eta, 1.0, None, low_inclusive=False)
  return lam0 * jnp.asarray(eta, jnp.float32) ** jnp.asarray(epoch, jnp.float32)
