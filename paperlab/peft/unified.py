"""The unified view of parameter-efficient transfer learning: prefix tuning as gated attention, and parallel /
sequential adapters.

He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", arXiv:2110.04366, eq. 5-7 and Sec. 3:

* prefix tuning prepends ``l`` trainable key/value vectors ``P_k, P_v``; the attention output is exactly
  ``(1 - lambda(x)) Attn(q, K, V) + lambda(x) Attn(q, P_k, P_v)`` with
  ``lambda(x) = sum exp(q P_k^T) / (sum exp(q P_k^T) + sum exp(q K^T))`` (eq. 7; computed here with log-sum-exps,
  so ``lambda = sigmoid(lse_P - lse_K)``);
* an adapter is ``h <- h + s f(x W_down) W_up``: *sequential* when ``x`` is the sub-layer's output ``h`` (Houlsby),
  *parallel* when ``x`` is the sub-layer's input (eq. 9-10; the "scaled parallel adapter" of the MAM adapter uses
  ``s = 4``).

All functions are jittable and broadcast over leading (batch, head) axes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

__all__ = ["attention", "prefix_attention", "prefix_attention_gated", "sequential_adapter", "parallel_adapter"]


def _check_last(name: str, a: jax.Array, d: int) -> None:
  if a.shape[-1] != d:
    raise ValueError(f"{name} must have last dimension {d} (the query's), got shape {a.shape}.")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None) -> jax.Array:
  """``softmax(q k^T * scale) v`` over the last two axes (``scale`` default ``1/sqrt(d)``)."""
  _check_last("k", k, q.shape[-1])
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  return jax.nn.softmax(jnp.einsum("...nd,...md->...nm", q, k) * scale, axis=-1) @ v


def prefix_attention(q: jax.Array, k: jax.Array, v: jax.Array, pk: jax.Array, pv: jax.Array, *,
                     scale: float | None = None) -> jax.Array:
  """Prefix tuning computed directly: attention over ``[P_k; K]`` and ``[P_v; V]`` (prefixes concatenated on the
  key axis)."""
  _check_last("pk", pk, q.shape[-1])
  if pk.shape[-2] != pv.shape[-2]:
    raise ValueError(f"pk and pv must hold the same number of prefixes, got {pk.shape} and {pv.shape}.")
  return attention(q, jnp.concatenate([pk, k], axis=-2), jnp.concatenate([pv, v], axis=-2), scale=scale)


def prefix_attention_gated(q: jax.Array, k: jax.Array, v: jax.Array, pk: jax.Array, pv: jax.Array, *,
                           scale: float | None = None) -> tuple[jax.Array, jax.Array]:
  """Prefix tuning in the paper's gated form (eq. 7): ``((1 - lambda) Attn(q, K, V) + lambda Attn(q, P_k, P_v),
  lambda)`` with ``lambda`` of shape ``(..., n, 1)``; equals :func:`prefix_attention`."""
  _check_last("pk", pk, q.shape[-1])
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  lse_k = jax.nn.logsumexp(jnp.einsum("...nd,...md->...nm", q, k) * scale, axis=-1, keepdims=True)
  lse_p = jax.nn.logsumexp(jnp.einsum("...nd,...ld->...nl", q, pk) * scale, axis=-1, keepdims=True)
  lam = jax.nn.sigmoid(lse_p - lse_k)
  out = (1 - lam) * attention(q, k, v, scale=scale) + lam * attention(q, pk, pv, scale=scale)
  return out, lam


def sequential_adapter(h: jax.Array, w_down: jax.Array, w_up: jax.Array, *, s: float = 1.0,
                       f: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  """Houlsby's sequential adapter on a sub-layer output ``h``: ``h + s f(h W_down) W_up``."""
  return h + s * f(h @ w_down) @ w_up


def parallel_adapter(h: jax.Array, x: jax.Array, w_down: jax.Array, w_up: jax.Array, *, s: float = 4.0,
                     f: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  """The (scaled) parallel adapter: ``h + s f(x W_down) W_up`` with ``x`` the sub-layer's *input* (eq. 10; the MAM
  adapter's FFN part uses ``s = 4``)."""
  if x.shape[-1] != w_down.shape[0]:
    raise ValueError(f"x's last dimension {x.shape[-1]} must equal w_down's first {w_down.shape[0]}.")
  return h + s * f(x @ w_down) @ w_up
