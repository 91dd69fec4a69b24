"""How fast the loss landscape settles as the sample grows (Kiselev et al., "Unraveling the Hessian: A Key to Smooth
Convergence in Loss Function Landscapes", arXiv:2409.11995).

With ``L_k(w) = (1/k) sum_{i<=k} l_i(w)`` the empirical loss over the first ``k`` samples, ``L_{k+1} - L_k =
(l_{k+1} - L_k) / (k + 1)`` exactly (the paper's Sec. 3), and the paper measures the landscape's convergence by
``Delta_k = E_{w ~ N(w*, sigma^2 I)} [(L_{k+1}(w) - L_k(w))^2]`` around a minimum ``w*``, which its second-order
bound predicts to decay like ``1/k^2``; :func:`landscape_convergence_bound` evaluates that second-order bound.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from paperlab._tree import path_str

__all__ = ["empirical_loss_prefixes", "landscape_convergence", "landscape_convergence_bound"]

PyTree = Any


def empirical_loss_prefixes(per_example_losses: jax.Array) -> jax.Array:
  """``L_k = (1/k) sum_{i<=k} l_i`` for ``k = 1..n`` over the last axis (cumulative means, in float32 or wider)."""
  losses = jnp.asarray(per_example_losses)
  if losses.ndim < 1 or losses.shape[-1] < 1 or not jnp.issubdtype(losses.dtype, jnp.floating):
    raise ValueError(f"per_example_losses must be a floating array with a non-empty last axis, got shape "
                     f"{losses.shape} dtype {losses.dtype}.")
  losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))
  return jnp.cumsum(losses, -1) / jnp.arange(1, losses.shape[-1] + 1, dtype=losses.dtype)


def landscape_convergence(loss_per_example_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, data: Any,
                          ks: Sequence[int] | jax.Array, key: jax.Array, *, sigma: float = 0.05,
                          num_samples: int = 64) -> jax.Array:
  """``Delta_k = E_w[(L_{k+1}(w) - L_k(w))^2]`` with ``w ~ N(params, sigma^2 I)`` (Kiselev et al.,
  arXiv:2409.11995, Sec. 5; the catalogue's defaults ``sigma = 0.05`` and 64 samples).

  Args:
    loss_per_example_fn: ``(params, data) -> (n,)`` per-example losses, in the data's order (the order defines
      "the first k samples").
    params: the minimum ``w*`` (a pytree of floating arrays).
    data: the ``n`` samples, passed whole to ``loss_per_example_fn``.
    ks: sample counts, each in ``[1, n - 1]``.
    key: PRNG key of the perturbations.
    sigma: perturbation scale (> 0).
    num_samples: Monte-Carlo samples of ``w`` (static).

  Returns:
    ``(len(ks),)`` estimates of ``Delta_k``.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(f"params: every leaf must be floating point, got {jnp.result_type(leaf)} at "
                      f"{path_str(path)!r}.")
  if not (isinstance(num_samples, int) and not isinstance(num_samples, bool) and num_samples >= 1):
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
  if isinstance(sigma, (int, float)) and not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma!r}.")
  concrete = None if isinstance(ks, jax.core.Tracer) else np.asarray(ks)
  ks = jnp.asarray(ks)
  if ks.ndim != 1 or not jnp.issubdtype(ks.dtype, jnp.integer):
    raise ValueError(f"ks must be a 1-D integer array of sample counts, got shape {ks.shape} dtype {ks.dtype}.")
  flat, unravel = ravel_pytree(params)
  n = jax.eval_shape(loss_per_example_fn, params, data).shape[-1]
  if concrete is not None:
    bad = [int(v) for v in concrete if not 1 <= int(v) <= n - 1]
    if bad:
      raise ValueError(f"ks must lie in [1, n - 1 = {n - 1}], got {bad}.")

  def one(k):
    w = unravel(flat + sigma * jax.random.normal(k, flat.shape, flat.dtype))
    prefix = empirical_loss_prefixes(loss_per_example_fn(w, data))
    return (prefix[ks] - prefix[ks - 1]) ** 2  # L_{k+1} - L_k: 0-based index k is L_{k+1}

  return jnp.mean(jax.lax.map(one, jax.random.split(key, num_samples)), 0)


def _chi_moments(dim: int, sigma: float) -> list[float]:
  """``E ||delta||^m`` for ``m = 0..4`` with ``delta ~ N(0, sigma^2 I_dim)`` (chi moments, float64 on the host)."""
  return [sigma ** m * math.exp(m / 2 * math.log(2.0) + math.lgamma((dim + m) / 2) - math.lgamma(dim / 2))
          for m in range(5)]


