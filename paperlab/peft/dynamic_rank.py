"""Dynamic-rank DoRA: the LoRA update split into scaled rank-one components, pruned to a global budget by their
Frobenius share (not the weight-decomposed DoRA of :func:`paperlab.peft.dora_init`).

Mao et al., "DoRA: Enhancing Parameter-Efficient Fine-Tuning with Dynamic Rank Distribution", arXiv:2405.17357,
Sec. 3: ``delta W = sum_i c_i B_i A_i`` with ``B_i (out, 1)``, ``A_i (1, in)`` and a scalar ``c_i`` per component
(eq. 4), i.e. ``B diag(c) A``; a component's importance is its share ``||c_i B_i A_i||_F / ||delta W||_F`` of its
layer's update (eq. 6); components below the global budget are pruned (``c_i = 0``) on the AdaLoRA-style cubic
budget schedule (:func:`paperlab.peft.adalora_budget`). Adapters use peft's layout (``lora_A (r, in)``,
``lora_B (out, r)``) plus ``c (r,)``; the update is returned in Flax ``(in, out)`` layout. Jittable.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

__all__ = ["rank1_delta", "component_importance", "dynamic_rank_prune"]


def rank1_delta(lora_A: jax.Array, lora_B: jax.Array, c: jax.Array, alpha: float = 1.0) -> jax.Array:
  """``alpha * sum_i c_i B_i A_i = alpha * B diag(c) A`` (eq. 4) in Flax layout ``(in, out)``, float32."""
  if c.shape != (lora_A.shape[0],) or lora_B.shape[1] != lora_A.shape[0]:
    raise ValueError(f"lora_A (r, in), lora_B (out, r) and c (r,) must share r; got {lora_A.shape}, "
                     f"{lora_B.shape}, {c.shape}.")
  f = lambda a: a.astype(jnp.float32)
  return alpha * ((f(lora_B) * f(c)[None, :]) @ f(lora_A)).T


def component_importance(lora_A: jax.Array, lora_B: jax.Array, c: jax.Array) -> jax.Array:
  """Each component's Frobenius share ``||c_i B_i A_i||_F / ||B diag(c) A||_F`` (eq. 6); ``||B_i A_i||_F`` is
  ``||B_i|| ||A_i||`` for a rank-one product."""
  f = lambda a: a.astype(jnp.float32)
  norms = jnp.abs(f(c)) * jnp.linalg.norm(f(lora_B), axis=0) * jnp.linalg.norm(f(lora_A), axis=1)
  total = jnp.linalg.norm(rank1_delta(lora_A, lora_B, c))
  return norms / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)


def dynamic_rank_prune(adapters: Mapping[str, Mapping[str, jax.Array]], budget: int
                       ) -> tuple[dict[str, dict[str, jax.Array]], dict[str, jax.Array]]:
  """Keep the ``budget`` components with the largest importance over all layers (ties by position), zero the
  ``c_i`` of the rest. Returns ``(adapters with pruned c, {path: bool keep (r,)})``.

  Raises:
    ValueError: ``budget`` outside ``[0, total components]``.
  """
  paths = sorted(adapters)
  scores = [component_importance(adapters[p]["lora_A"], adapters[p]["lora_B"], adapters[p]["c"]) for p in paths]
  total = sum(s.size for s in scores)
  if not isinstance(budget, int) or not 0 <= budget <= total:
    raise ValueError(f"budget must be an int in [0, {total}], got {budget!r}.")
  flat = jnp.concatenate(scores)
  order = jnp.argsort(-flat, stable=True)
  keep_flat = jnp.zeros(total, bool).at[order[:budget]].set(True)
  keep, start, out = {}, 0, {}
  for p, s in zip(paths, scores):
    keep[p] = keep_flat[start:start + s.size]
    start += s.size
    out[p] = {**adapters[p], "c": jnp.where(keep[p], adapters[p]["c"], 0).astype(adapters[p]["c"].dtype)}
  return out, keep
