"""How fast the loss landscape settles as the sample grows (Kiselev et al., "Unraveling the Hessian: A Key to Smooth
Convergence in Loss Function Landscapes", arXiv:2409.11995).

With ``L_k(w) = (1/k) sum_{i<=k} l_i(w)`` the empirical loss over the first ``k`` samples, ``L_{k+1} - L_k =
(l_{k+1} - L_k) / (k + 1)`` exactly (the paper's Sec. 3), and the paper measures the landscape's convergence by
``Delta_k = E_{w ~ N(w*, sigma^2 I)} [(L_{k+1}(w) - L_k(w))^2]`` around a minimum ``w*``, which its second-order
bound predicts to decay like ``1/k^2``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from paperlab._tree import path_str

__all__ = ["empirical_loss_prefixes", "landscape_convergence"]

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