def landscape_convergence_bound(loss_per_example_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, data: Any,
                                ks: Sequence[int] | jax.Array, *, sigma: float = 0.05,
                                hessian_term: bool = True) -> jax.Array:
  """Second-order upper bound on ``Delta_k`` around ``w*`` (Kiselev et al., "Unraveling the Hessian: A Key to Smooth
  Convergence in Loss Function Landscapes", 2024: the second-order Taylor bound on ``|L_{k+1} - L_k|`` through the
  Hessians' spectral norms, squared and averaged over ``w ~ N(w*, sigma^2 I)``).

  With ``f_k = L_{k+1} - L_k = (l_{k+1} - L_k) / (k + 1)`` and ``delta = w - w*``, the second-order expansion gives
  ``|f_k(w)| <= (a + b ||delta|| + c ||delta||^2) / (k + 1)`` with ``a = |l_{k+1}(w*) - L_k(w*)|``,
  ``b = ||grad l_{k+1}(w*) - grad L_k(w*)||`` and ``c = ||hess l_{k+1}(w*) - hess L_k(w*)||_2 / 2`` (at most the
  paper's ``(||hess l_{k+1}||_2 + ||hess L_k||_2) / 2``, its triangle-inequality form, so this bound is the tighter), so
  ``Delta_k <= E[(a + b R + c R^2)^2] / (k + 1)^2`` with ``R = ||delta||``, ``R / sigma`` chi-distributed with
  ``D`` (the number of parameters) degrees of freedom; its moments are exact. The gradient term is kept: a trained
  ``w*`` is a minimum of the full loss, not of every prefix ``L_k``. The third-order remainder is dropped, as in
  the paper, so this is the paper's bound, not a rigorous one far from ``w*``.

  The Hessians are dense (``D x D``, one per ``k``, of the weighted sum ``l_{k+1} - L_k`` over the whole data; the
  paper's tiny MLPs) and their spectral norms are ``max |eigenvalue|``. Jit-able; ``ks`` may be traced.

  Args:
    loss_per_example_fn: ``(params, data) -> (n,)`` per-example losses, in the data's order.
    params: the minimum ``w*`` (a pytree of floating arrays).
    data: the ``n`` samples, passed whole to ``loss_per_example_fn``.
    ks: sample counts, each in ``[1, n - 1]``.
    sigma: perturbation scale (> 0, a Python float), as in :func:`landscape_convergence`.
    hessian_term: ``False`` drops ``c`` (a first-order bound), a control that the Hessian term is needed.

  Returns:
    ``(len(ks),)`` bounds on ``Delta_k`` (float32 or wider).
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(f"params: every leaf must be floating point, got {jnp.result_type(leaf)} at "
                      f"{path_str(path)!r}.")
  if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
    raise ValueError(f"sigma must be a Python float > 0 (the chi moments are computed on the host), got {sigma!r}.")
  n = jax.eval_shape(loss_per_example_fn, params, data).shape[-1]
  concrete = None if isinstance(ks, jax.core.Tracer) else np.asarray(ks)
  ks = jnp.asarray(ks)
  if ks.ndim != 1 or ks.shape[0] < 1 or not jnp.issubdtype(ks.dtype, jnp.integer):
    raise ValueError(f"ks must be a non-empty 1-D integer array of sample counts, got shape {ks.shape} dtype "
                     f"{ks.dtype}.")
  if concrete is not None:
    bad = [int(v) for v in concrete if not 1 <= int(v) <= n - 1]
    if bad:
      raise ValueError(f"ks must lie in [1, n - 1 = {n - 1}], got {bad}.")
  flat, unravel = ravel_pytree(params)
  flat = flat.astype(jnp.promote_types(flat.dtype, jnp.float32))
  dim = flat.shape[0]
  losses = lambda w: loss_per_example_fn(unravel(w), data)
  at_min = losses(flat)
  prefix = empirical_loss_prefixes(at_min)
  a = jnp.abs(at_min[ks] - prefix[ks - 1])  # |l_{k+1}(w*) - L_k(w*)|: 0-based sample k is the (k+1)-th

  def grad_gap(k):  # grad l_{k+1} - grad L_k: sample k (0-based) against the mean of samples 0..k-1
    i = jnp.arange(n)
    weights = jnp.where(i == k, 1.0, 0.0) - jnp.where(i < k, 1.0 / k, 0.0)
    return jnp.linalg.norm(jax.grad(lambda w: jnp.sum(weights.astype(prefix.dtype) * losses(w)))(flat))

  spectral = lambda h: jnp.max(jnp.abs(jnp.linalg.eigvalsh(h)))

  def gaps(k):  # ||grad f|| and ||hess f||_2 of f = l_{k+1} - L_k: sample k (0-based) against samples 0..k-1
    i = jnp.arange(n)
    weights = (jnp.where(i == k, 1.0, 0.0) - jnp.where(i < k, 1.0 / k, 0.0)).astype(at_min.dtype)
    f = lambda w: jnp.sum(weights * losses(w))
    b = jnp.linalg.norm(jax.grad(f)(flat))
    return b, (spectral(jax.hessian(f)(flat)) / 2 if hessian_term else jnp.zeros_like(b))

  b, c = jax.lax.map(gaps, ks)
  m = _chi_moments(dim, float(sigma))
  moments = a * a * m[0] + 2 * a * b * m[1] + (b * b + 2 * a * c) * m[2] + 2 * b * c * m[3] + c * c * m[4]
  return moments / (ks + 1).astype(moments.dtype) ** 2
