"""Federated aggregation: FedAvg/FedProx server averaging, FedProx's proximal term, FedLAW's learnable weights.

* McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data" (FedAvg,
  arXiv:1602.05629): the server takes the data-size-weighted mean of client models.
* Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx, MLSys 2020, arXiv:1812.06127): each
  client minimises ``F_k(w) + mu/2 ||w - w^t||^2``.
* Li et al., "Revisiting Weighted Aggregation in Federated Learning with Neural Networks" (FedLAW, ICML 2023,
  arXiv:2302.10911): ``w_g = gamma * sum_i softmax(zeta)_i w_i`` with a learnable shrinking factor ``gamma``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab._checks import check_non_negative
from paperlab._tree import check_same_structure, path_str
from paperlab.merge.averaging import (IntegerLeaves, _check_integer_rule, _integer_leaves, _is_float,
                                     _model_names, _put_integer_leaves, _resolve_integer_leaf, _scalars_as_arrays)

__all__ = ["aggregate", "prox_term", "prox_loss", "ProximalState", "add_proximal_gradient",
           "learnable_aggregate", "fit_learnable_aggregate"]

PyTree = Any


def _client_ints(client_params, rule: IntegerLeaves) -> dict:
  """The integer/bool leaves of the aggregate by the shared policy (see :mod:`paperlab.merge.averaging`), from a
  list of clients or from the slices of a stacked pytree."""
  if isinstance(client_params, (list, tuple)):
    clients = [_scalars_as_arrays(c) for c in client_params]
    return _integer_leaves(clients, _model_names(len(clients), "client_params"), rule, has_base=False)
  rule = _check_integer_rule(rule, False)
  out = {}
  for j, (p, x) in enumerate(jax.tree_util.tree_flatten_with_path(client_params)[0]):
    if not _is_float(x):
      n = jnp.shape(x)[0]
      out[j] = _resolve_integer_leaf(path_str(p), [x[i] for i in range(n)], _model_names(n, "client_params"), rule,
                                     False)
  return out


def _as_stack(client_params) -> tuple[PyTree, int]:
  if isinstance(client_params, (list, tuple)):
    clients = [_scalars_as_arrays(c) for c in client_params]
    if not clients:
      raise ValueError("client_params must hold at least one client, got an empty sequence.")
    check_same_structure(clients, "client_params")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *clients), len(clients)
  leaves = jax.tree.leaves(client_params)
  if not leaves:
    raise ValueError("client_params has no leaves.")
  n = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else None
  if n is None or any(jnp.ndim(l) == 0 or jnp.shape(l)[0] != n for l in leaves):
    raise ValueError("a stacked client_params pytree needs the same leading (client) axis on every leaf; pass a "
                     "list of pytrees otherwise.")
  if n == 0:
    raise ValueError("client_params must hold at least one client (leading axis has size 0).")
  return client_params, n


def aggregate(client_params: Sequence[PyTree] | PyTree, weights: Sequence[float] | jax.Array | None = None, *,
              shrink: float | jax.Array = 1.0, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Server aggregation ``w = shrink * sum_k (n_k / sum_j n_j) w_k``.

  FedAvg (arXiv:1602.05629, Algorithm 1) weighs clients by their data sizes ``n_k``; FedProx
  (arXiv:1812.06127, Algorithm 2) samples clients proportionally to ``n_k`` and takes the plain mean
  (``weights=None``). ``shrink = gamma < 1`` is FedLAW's global shrinking factor (arXiv:2302.10911, Sec. 4).

  Args:
    client_params: a list of client pytrees, or one pytree whose leaves stack clients on axis 0.
    weights: non-negative per-client weights (e.g. data sizes), normalised to sum to 1; uniform by default.
    shrink: global scale ``gamma``.
    integer_leaves: integer/bool leaves are never averaged (or shrunk): equal across clients -> kept, different
      -> ``ValueError`` naming the path (at run time under ``jit``); or ``"first"``, ``"last"`` or a callable
      (see :mod:`paperlab.merge.averaging`).

  Returns:
    The aggregated pytree in the clients' dtypes. Jittable.
  """
  stacked, n = _as_stack(client_params)
  ints = _client_ints(client_params, integer_leaves)
  if weights is None:
    w = jnp.full((n,), 1.0 / n, jnp.float32)
  else:
    try:
      arr = np.asarray(weights, np.float64)
    except jax.errors.TracerArrayConversionError:  # traced weights are checked by the caller
      arr = None
    if arr is not None:
      if arr.shape != (n,):
        raise ValueError(f"weights must have one entry per client ({n}), got shape {arr.shape}.")
      if np.any(arr < 0) or not np.all(np.isfinite(arr)) or arr.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {arr.tolist()}.")
    w = jnp.asarray(weights, jnp.float32)
    w = w / jnp.sum(w)
  return _put_integer_leaves(
      jax.tree.map(lambda x: (shrink * jnp.tensordot(w, x.astype(jnp.float32), axes=1)).astype(x.dtype), stacked),
      ints)


def prox_term(params: PyTree, global_params: PyTree, mu: float | jax.Array) -> jax.Array:
  """FedProx's proximal term ``mu/2 * ||w - w^t||^2`` (arXiv:1812.06127, Eq. 2). Its gradient in ``params`` is
  ``mu (w - w^t)``."""
  check_non_negative("mu", mu)
  check_same_structure([params, global_params], ["params", "global_params"])
  sq = sum(jnp.sum(jnp.square(p.astype(jnp.float32) - jax.lax.stop_gradient(g).astype(jnp.float32)))
           for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(global_params)))
  return 0.5 * mu * sq


