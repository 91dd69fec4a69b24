"""Spectral regularization for continual learning: keep each layer's top singular value near 1.

Lewandowski et al., "Learning Continually by Spectral Regularization", arXiv:2406.06811, Sec. 4 (Eq. 2):

.. math:: R(\\theta) = \\lambda \\sum_l \\bigl(\\sigma_1(W_l)^k - 1\\bigr)^2,

with :math:`\\sigma_1(W_l)` the largest singular value of layer :math:`l`'s weight matrix, estimated by power
iteration with a persistent vector (one iteration per update, as for spectral normalisation, Miyato et al. 2018),
and :math:`k = 2` (the catalogue's reading of the paper). Unlike spectral normalisation (``flax.linen.
SpectralNorm``), nothing is rescaled: the penalty is added to the loss and only pulls :math:`\\sigma_1` towards 1.

Regularised leaves are the weight matrices: every leaf with ``ndim >= 2`` whose ``/``-joined key path matches
``include`` (a convolution kernel ``(..., in, out)`` is read as a ``(prod(...) * in, out)`` matrix); biases and
norm scales are left alone (the paper also pulls each bias towards unit norm; that term is not implemented here).
The gradient of :math:`\\sigma_1 = u^\\top W v` with the power-iteration vectors held
fixed is :math:`u v^\\top`, exact at convergence.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_non_negative, check_positive

__all__ = ["SpectralRegState", "spectral_reg_init", "spectral_penalty", "top_singular_values",
           "power_iteration", "add_spectral_reg"]


class SpectralRegState(NamedTuple):
  """The persistent right singular vector estimate of every regularised matrix (``None`` at other leaves)."""

  vectors: Any


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _as_matrix(w: jax.Array) -> jax.Array:
  return w.reshape(-1, w.shape[-1])


def _selected(params, include: str):
  pattern = re.compile(include)
  return jax.tree_util.tree_map_with_path(
      lambda path, w: bool(jnp.ndim(w) >= 2 and pattern.search(_path(path))), params)


def _normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(x.dtype).tiny)


def power_iteration(w: chex.Array, v: chex.Array, num_iters: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``num_iters`` steps ``u = W v / |W v|``, ``v = W^T u / |W^T u|`` from ``v``; returns ``(sigma, u, v)`` with
  ``sigma = u^T W v`` (differentiable in ``W``; ``u``, ``v`` carry no gradient).

  Converges to the top singular triplet of ``W`` (a 2-D matrix) at the rate ``(sigma_2 / sigma_1)^2`` per step.
  """
  w = jnp.asarray(w)
  if w.ndim != 2 or v.shape != (w.shape[1],):
    raise ValueError(f"power_iteration needs a matrix w (m, n) and v (n,), got {tuple(w.shape)} and {tuple(v.shape)}.")
  if int(num_iters) < 1:
    raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}.")
  wd = jax.lax.stop_gradient(w)

  def step(v, _):
    u = _normalize(wd @ v)
    return _normalize(wd.T @ u), None

  v, _ = jax.lax.scan(step, jax.lax.stop_gradient(v), None, length=int(num_iters))
  u = _normalize(wd @ v)
  return u @ w @ v, u, v


def spectral_reg_init(params: Any, key: jax.Array, *, include: str = ".*") -> SpectralRegState:
  """Random unit starting vectors for every weight matrix of ``params`` (leaves with ``ndim >= 2`` matching
  ``include``); ``None`` elsewhere."""
  selected = _selected(params, include)
  leaves, treedef = jax.tree.flatten(params)
  keys = list(jax.random.split(key, max(1, len(leaves))))
  flags = treedef.flatten_up_to(selected)
  vectors = [_normalize(jax.random.normal(k, (w.shape[-1],), jnp.float32)) if f else None
             for w, f, k in zip(leaves, flags, keys)]
  return SpectralRegState(jax.tree.unflatten(treedef, vectors))


def _sigmas(params, state: SpectralRegState, num_iters: int):
  leaves, treedef = jax.tree.flatten(params)
  vectors = treedef.flatten_up_to(state.vectors)
  sigmas, new = [], []
  for w, v in zip(leaves, vectors):
    if v is None:
      new.append(None)
      continue
    sigma, _, v = power_iteration(_as_matrix(w).astype(jnp.float32), v, num_iters)
    sigmas.append(sigma)
    new.append(v)
  return sigmas, SpectralRegState(jax.tree.unflatten(treedef, new))


def top_singular_values(params: Any, state: SpectralRegState, num_iters: int = 1) -> tuple[list, SpectralRegState]:
  """The power-iteration estimate of ``sigma_1`` of every regularised matrix (in leaf order) and the new state."""
  return _sigmas(params, state, num_iters)


def spectral_penalty(params: Any, state: SpectralRegState, *, lam: float, k: float = 2.0,
                     num_iters: int = 1) -> tuple[jax.Array, SpectralRegState]:
  """``lam * sum_l (sigma_1(W_l)^k - 1)^2`` and the advanced power-iteration state.

  Lewandowski et al. 2024, arXiv:2406.06811, Eq. 2; ``k = 2``, one power iteration per call with persistent
  vectors (the paper's). Add the penalty to the loss and differentiate it with the loss; keep the returned state
  for the next step. Works under ``jax.jit``/``jax.vmap`` (``num_iters`` static).

  Args:
    params: parameter pytree; the matrices selected at :func:`spectral_reg_init` are regularised.
    state: from :func:`spectral_reg_init` or a previous call.
    lam: regularisation strength ``lambda`` (>= 0).
    k: exponent ``k`` (> 0).
    num_iters: power iterations per call.
  """
  check_non_negative("lam", lam)
  check_positive("k", k)
  sigmas, state = _sigmas(params, state, num_iters)
  if not sigmas:
    raise ValueError("spectral_penalty: no weight matrix (leaf with ndim >= 2) was selected in params.")
  total = sum(jnp.square(s ** k - 1.0) for s in sigmas)
  return jnp.asarray(lam, jnp.float32) * total, state


def add_spectral_reg(lam: float, key: jax.Array, *, k: float = 2.0, num_iters: int = 1,
                     include: str = ".*") -> optax.GradientTransformation:
  """Add the gradient of :func:`spectral_penalty` to the updates (chain it before the optimizer, like
  ``optax.add_decayed_weights`` for L2): ``g + lam * 2 (sigma^k - 1) k sigma^(k-1) u v^T`` per matrix.

  Lewandowski et al. 2024, arXiv:2406.06811, Eq. 2. State: the persistent power-iteration vectors.
  """
  check_non_negative("lam", lam)
  check_positive("k", k)

  def init_fn(params):
    return spectral_reg_init(params, key, include=include)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_spectral_reg needs params: call update(updates, state, params).")
    (_, new_state), grads = jax.value_and_grad(
        lambda p: spectral_penalty(p, state, lam=lam, k=k, num_iters=num_iters), has_aux=True)(params)
    return jax.tree.map(lambda u, g: u + g.astype(u.dtype), updates, grads), new_state

  return optax.GradientTransformation(init_fn, update_fn)
