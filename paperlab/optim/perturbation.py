"""Adversarial and robust weight perturbation (AWP, RWP) in the SAM family's shape, and the PGD input attack
their adversarial training uses.

The perturbation is layer-wise and relative to each weight's norm, ``||v_l|| <= gamma ||w_l||``, on weight
tensors only (``ndim > 1`` by default; biases and norm scales are not perturbed). The training gradient is taken at
``w + v`` (the batch is usually adversarial, e.g. PGD examples made by the loss function) and applied at ``w``.
Norms are computed in float32 or wider, so bfloat16 parameters work.

:func:`awp` and :func:`rwp` follow the ``grad_fn`` contract of :mod:`paperlab.optim.sharpness`: their ``grads`` must
be the raw gradient (transformations go inside, ``awp(optax.chain(clip, base))``; with a
:class:`~paperlab.optim.GradFnAt` this is checked), under ``optax.masked`` / ``optax.partition`` only their own
leaves are perturbed, and ``grad_fn`` / ``example_loss_fn`` are evaluated at the full parameters. Under
``optax.inject_hyperparams``, ``gamma``, ``c_min``, ``step_size`` and ``eps`` may be traced; ``steps`` and a callable
``mask`` go in ``static_args``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_non_negative, check_positive
from paperlab.optim.sharpness import _bind

__all__ = ["AWPState", "awp_perturbation", "awp_gradient", "awp", "rwp_perturbation", "RWPState", "rwp",
           "pgd_linf"]

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def _wide(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mask(mask: MaskOrFn, params) -> Any:
  """The selection in ``params``' structure (MaskedNode kept under ``optax.masked``)."""
  if mask is None:
    return jax.tree.map(lambda w: jnp.ndim(w) > 1, params)
  selected = mask(params) if callable(mask) else mask
  flat, treedef = jax.tree.flatten(params, is_leaf=_is_masked)
  try:
    flat_sel = treedef.flatten_up_to(selected)
  except (ValueError, TypeError) as err:
    raise ValueError(f"mask must be a pytree of bools shaped like the parameters {treedef} (or a callable params -> "
                     f"such a pytree; under optax.inject_hyperparams list it in static_args=('mask',)), got "
                     f"{jax.tree.structure(selected)}.") from err
  return treedef.unflatten([w if _is_masked(w) else m for w, m in zip(flat, flat_sel)])


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _add(params, delta):
  return jax.tree.map(lambda w, d: (_wide(w) + d).astype(w.dtype), params, delta)


def _relative_step(direction, params, scale, mask, eps):
  """Per selected leaf ``scale * ||w_l|| * d_l / ||d_l||``; zeros elsewhere."""
  def leaf(d, w, m):
    if not m:
      return jnp.zeros(jnp.shape(w), jnp.promote_types(w.dtype, jnp.float32))
    d = _wide(d)
    return scale * jnp.linalg.norm(_wide(w)) * d / (jnp.linalg.norm(d) + eps)
  return jax.tree.map(leaf, direction, params, mask)


def awp_perturbation(grads: optax.Updates, params: optax.Params, gamma: float = 1e-2, *, mask: MaskOrFn = None,
                     eps: float = 1e-20) -> optax.Updates:
  """AWP's one-step weight perturbation ``v_l = gamma ||w_l|| g_l / ||g_l||`` (float32 leaves).

  Wu et al., "Adversarial Weight Perturbation Helps Robust Generalization", NeurIPS 2020, arXiv:2004.05884,
  Eq. (9)-(10) with one ascent step (K2 = 1), where the layer-wise projection onto ``||v_l|| <= gamma ||w_l||``
  makes the step exactly the boundary point. Default ``gamma = 1e-2`` (AT-AWP).

  Args:
    grads: gradient of the (adversarial) loss at ``params``.
    params: current weights.
    gamma: relative radius (> 0).
    mask: pytree of bools (or callable of params) selecting perturbed leaves; default: ``ndim > 1``.
    eps: added to the gradient norm.
  """
  check_positive("gamma", gamma)
  return _relative_step(grads, params, gamma, _mask(mask, params), eps)


def awp_gradient(grad_fn: Callable[[optax.Params], optax.Updates], params: optax.Params,
                 grads: Optional[optax.Updates] = None, *, gamma: float = 1e-2, mask: MaskOrFn = None,
                 eps: float = 1e-20) -> optax.Updates:
  """``grad_fn(w + v)`` with ``v`` from :func:`awp_perturbation` (Wu et al., arXiv:2004.05884, Algorithm 1)."""
  check_positive("gamma", gamma)
  if grads is None:
    grads = grad_fn(params)
  return grad_fn(_add(params, awp_perturbation(grads, params, gamma, mask=mask, eps=eps)))