def prox_loss(loss_fn: Callable[..., jax.Array], mu: float) -> Callable[..., jax.Array]:
  """Wrap ``loss_fn(params, *args)`` into ``h(params, global_params, *args) = loss_fn(params, *args) +
  mu/2 ||params - global_params||^2``, the local objective of FedProx (arXiv:1812.06127, Eq. 2)."""
  check_non_negative("mu", mu)

  def h(params, global_params, *args, **kwargs):
    return loss_fn(params, *args, **kwargs) + prox_term(params, global_params, mu)

  return h


class ProximalState(NamedTuple):
  """The global model ``w^t`` the local iterate is pulled toward."""

  anchor: PyTree


def add_proximal_gradient(mu: float) -> optax.GradientTransformation:
  """FedProx as an optax transformation: adds ``mu (w - w^t)`` to the gradient, where ``w^t`` is the parameters
  passed to ``init`` (re-initialise the optimizer with the global model at the start of every round).

  Chain it before the base optimizer, e.g. ``optax.chain(add_proximal_gradient(0.01), optax.sgd(lr))``; this is
  the gradient of :func:`prox_term` (arXiv:1812.06127, Eq. 2), so it works with ``paperlab.train`` unchanged.
  """
  check_non_negative("mu", mu)

  def init_fn(params):
    return ProximalState(jax.tree.map(jnp.asarray, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_proximal_gradient needs params in update(updates, state, params).")
    updates = jax.tree.map(lambda g, p, a: (g + mu * (p - a)).astype(g.dtype), updates, params, state.anchor)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def learnable_aggregate(client_params: Sequence[PyTree] | PyTree, gamma: jax.Array, logits: jax.Array, *,
                        integer_leaves: IntegerLeaves = "error") -> PyTree:
  """FedLAW aggregation ``w_g = gamma * sum_i softmax(logits)_i w_i`` (arXiv:2302.10911, Sec. 5), differentiable
  in ``gamma`` and ``logits`` so the server can fit them on a proxy set. ``gamma = 1`` with
  ``logits = log n_i`` is FedAvg. Jittable. Integer/bool leaves follow ``integer_leaves`` as in :func:`aggregate`."""
  stacked, n = _as_stack(client_params)
  return _put_integer_leaves(_learnable(stacked, n, gamma, logits), _client_ints(client_params, integer_leaves))


def _learnable(stacked: PyTree, n: int, gamma, logits) -> PyTree:
  logits = jnp.asarray(logits)
  if logits.shape != (n,):
    raise ValueError(f"logits must have shape ({n},) (one per client), got {logits.shape}.")
  lam = jax.nn.softmax(logits.astype(jnp.float32))
  return jax.tree.map(lambda x: (gamma * jnp.tensordot(lam, x.astype(jnp.float32), axes=1)).astype(x.dtype), stacked)


def fit_learnable_aggregate(loss_fn: Callable[[PyTree, Any], jax.Array], client_params: Sequence[PyTree] | PyTree,
                            proxy_batch: Any, *, steps: int = 100, learning_rate: float = 0.01,
                            init_gamma: float = 1.0, init_logits: jax.Array | None = None,
                            integer_leaves: IntegerLeaves = "error") -> tuple[PyTree, jax.Array, jax.Array]:
  """FedLAW's server step (arXiv:2302.10911, Algorithm 1): fit ``(gamma, logits)`` of
  :func:`learnable_aggregate` by Adam on a small server-side proxy batch, then aggregate.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (differentiable in ``params``).
    client_params: list of client pytrees or a stacked pytree.
    proxy_batch: the server's proxy data.
    steps: Adam steps (``>= 1``).
    learning_rate: Adam learning rate ``> 0``.
    init_gamma: starting shrinking factor (1 = no shrinkage).
    init_logits: starting logits (uniform weights by default; ``log n_i`` starts from FedAvg).
    integer_leaves: integer/bool leaves, resolved once as in :func:`aggregate`.

  Returns:
    ``(aggregated_params, gamma, logits)``. Jittable (``loss_fn``, ``steps`` static).
  """
  if int(steps) != steps or steps < 1:
    raise ValueError(f"steps must be a positive integer, got {steps!r}.")
  check_non_negative("learning_rate", learning_rate)
  stacked, n = _as_stack(client_params)
  ints = _client_ints(client_params, integer_leaves)
  logits = jnp.zeros((n,), jnp.float32) if init_logits is None else jnp.asarray(init_logits, jnp.float32)
  theta = (jnp.asarray(init_gamma, jnp.float32), logits)
  opt = optax.adam(learning_rate)

  def objective(t):
    return loss_fn(_put_integer_leaves(_learnable(stacked, n, t[0], t[1]), ints), proxy_batch)

  def body(carry, _):
    t, o = carry
    g = jax.grad(objective)(t)
    u, o = opt.update(g, o, t)
    return (optax.apply_updates(t, u), o), None

  (theta, _), _ = jax.lax.scan(body, (theta, opt.init(theta)), None, length=int(steps))
  return _put_integer_leaves(_learnable(stacked, n, theta[0], theta[1]), ints), theta[0], theta[1]
