"""Second-order directions: Exact Gauss-Newton (EGN) through the Duncan-Guttman / push-through identity.

EGN needs the network's outputs on the batch, not just the gradient, so its transforms take two extra arguments:
``output_fn(params) -> outputs`` (the model on the current batch, any shape) and ``output_loss(outputs) -> scalar``
(the batch loss as a function of the outputs, e.g. mean squared error or mean cross-entropy).

EGN does not use the incoming gradient: it recomputes ``Jᵀr`` from ``output_fn``, so a transformation chained before
it would be silently lost. Put transformations after it (``optax.chain(scale_by_egn(), optax.clip_by_global_norm(c),
optax.scale_by_learning_rate(lr))``). As for the SAM family (:mod:`paperlab.optim.sharpness`), when the update also
receives ``grad_fn=`` as a :class:`~paperlab.optim.GradFnAt` (``paperlab.train.make_train_step`` passes one), this is
checked at trace time, and under ``optax.masked`` / ``optax.partition`` the Gauss-Newton step is taken in the leaves
it owns (the Jacobian with respect to those leaves only), ``output_fn`` being evaluated at the full parameters.
Numeric hyperparameters may be traced (``optax.inject_hyperparams``); ``egn``'s ``max_backtracking_steps`` goes in
``static_args``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_positive, check_range
from paperlab.optim.sharpness import _bind

__all__ = [
    "gauss_newton_system",
    "egn_direction",
    "EGNState",
    "scale_by_egn",
    "egn",
]

ScalarOrSchedule = float | jax.Array | Callable[[chex.Numeric], chex.Numeric]


def gauss_newton_system(output_fn: Callable[[Any], jax.Array], output_loss: Callable[[jax.Array], jax.Array],
                        params: Any) -> tuple[jax.Array, jax.Array, jax.Array, Callable]:
  """``(JJᵀ, Q, r, vjp)`` for the batch: ``J = ∂outputs/∂θ`` (``N = outputs.size`` rows), ``r = ∂ℓ/∂outputs``,
  ``Q = ∂²ℓ/∂outputs²`` (both flattened to ``N``) and ``vjp(v) = Jᵀ v``. ``JJᵀ`` is built from ``N`` VJPs, so the
  cost is ``N`` backward passes and an ``N x N`` Gram matrix, never a ``p x p`` matrix."""
  outputs, vjp = jax.vjp(output_fn, params)
  n = outputs.size
  # The N x N system is built and solved in float32 (or wider) whatever the model's dtype: bf16 LU is unsupported
  # and a bf16 Gram matrix would lose the damping term.
  wide = jnp.promote_types(outputs.dtype, jnp.float32)
  flat_loss = lambda f: output_loss(f.reshape(outputs.shape))
  r = jax.grad(flat_loss)(outputs.reshape(-1).astype(wide))
  q = jax.hessian(flat_loss)(outputs.reshape(-1).astype(wide))
  rows = jax.vmap(lambda e: vjp(e.reshape(outputs.shape).astype(outputs.dtype))[0])(jnp.eye(n, dtype=outputs.dtype))
  jjt = sum(jnp.einsum("ik,jk->ij", x.reshape(n, -1).astype(wide), x.reshape(n, -1).astype(wide))
            for x in jax.tree.leaves(rows))
  jt = lambda v: vjp(v.reshape(outputs.shape).astype(outputs.dtype))[0]
  return jjt, q, r, jt


def egn_direction(output_fn: Callable[[Any], jax.Array], output_loss: Callable[[jax.Array], jax.Array], params: Any,
                  damping: float = 1e-3) -> Any:
  """Exact Gauss-Newton step ``(JᵀQJ + λI)⁻¹ Jᵀr`` (to be subtracted), solved in output space.

  Korbit et al., "Exact Gauss-Newton Optimization for Training Deep Neural Networks", arXiv:2405.14402, Eq. (6)
  with the Duncan-Guttman identity: ``(JᵀQJ + λI)⁻¹ Jᵀ r = Jᵀ (QJJᵀ + λI)⁻¹ r``, so only an ``N x N`` system
  (``N`` = batch size x outputs) is solved by LU instead of a ``p x p`` one. ``Jᵀr`` is the loss gradient, so the
  returned pytree is a preconditioned gradient (``θ ← θ - α d``).

  Args:
    output_fn: ``params -> outputs`` on the current batch.
    output_loss: ``outputs -> scalar`` batch loss (MSE gives ``Q ∝ I``; cross-entropy ``diag(p) - ppᵀ`` blocks).
    params: the current parameters.
    damping: ``λ > 0``.
  """
  check_positive("damping", damping)
  return _direction(output_fn, output_loss, params, damping)[0]


def _direction(output_fn, output_loss, params, damping):
  jjt, q, r, jt = gauss_newton_system(output_fn, output_loss, params)
  n = r.shape[0]
  z = jnp.linalg.solve(q @ jjt + jnp.asarray(damping, jjt.dtype) * jnp.eye(n, dtype=jjt.dtype), r)
  return jt(z), (jjt, q, r)


_EGN_AFTER = ("It ignores the incoming gradient (it recomputes J^T r from output_fn): put such transformations "
              "after it, optax.chain(paperlab.optim.scale_by_egn(), optax.clip_by_global_norm(c), "
              "optax.scale_by_learning_rate(lr)) instead of optax.chain(optax.clip_by_global_norm(c), {name}(...)).")


def _local_output_fn(name, updates, params, output_fn, output_loss, extra_args):
  """``output_fn`` working on ``params``' (possibly masked) structure, after checking the grad_fn contract."""
  if params is None or output_fn is None or output_loss is None:
    raise ValueError(f"{name} needs update(grads, state, params, output_fn=..., output_loss=...): "
                     "output_fn(params) -> outputs on the batch, output_loss(outputs) -> scalar loss.")
  grad_fn = extra_args.get("grad_fn")
  if grad_fn is None:  # no anchor: nothing to check; masked params then fail in _bind's filler
    grad_fn = output_fn
  _, fill = _bind(name, updates, params, grad_fn, _EGN_AFTER)
  return lambda p: output_fn(fill(p))