class AWPState(NamedTuple):
  """State of :func:`awp`: the base optimizer's state."""

  inner_state: optax.OptState


def awp(inner: optax.GradientTransformation, gamma: float = 1e-2, mask: MaskOrFn = None, eps: float = 1e-20
        ) -> optax.GradientTransformationExtraArgs:
  """AWP: feed the base optimizer the gradient at the layer-wise adversarially perturbed weights ``w + v``.

  ``update(grads, state, params, grad_fn=...)``: ``grads`` and ``grad_fn`` are on the (adversarial) batch; the step
  ``inner(grad L(w + v))`` is applied at ``w`` (Wu et al., "Adversarial Weight Perturbation Helps Robust
  Generalization", arXiv:2004.05884, Algorithm 1: perturb, descend, restore).

  Args:
    inner: base optimizer.
    gamma: relative radius (> 0); 1e-2 for AT-AWP, 5e-3 for TRADES-AWP.
    mask: which leaves are perturbed (default ``ndim > 1``).
    eps: added to the gradient norm.
  """
  check_positive("gamma", gamma)
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"inner must be an optax.GradientTransformation, got {type(inner).__name__}.")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return AWPState(inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn=None, **extra):
    grad_fn, _ = _bind("awp", grads, params, grad_fn)
    g = awp_gradient(grad_fn, params, grads, gamma=gamma, mask=mask, eps=eps)
    g = jax.tree.map(lambda a, b: a.astype(b.dtype), g, grads)
    updates, inner_state = inner.update(g, state.inner_state, params, **extra)
    return updates, AWPState(inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def rwp_perturbation(example_loss_fn: Callable[[optax.Params], jax.Array], params: optax.Params,
                     gamma: float = 1e-2, *, c_min: float = 1.7, steps: int = 10, step_size: Optional[float] = None,
                     mask: MaskOrFn = None, eps: float = 1e-20) -> optax.Updates:
  """RWP: AWP's ascent using only examples that satisfy the loss stationary condition ``loss_i(w + v) < c_min``.

  ``v <- Pi_gamma(v + step_size ||w_l|| d_l / ||d_l||)`` with ``d = grad_v sum_{i: loss_i(w+v) < c_min} loss_i(w+v)``,
  repeated ``steps`` times (examples drop out once their loss reaches ``c_min``), ``Pi_gamma`` the layer-wise
  projection onto ``||v_l|| <= gamma ||w_l||``. With ``c_min = inf`` and ``steps = 1`` this is exactly
  :func:`awp_perturbation`; with ``c_min`` below every loss, ``v = 0``.

  Yu et al., "Robust Weight Perturbation for Adversarial Training", IJCAI 2022, arXiv:2205.14826, Algorithm 1.
  Defaults gamma=1e-2, c_min=1.7, steps=10 (the paper's CIFAR-10 values).

  Args:
    example_loss_fn: ``params -> (batch,)`` per-example losses (on the adversarial batch).
    params: current weights.
    gamma: relative radius (> 0).
    c_min: loss threshold of the LSC.
    steps: ascent steps (int >= 1).
    step_size: relative step size per ascent step; default ``gamma`` (one step reaches the boundary).
    mask: perturbed leaves (default ``ndim > 1``).
    eps: added to norms.
  """
  check_positive("gamma", gamma)
  _check_steps(steps)
  step_size = gamma if step_size is None else check_positive("step_size", step_size)
  selected = _mask(mask, params)

  def lsc_loss(v):
    losses = example_loss_fn(_add(params, v))
    chex.assert_rank(losses, 1)
    return jnp.sum(jnp.where(losses < c_min, losses, 0.0)) / losses.shape[0]

  def project(v, w, m):
    if not m:
      return v
    radius = gamma * jnp.linalg.norm(_wide(w))
    return v * jnp.minimum(1.0, radius / (jnp.linalg.norm(v) + eps))

  def body(_, v):
    v = jax.tree.map(jnp.add, v, _relative_step(jax.grad(lsc_loss)(v), params, step_size, selected, eps))
    return jax.tree.map(project, v, params, selected)

  v0 = jax.tree.map(lambda w: jnp.zeros(jnp.shape(w), jnp.promote_types(w.dtype, jnp.float32)), params)
  return jax.lax.fori_loop(0, steps, body, v0)


def _check_steps(steps) -> None:
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a Python int >= 1 (under optax.inject_hyperparams list it in "
                     f"static_args=('steps',)), got {steps!r}.")


class RWPState(NamedTuple):
  """State of :func:`rwp`: the base optimizer's state."""

  inner_state: optax.OptState


def rwp(inner: optax.GradientTransformation, gamma: float = 1e-2, c_min: float = 1.7, steps: int = 10,
        step_size: Optional[float] = None, mask: MaskOrFn = None, eps: float = 1e-20
        ) -> optax.GradientTransformationExtraArgs:
  """RWP: ``inner(grad L(w + v))`` with ``v`` from :func:`rwp_perturbation`.

  ``update(grads, state, params, grad_fn=..., example_loss_fn=...)`` needs both the gradient function and a
  per-example loss function ``params -> (batch,)`` on the same (adversarial) batch.
  Yu et al., "Robust Weight Perturbation for Adversarial Training", arXiv:2205.14826, Algorithm 1.
  """
  check_positive("gamma", gamma)
  _check_steps(steps)
  if step_size is not None:
    check_positive("step_size", step_size)
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"inner must be an optax.GradientTransformation, got {type(inner).__name__}.")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return RWPState(inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn=None, example_loss_fn=None, **extra):
    grad_fn, fill = _bind("rwp", grads, params, grad_fn)
    if example_loss_fn is None or not callable(example_loss_fn):
      raise ValueError("rwp needs example_loss_fn=: a function params -> per-example losses on the same batch "
                       "(paperlab.train.make_train_step(..., example_loss_fn=...) passes one), got "
                       f"{example_loss_fn!r}.")
    v = rwp_perturbation(lambda p: example_loss_fn(fill(p)), params, gamma, c_min=c_min, steps=steps,
                         step_size=step_size, mask=mask, eps=eps)
    g = jax.tree.map(lambda a, b: a.astype(b.dtype), grad_fn(_add(params, v)), grads)
    updates, inner_state = inner.update(g, state.inner_state, params, **extra)
    return updates, RWPState(inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def pgd_linf(loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, epsilon: float, step_size: float,
             num_steps: int, key: Optional[jax.Array] = None, bounds: Optional[tuple[float, float]] = (0.0, 1.0)
             ) -> jax.Array:
  """Projected gradient ascent on the inputs in an ``l_inf`` ball (PGD, Madry et al., 2018, arXiv:1706.06083).

  ``x_{k+1} = clip(Pi_{||x' - x||_inf <= epsilon}(x_k + step_size * sign(grad loss_fn(x_k))), bounds)``, from a
  uniform random start in the ball when ``key`` is given (Madry et al.'s random restart; ``x_0 = x`` otherwise).
  This is the inner maximization of adversarial training used by AWP and RWP (Wu et al., arXiv:2004.05884:
  ``epsilon = 8/255``, ``step_size = 2/255``, 10 steps on CIFAR-10). The result is ``stop_gradient``-ed.

  Args:
    loss_fn: ``x -> scalar`` loss to maximize (sum the per-example losses so each example's ascent is its own).
    x: clean inputs.
    epsilon: radius of the ``l_inf`` ball (>= 0).
    step_size: ascent step (> 0).
    num_steps: number of steps (int >= 0).
    key: PRNG key for the random start, or None.
    bounds: valid input range ``(low, high)`` the adversarial input is clipped to, or None.
  """
  check_non_negative("epsilon", epsilon)
  check_positive("step_size", step_size)
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"num_steps must be an integer >= 0, got {num_steps!r}.")
  if bounds is not None and not bounds[0] < bounds[1]:
    raise ValueError(f"bounds must be (low, high) with low < high, got {bounds!r}.")

  def clip(x_adv):
    x_adv = jnp.clip(x_adv, x - epsilon, x + epsilon)
    return x_adv if bounds is None else jnp.clip(x_adv, bounds[0], bounds[1])

  x_adv = x if key is None else clip(x + jax.random.uniform(key, x.shape, x.dtype, -epsilon, epsilon))

  def body(_, x_adv):
    g = jax.grad(loss_fn)(x_adv)
    return clip(x_adv + step_size * jnp.sign(g).astype(x.dtype))

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, num_steps, body, x_adv))
