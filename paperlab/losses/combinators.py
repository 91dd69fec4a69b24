"""Pure loss combinators: weighted sums of named losses and homoscedastic uncertainty weighting.

Stateless: every function here maps losses (and, for uncertainty weighting, learnable parameters that live in the
model's params pytree) to a scalar objective. Stateful balancers are in :mod:`paperlab.losses.balancing`.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp

__all__ = ["weighted_sum", "init_log_vars", "uncertainty_weighted"]

TaskType = Literal["regression", "classification"]


def _check_same_keys(losses: Mapping, other: Mapping, other_name: str) -> None:
  if set(losses) != set(other):
    missing = sorted(set(losses) - set(other))
    extra = sorted(set(other) - set(losses))
    raise ValueError(f"{other_name} must have exactly the task names of losses {sorted(losses)}; missing "
                     f"{missing}, unexpected {extra}.")


def weighted_sum(losses: Mapping[str, chex.Array] | chex.Array,
                 weights: Mapping[str, chex.Numeric] | chex.Array | None = None) -> jax.Array:
  """``sum_i w_i L_i`` over named losses (dicts with equal keys) or over the last axis of ``[..., K]`` arrays.

  ``weights=None`` is the equal-weight sum. Weights are applied as given (no normalisation, no stop-gradient):
  balancers in :mod:`paperlab.losses.balancing` already return stop-gradient weights.

  Args:
    losses: ``{name: loss}`` (scalars or equally shaped arrays) or an array whose last axis indexes tasks.
    weights: same keys as ``losses`` / a ``[K]`` vector broadcast against ``losses``.

  Returns:
    The weighted sum (a scalar for scalar task losses).
  """
  if isinstance(losses, Mapping):
    if not losses:
      raise ValueError("losses must name at least one task, got an empty mapping.")
    if weights is None:
      weights = {k: 1.0 for k in losses}
    if not isinstance(weights, Mapping):
      raise TypeError(f"weights must be a mapping like losses when losses is a mapping, got {type(weights)}.")
    _check_same_keys(losses, weights, "weights")
    return sum(jnp.asarray(weights[k]) * jnp.asarray(losses[k]) for k in sorted(losses))
  losses = jnp.asarray(losses)
  if losses.ndim == 0:
    raise ValueError("losses must be a mapping or an array with a task axis last, got a scalar.")
  if weights is None:
    return jnp.sum(losses, axis=-1)
  weights = jnp.asarray(weights)
  if weights.ndim != 1 or weights.shape[0] != losses.shape[-1]:
    raise ValueError(f"weights must be a vector with one entry per task ({losses.shape[-1]}), got shape "
                     f"{weights.shape}.")
  return jnp.sum(losses * weights, axis=-1)


def init_log_vars(task_names: Sequence[str], value: float = 0.0) -> dict[str, jax.Array]:
  """``{name: s_name}`` scalars for :func:`uncertainty_weighted`, initialised to ``s = log sigma^2 = value``
  (Kendall et al. initialise ``s = 0``). Put the result in the params pytree so the optimizer trains it."""
  names = list(task_names)
  if not names or len(set(names)) != len(names):
    raise ValueError(f"task_names must be non-empty and unique, got {names!r}.")
  return {k: jnp.asarray(value, jnp.float32) for k in names}


def uncertainty_weighted(losses: Mapping[str, chex.Array], log_vars: Mapping[str, chex.Array],
                         task_types: Mapping[str, TaskType] | None = None
                         ) -> tuple[jax.Array, dict[str, dict[str, jax.Array]]]:
  """Homoscedastic uncertainty weighting of task losses with learnable log-variances.

  Implements Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry
  and Semantics" (CVPR 2018, arXiv:1705.07115), Eq. 7 and 10 in the stable parametrisation ``s_i = log sigma_i^2``:

    regression task:      ``0.5 exp(-s_i) L_i + 0.5 s_i``     (Gaussian likelihood, ``1/(2 sigma^2) L + log sigma``)
    classification task:  ``exp(-s_i) L_i + 0.5 s_i``         (scaled softmax, ``1/sigma^2 L + log sigma``)

  ``task_types=None`` treats every task as regression, which is the form LibMTL's ``UW`` and most
  re-implementations use. For fixed ``L_i`` the optimum is ``s* = log L_i`` (regression) or ``s* = log 2L_i``
  (classification), so ``exp(s)`` tracks the task's loss level and the effective weight adapts to it.

  Use in a train step: keep ``log_vars = init_log_vars(names)`` inside the params pytree (e.g.
  ``params = {"model": ..., "log_vars": ...}``) and differentiate ``total`` with respect to all of it with the same
  optimizer; nothing else is stateful.

  Args:
    losses: ``{task: scalar loss}`` (already reduced over the batch).
    log_vars: ``{task: s}`` with the same keys.
    task_types: optional ``{task: "regression" | "classification"}``; missing tasks default to regression.

  Returns:
    ``(total, aux)`` where ``aux = {"weights": {task: effective weight on L}, "variances": {task: exp(s)}}``.
  """
  if not isinstance(losses, Mapping) or not losses:
    raise TypeError(f"losses must be a non-empty mapping {{task: scalar loss}}, got {type(losses)}.")
  if not isinstance(log_vars, Mapping):
    raise TypeError(f"log_vars must be a mapping {{task: log variance}}, got {type(log_vars)}.")
  _check_same_keys(losses, log_vars, "log_vars")
  task_types = dict(task_types or {})
  unknown = sorted(set(task_types) - set(losses))
  if unknown:
    raise ValueError(f"task_types names tasks not in losses: {unknown}.")
  # accumulate in (at least) float32, return the inputs' dtype as optax.losses does
  out_dtype = jnp.result_type(*[jnp.asarray(v) for v in (*losses.values(), *log_vars.values())])
  total = jnp.zeros((), jnp.result_type(out_dtype, jnp.float32))
  weights, variances = {}, {}
  for k in sorted(losses):
    kind = task_types.get(k, "regression")
    if kind not in ("regression", "classification"):
      raise ValueError(f"task_types[{k!r}] must be 'regression' or 'classification', got {kind!r}.")
    loss, s = jnp.asarray(losses[k]), jnp.asarray(log_vars[k])
    if loss.ndim != 0 or s.ndim != 0:
      raise ValueError(f"losses[{k!r}] and log_vars[{k!r}] must be scalars, got shapes {loss.shape} and {s.shape}.")
    w = jnp.exp(-s) * (0.5 if kind == "regression" else 1.0)
    total = total + w.astype(total.dtype) * loss.astype(total.dtype) + 0.5 * s.astype(total.dtype)
    weights[k], variances[k] = w, jnp.exp(s)
  return total.astype(out_dtype), {"weights": weights, "variances": variances}