class EGNState(NamedTuple):
  """State of :func:`scale_by_egn`: the current damping ``λ`` (adapted when ``adaptive_damping``)."""
  damping: chex.Array


def scale_by_egn(damping: float = 1e-3, adaptive_damping: bool = False, increase: float = 1.5,
                 decrease: float = 2.0 / 3.0, min_damping: float = 1e-8, max_damping: float = 1e4
                 ) -> optax.GradientTransformationExtraArgs:
  """EGN direction ``d = Jᵀ(QJJᵀ + λI)⁻¹ r`` as a transformation (Korbit et al., arXiv:2405.14402).

  ``update(grads, state, params, *, output_fn, output_loss)``; ``grads`` is not used (EGN recomputes ``Jᵀr``).
  With ``adaptive_damping`` the Levenberg-Marquardt rule of the paper's Sec. 3.3 updates ``λ`` from the ratio
  ``ρ = (ℓ(θ) - ℓ(θ - d)) / (gᵀd - ½ dᵀJᵀQJd)`` of actual to predicted decrease of a full step:
  ``λ ← λ·decrease`` when ``ρ > 3/4`` and ``λ ← λ·increase`` when ``ρ < 1/4`` (one extra forward pass).

  Args:
    damping: initial ``λ > 0``.
    adaptive_damping: adapt ``λ`` as above.
    increase, decrease: LM factors (> 1 and in (0, 1)).
    min_damping, max_damping: clip range for ``λ``.
  """
  check_positive("damping", damping)
  check_range("increase", increase, 1.0, None, low_inclusive=False)
  check_range("decrease", decrease, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  check_positive("min_damping", min_damping)
  check_positive("max_damping", max_damping)

  def init_fn(params):
    del params
    return EGNState(damping=jnp.asarray(damping, jnp.float32))

  def update_fn(updates, state, params=None, *, output_fn=None, output_loss=None, **extra_args):
    output_fn = _local_output_fn("scale_by_egn", updates, params, output_fn, output_loss, extra_args)
    lam = state.damping if adaptive_damping else jnp.asarray(damping, state.damping.dtype)
    d, (jjt, q, r) = _direction(output_fn, output_loss, params, lam)
    new_damping = lam
    if adaptive_damping:
      loss = output_loss(output_fn(params))
      trial = output_loss(output_fn(jax.tree.map(lambda p, u: p - u, params, d)))
      _, jd = jax.jvp(output_fn, (params,), (d,))
      jd = jd.reshape(-1)
      predicted = r @ jd - 0.5 * jd @ (q @ jd)
      ratio = (loss - trial) / jnp.where(predicted > 0, predicted, jnp.inf)
      new_damping = jnp.where(ratio > 0.75, state.damping * decrease,
                              jnp.where(ratio < 0.25, state.damping * increase, state.damping))
      new_damping = jnp.clip(new_damping, min_damping, max_damping).astype(state.damping.dtype)
    return d, EGNState(damping=new_damping)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _EGNAliasState(NamedTuple):
  egn: EGNState
  rest: Any


def egn(learning_rate: ScalarOrSchedule = 1.0, damping: float = 1e-3, adaptive_damping: bool = True,
        line_search: bool = True, max_backtracking_steps: int = 15) -> optax.GradientTransformationExtraArgs:
  """EGN optimizer: ``θ ← θ - α d`` with the EGN direction, adaptive damping and an Armijo line search.

  Korbit et al., "Exact Gauss-Newton Optimization for Training Deep Neural Networks", arXiv:2405.14402, Alg. 1.
  ``α`` starts at ``learning_rate`` (paper ``α_0 = 1``) and, with ``line_search``, is backtracked by
  ``optax.scale_by_backtracking_linesearch`` (Armijo condition on the batch loss). Call
  ``update(grads, state, params, output_fn=..., output_loss=...)``: the line search's ``value_fn``, ``value``
  and ``grad`` are derived from those two functions.
  """
  if not callable(learning_rate):
    check_positive("learning_rate", learning_rate)
  if (isinstance(max_backtracking_steps, bool) or not isinstance(max_backtracking_steps, int)
      or max_backtracking_steps < 1):
    raise ValueError(f"max_backtracking_steps must be a positive Python int (under optax.inject_hyperparams list "
                     f"it in static_args=('max_backtracking_steps',)), got {max_backtracking_steps!r}.")
  direction = scale_by_egn(damping, adaptive_damping)
  rest = [optax.scale_by_learning_rate(learning_rate)]
  if line_search:
    rest.append(optax.scale_by_backtracking_linesearch(max_backtracking_steps, max_learning_rate=1.0,
                                                       increase_factor=1.0))
  rest = optax.chain(*rest)

  def init_fn(params):
    return _EGNAliasState(egn=direction.init(params), rest=rest.init(params))

  def update_fn(updates, state, params=None, *, output_fn=None, output_loss=None, **extra_args):
    local_output_fn = _local_output_fn("egn", updates, params, output_fn, output_loss, extra_args)
    d, egn_state = direction.update(updates, state.egn, params, output_fn=output_fn, output_loss=output_loss,
                                    **extra_args)
    value_fn = lambda p: output_loss(local_output_fn(p))
    value, grad = jax.value_and_grad(value_fn)(params)
    out, rest_state = rest.update(d, state.rest, params, value=value, grad=grad, value_fn=value_fn)
    return out, _EGNAliasState(egn=egn_state, rest=rest_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
