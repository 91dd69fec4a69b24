"""Sharpness along training: the learning-rate-scaled top Hessian eigenvalue of every saved step.

Noci et al., "Why do Learning Rates Transfer? Reconciling Optimization and Scaling Limits for Deep Learning"
(arXiv:2402.17457), Sec. 3: the sharpness ``lambda_max`` of the training-loss Hessian, followed over training at
several widths. For gradient descent with per-parameter learning rates ``eta P`` (``P = diag(p)``, the
parametrization's learning-rate multipliers, e.g. muP's), the step is stable on a quadratic while

    ``eta * lambda_max(P^{1/2} H P^{1/2}) < 2``                                         (edge of stability)

(Cohen et al., "Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability", arXiv:2103.00065),
and ``P^{1/2} H P^{1/2}`` has the spectrum of ``P H``. Noci et al.'s "super consistency": under muP this scaled
sharpness follows the same trajectory at every width; under SP / NTP it does not.

Computed with :func:`paperlab.analysis.hessian_top_eigs` (Lanczos on Hessian-vector products, never forming ``H``;
``precond = 1/p``, so it works on ``P^{1/2} H P^{1/2}``). For an adaptive optimizer pass its diagonal preconditioner
folded into ``lr_multipliers`` (e.g. ``mult / (sqrt(nu) + eps)`` per entry: Adam's preconditioned sharpness).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.analysis.hessian import hessian_top_eigs

__all__ = ["sharpness", "sharpness_trajectory"]

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


def _precond(params: PyTree, lr_multipliers: Any) -> PyTree | None:
  """``1 / p`` broadcast to every leaf's shape (``P^{-1}`` in ``hessian_top_eigs``' ``P^{-1/2} H P^{-1/2}``)."""
  if lr_multipliers is None:
    return None
  # a paperlab.param.Parametrization (or anything else with per-leaf multipliers) gives its pytree
  mults = getattr(lr_multipliers, "lr_multipliers", lr_multipliers)
  if jax.tree.structure(mults) != jax.tree.structure(params):
    mults_leaves = jax.tree.leaves(mults)
    if len(mults_leaves) != len(jax.tree.leaves(params)):
      raise ValueError(f"lr_multipliers must have the structure of params (one multiplier or array per leaf), got "
                       f"{jax.tree.structure(mults)} vs {jax.tree.structure(params)}.")
    mults = jax.tree.unflatten(jax.tree.structure(params), mults_leaves)
  for m in jax.tree.leaves(mults):
    if not isinstance(m, jax.core.Tracer) and bool(np.any(np.asarray(m) < 0)):
      raise ValueError(f"lr_multipliers must be non-negative, got {m!r}.")
  return jax.tree.map(lambda x, m: jnp.broadcast_to(1.0 / jnp.asarray(m, jnp.result_type(x)), jnp.shape(x)),
                      params, mults)


def sharpness(loss_fn: LossFn, params: PyTree, batch: Any, key: jax.Array, *, learning_rate: float | jax.Array = 1.0,
              lr_multipliers: Any = None, num_iters: int = 20, method: str = "lanczos") -> jax.Array:
  """``eta * lambda_max(P^{1/2} H P^{1/2})``: the learning-rate-scaled sharpness of ``loss_fn`` at ``params``.

  Noci et al., "Why do Learning Rates Transfer?" (arXiv:2402.17457), Sec. 3 (``eta lambda_max``; with muP's
  per-layer learning rates the preconditioned Hessian). GD on a quadratic is stable while it is below 2.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (a loss with forward multipliers applies them inside).
    params: the point (pytree of floating arrays).
    batch: the data, held fixed.
    key: PRNG key of the Lanczos start vector.
    learning_rate: the global ``eta`` (default 1: the plain ``lambda_max``); may be traced.
    lr_multipliers: ``None`` (``P = I``), a pytree with one multiplier (scalar or array) per leaf of ``params``, or
      a :class:`paperlab.param.Parametrization` (its ``lr_multipliers``). Non-negative.
    num_iters: Lanczos steps (static; 20, PyHessian's order, is enough for the top eigenvalue of these nets).
    method: ``"lanczos"`` (the largest algebraic eigenvalue) or ``"power"`` (largest magnitude).

  Returns:
    A scalar. Jittable with ``loss_fn`` closed over.
  """
  eigs = hessian_top_eigs(loss_fn, params, batch, key, k=1, num_iters=num_iters, method=method,
                          precond=_precond(params, lr_multipliers))
  return jnp.asarray(learning_rate, eigs.values.dtype) * eigs.values[0]


def sharpness_trajectory(loss_fn: LossFn, params_seq: PyTree, batch: Any, key: jax.Array, *,
                         learning_rate: float | jax.Array = 1.0, lr_multipliers: Any = None, num_iters: int = 20,
                         method: str = "lanczos") -> jax.Array:
  """:func:`sharpness` of every saved step of a training run: ``params_seq`` holds the parameters with a leading
  step axis (e.g. the ``ys`` of a ``jax.lax.scan`` training loop that returns its parameters every ``k`` steps).

  Noci et al., "Why do Learning Rates Transfer?" (arXiv:2402.17457), Fig. 1 / Sec. 3: ``eta * lambda_max(P^{1/2}
  H P^{1/2})`` over training; under muP its trajectory is the same at every width ("super consistency").
  Evaluated one step after another (``jax.lax.map``: one Hessian's working memory at a time) with a fresh Lanczos
  start per step (``fold_in(key, t)``). Jittable.

  Args:
    loss_fn, batch, learning_rate, lr_multipliers, num_iters, method: as in :func:`sharpness`.
    params_seq: pytree of arrays with a leading axis ``T`` (the same on every leaf).
    key: PRNG key.

  Returns:
    ``(T,)`` array.

  Raises:
    ValueError: leaves without a common leading axis.
  """
  leaves = jax.tree.leaves(params_seq)
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if not leaves or len(sizes) != 1 or None in sizes:
    raise ValueError(f"params_seq must carry one leading step axis of the same size on every leaf, got sizes "
                     f"{sorted(sizes, key=str)}.")
  steps = jnp.arange(sizes.pop())

  def one(args):
    t, params = args
    return sharpness(loss_fn, params, batch, jax.random.fold_in(key, t), learning_rate=learning_rate,
                     lr_multipliers=lr_multipliers, num_iters=num_iters, method=method)

  return jax.lax.map(one, (steps, params_seq))
