"""Combining the gradients of conflicting objectives: PCGrad, ConFIG and gradient surgery with an EMA (Bloop).

Per-objective gradients are a *stacked* pytree: every leaf carries a leading axis of size ``m`` (one slice per
objective), which is what ``jax.jacrev`` of a vector-valued loss returns (see :func:`objective_grads`); stack a list of
``m`` gradient pytrees with :func:`stack_objectives`. (Lists are never stacked implicitly: a params pytree may
itself be a list.) PCGrad and ConFIG only need the ``m x m`` Gram matrix of the
gradients, so the combination is computed in coefficient space and applied with one weighted sum per leaf: no
flattening of the model and no per-objective Python loop over leaves.

Transforms: ``scale_by_pcgrad`` / ``scale_by_config`` take the stacked gradients as ``updates`` and return one
combined gradient pytree, so they sit first in an ``optax.chain`` whose ``init`` sees the ordinary params.
``scale_by_bloop`` takes the main gradient as ``updates`` and the auxiliary one as the extra argument ``aux_grads``.
``scale_by_m_config`` (M-ConFIG) takes ONE loss's gradient per step (params-shaped) and keeps per-loss momenta.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_choice, check_non_negative, check_range
from paperlab._tree import check_same_structure

__all__ = [
    "objective_grads",
    "stack_objectives",
    "gram_matrix",
    "project_out",
    "pcgrad_direction",
    "PCGradState",
    "scale_by_pcgrad",
    "pcgrad",
    "config_direction",
    "scale_by_config",
    "config_multi",
    "MConfigState",
    "scale_by_m_config",
    "m_config",
    "bloop_direction",
    "BloopState",
    "scale_by_bloop",
    "bloop",
]

ScalarOrSchedule = float | jax.Array | Callable[[chex.Numeric], chex.Numeric]


def objective_grads(loss_fn: Callable[..., jax.Array], params: Any, *args: Any, **kwargs: Any) -> Any:
  """Stacked per-objective gradients of ``loss_fn(params, *args) -> (m,) losses`` (``jax.jacrev``)."""
  return jax.jacrev(loss_fn)(params, *args, **kwargs)


def stack_objectives(grads: Sequence[Any]) -> Any:
  """A sequence of ``m`` gradient pytrees (same structure and shapes) -> one pytree with a leading axis ``m``."""
  if len(grads) == 0:
    raise ValueError("grads must hold at least one objective's gradient, got an empty sequence.")
  check_same_structure(list(grads), "grads")
  return jax.tree.map(lambda *xs: jnp.stack(xs), *grads)


def _num_objectives(stacked: Any) -> int:
  leaves = jax.tree.leaves(stacked)
  if not leaves:
    raise ValueError("grads has no leaves.")
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"every leaf of the stacked grads needs the same leading objective axis, got sizes {sizes}.")
  return sizes.pop()


def gram_matrix(grads: Any) -> jax.Array:
  """``G[i, j] = <g_i, g_j>`` over the whole pytree (float32 accumulation) for stacked per-objective grads."""
  stacked = grads
  m = _num_objectives(stacked)
  parts = [jnp.einsum("ik,jk->ij", x.reshape(m, -1), x.reshape(m, -1), preferred_element_type=jnp.float32)
           for x in jax.tree.leaves(stacked)]
  return sum(parts[1:], parts[0])


def _combine(coefficients: jax.Array, stacked: Any) -> Any:
  """``Σ_i c_i g_i`` per leaf."""
  return jax.tree.map(lambda x: jnp.tensordot(coefficients.astype(x.dtype), x, axes=1), stacked)


def project_out(v: Any, u: Any) -> Any:
  """``π(v; u) = v - (<v, u> / ||u||²) u`` with a global (whole-pytree) inner product; ``v`` if ``u = 0``.

  Hsieh et al., "Careful with that Scalpel: Improving Gradient Surgery with an EMA", arXiv:2402.02998, Eq. (3).
  """
  vu = optax.tree.vdot(v, u)
  uu = optax.tree.vdot(u, u)
  c = jnp.where(uu > 0, vu / jnp.where(uu > 0, uu, 1.0), 0.0)
  return jax.tree.map(lambda a, b: (a - c * b).astype(a.dtype), v, u)


# ---------------------------------------------------------------------------------------------------------- PCGrad


@jax.jit
def _pcgrad_coefficients(gram: jax.Array, order: jax.Array) -> jax.Array:
  """Row ``i`` holds ``c_i`` with ``g_i^PC = Σ_k c_ik g_k`` after projecting ``g_i`` in ``order[i]``."""
  m = gram.shape[0]
  tiny = jnp.finfo(gram.dtype).tiny

  def one(i, perm):
    def body(c, j):
      coef = jnp.minimum(c @ gram[:, j], 0.0) / jnp.maximum(gram[j, j], tiny)
      return c.at[j].add(-coef), None

    c, _ = jax.lax.scan(body, jax.nn.one_hot(i, m, dtype=gram.dtype), perm)
    return c

  return jax.vmap(one)(jnp.arange(m), order)


def pcgrad_direction(grads: Any, order: jax.Array | None = None, reduction: str = "mean") -> Any:
  """PCGrad ("gradient surgery") combination of per-objective gradients.

  Yu et al., "Gradient Surgery for Multi-Task Learning", arXiv:2001.06782, Alg. 1: for each objective ``i``,
  go through the objectives ``j`` in order ``order[i]`` and, when ``<g_i^PC, g_j> < 0``, set
  ``g_i^PC ← g_i^PC - (<g_i^PC, g_j> / ||g_j||²) g_j``; return ``Σ_i g_i^PC`` (``reduction='sum'``) or the
  mean (``'mean'``, the ``pytorch_optimizer.PCGrad`` default). The paper draws a random order per objective
  (:func:`scale_by_pcgrad` does, from a PRNG key); ``order=None`` uses ``0..m-1`` for every objective.

  Args:
    grads: stacked per-objective gradients (leading axis ``m`` on every leaf).
    order: int array ``(m, m)``; row ``i`` is a permutation of ``range(m)``.
    reduction: ``'mean'`` or ``'sum'``.
  """
  check_choice("reduction", reduction, ("mean", "sum"))
  stacked = grads
  m = _num_objectives(stacked)
  if order is None:
    order = jnp.tile(jnp.arange(m), (m, 1))
  order = jnp.asarray(order)
  if order.shape != (m, m):
    raise ValueError(f"order must have shape (m, m) = ({m}, {m}), got {order.shape}.")
  coefficients = _pcgrad_coefficients(gram_matrix(stacked), order).sum(axis=0)
  if reduction == "mean":
    coefficients = coefficients / m
  return _combine(coefficients, stacked)


class PCGradState(NamedTuple):
  """State of :func:`scale_by_pcgrad`: the PRNG key for the per-step random orders."""
  key: jax.Array


def scale_by_pcgrad(key: jax.Array | int | None = 0, reduction: str = "mean") -> optax.GradientTransformation:
  """PCGrad over stacked per-objective gradients (``updates``), with a fresh random order per objective and step.

  Yu et al., "Gradient Surgery for Multi-Task Learning", arXiv:2001.06782, Alg. 1 (see :func:`pcgrad_direction`).
  ``key=None`` keeps the fixed order ``0..m-1``. The output is one gradient pytree shaped like the params.
  """
  check_choice("reduction", reduction, ("mean", "sum"))
  if isinstance(key, int):
    key = jax.random.key(key)

  def init_fn(params):
    del params
    return PCGradState(key=key if key is not None else jax.random.key(0))

  def update_fn(updates, state, params=None):
    del params
    stacked = updates
    m = _num_objectives(stacked)
    if key is None:
      return pcgrad_direction(stacked, None, reduction), state
    next_key, sub = jax.random.split(state.key)
    order = jax.vmap(lambda k: jax.random.permutation(k, m))(jax.random.split(sub, m))
    return pcgrad_direction(stacked, order, reduction), PCGradState(key=next_key)

  return optax.GradientTransformation(init_fn, update_fn)


def pcgrad(learning_rate: ScalarOrSchedule, base: optax.GradientTransformation | None = None, *,
           key: jax.Array | int | None = 0, reduction: str = "mean") -> optax.GradientTransformation:
  """``optax.chain(scale_by_pcgrad(key), base)``; ``base`` defaults to ``optax.adam(learning_rate)`` (the paper's
  multi-task experiments use Adam). Yu et al., arXiv:2001.06782. ``update`` takes stacked per-objective grads."""
  if not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  return optax.chain(scale_by_pcgrad(key, reduction), base if base is not None else optax.adam(learning_rate))


# ---------------------------------------------------------------------------------------------------------- ConFIG


def config_direction(grads: Any, weights: jax.Array | None = None, eps: float = 1e-12) -> Any:
  """ConFIG conflict-free update direction.

  Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", arXiv:2408.11104,
  Eq. (5)-(6): with unit gradients ``u_i = g_i / ||g_i||`` stacked as rows of ``A``,
  ``g_u = U(A⁺ w)`` (``w = 1_m`` for equal weights; ``A⁺`` the pseudo-inverse, i.e. the minimum-norm
  least-squares solution) and ``g_c = (Σ_i <g_i, g_u>) g_u``. Then ``cos(g_c, g_i)`` is the same for all ``i``
  (weighted by ``w``) and ``<g_c, g_i> > 0`` whenever the unit gradients are linearly independent. Computed in
  coefficient space through the Gram matrix: ``A⁺ w = Aᵀ (AAᵀ)⁺ w``.

  Args:
    grads: stacked per-objective gradients (leading axis ``m`` on every leaf).
    weights: optional positive ``(m,)`` direction weights (default equal).
    eps: guards the normalisations of zero gradients.
  """
  check_non_negative("eps", eps)
  stacked = grads
  m = _num_objectives(stacked)
  w = jnp.ones(m, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  if w.shape != (m,):
    raise ValueError(f"weights must have shape ({m},), got {w.shape}.")
  return _combine(_config_coefficients(gram_matrix(stacked), w, eps), stacked)


@jax.jit
def _config_coefficients(gram: jax.Array, w: jax.Array, eps: float) -> jax.Array:
  """``c`` with ``g_c = Σ_i c_i g_i`` (ConFIG in coefficient space)."""
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  inv = 1.0 / jnp.maximum(norms, eps)
  unit_gram = gram * inv[:, None] * inv[None, :]
  a = jnp.linalg.pinv(unit_gram, hermitian=True) @ w  # g_u ∝ Σ_i a_i u_i
  norm_u = jnp.sqrt(jnp.maximum(a @ unit_gram @ a, 0.0))
  coef_unit = a / jnp.maximum(norm_u, eps)  # g_u = Σ_i coef_unit_i u_i, ||g_u|| = 1
  length = jnp.sum(gram @ (coef_unit * inv))  # Σ_j <g_j, g_u>
  return length * coef_unit * inv


def scale_by_config(weights: jax.Array | None = None) -> optax.GradientTransformation:
  """ConFIG over stacked per-objective gradients (``updates``) -> one combined gradient pytree (stateless).

  Liu et al., arXiv:2408.11104, Eq. (5)-(6); see :func:`config_direction`. Chain a base optimizer after it.
  """

  def update_fn(updates, state, params=None):
    del params
    return config_direction(updates, weights), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def config_multi(learning_rate: ScalarOrSchedule, base: optax.GradientTransformation | None = None,
                 weights: jax.Array | None = None) -> optax.GradientTransformation:
  """``optax.chain(scale_by_config(weights), base)``; ``base`` defaults to ``optax.adam(learning_rate)`` (the
  paper's setting). Liu et al., arXiv:2408.11104. ``update`` takes stacked per-objective grads."""
  if not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  return optax.chain(scale_by_config(weights), base if base is not None else optax.adam(learning_rate))


# -------------------------------------------------------------------------------------------------------- M-ConFIG


class MConfigState(NamedTuple):
  """State of :func:`scale_by_m_config`.

  ``count``: updates seen (drives the default cycling ``loss_index = count mod m``); ``loss_counts``: ``(m,)``
  gradients seen per loss; ``momenta``: per-loss first moments (every leaf has a leading axis ``m``);
  ``steps``: ConFIG steps taken since every loss had a gradient; ``pseudo_momentum``: the previous rescaled
  ConFIG direction ``m_c``; ``nu``: second moment of the pseudo-gradient."""
  count: chex.Array
  loss_counts: chex.Array
  momenta: Any
  steps: chex.Array
  pseudo_momentum: Any
  nu: Any


def scale_by_m_config(num_losses: int, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                      weights: jax.Array | None = None) -> optax.GradientTransformationExtraArgs:
  """M-ConFIG: ConFIG over per-loss momenta, one loss's gradient per step, with Adam-style scaling.

  Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", arXiv:2408.11104,
  Sec. 3.3 (momentum acceleration) and the official ``conflictfree.momentum_operator.PseudoMomentumOperator``.
  At each step only loss ``i`` is back-propagated and

  ``m_i ← β1 m_i + (1-β1) g_i``, ``m̂_j = m_j / (1 - β1^{t_j})`` (``t_j``: gradients of loss ``j`` seen so far),
  ``g_c = ConFIG(m̂_1, …, m̂_m)`` (:func:`config_direction`), then with ``t`` the number of ConFIG steps,
  ``m_c,t = (1 - β1^t) g_c`` and the pseudo-gradient ``ĝ_t = (m_c,t - β1 m_c,t-1) / (1 - β1)`` (the gradient
  an Adam first moment would need to equal ``m_c``), ``v_t = β2 v_{t-1} + (1-β2) ĝ_t²`` and the direction is
  ``g_c / (sqrt(v_t / (1 - β2^t)) + eps)``. Until every loss has had one gradient the direction is zero and
  ``t``, ``v`` do not move (as in the official operator). Follow it with plain SGD (the package's advice; the
  :func:`m_config` alias does), not Adam.

  How to call it: ``update(grads_i, state, params=None, *, loss_index=None)`` where ``grads_i`` is the gradient
  pytree (shaped like the params) of ONE loss, the loss numbered ``loss_index``. With ``loss_index=None`` the
  transform assumes the cycling schedule of the paper: at the ``k``-th update (0-based) it expects loss
  ``k mod num_losses`` (``state.count % num_losses``), e.g. compute
  ``jax.grad(lambda p: jax.lax.switch(k % m, loss_fns, p))(params)``. Pass ``loss_index`` (a traced int is
  fine) for any other schedule, such as a random loss per step.

  Args:
    num_losses: ``m >= 1``.
    b1: first-moment decay in [0, 1) (0.9, the package default).
    b2: second-moment decay in [0, 1) (0.999).
    eps: added to ``sqrt(v̂)`` (1e-8).
    weights: optional positive ``(m,)`` ConFIG direction weights (default equal).
  """
  if not isinstance(num_losses, int) or isinstance(num_losses, bool) or num_losses < 1:
    raise ValueError(f"num_losses must be a positive int, got {num_losses!r}.")
  check_range("b1", b1, 0.0, 1.0, high_inclusive=False)
  check_range("b2", b2, 0.0, 1.0, high_inclusive=False)
  check_non_negative("eps", eps)
  m = num_losses
  w = jnp.ones(m, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
  if w.shape != (m,):
    raise ValueError(f"weights must have shape (num_losses,) = ({m},), got {w.shape}.")

  def init_fn(params):
    zeros = lambda: optax.tree.zeros_like(params)
    return MConfigState(count=jnp.zeros([], jnp.int32), loss_counts=jnp.zeros([m], jnp.int32),
                        momenta=jax.tree.map(lambda x: jnp.zeros((m,) + jnp.shape(x), jnp.result_type(x)), params),
                        steps=jnp.zeros([], jnp.int32), pseudo_momentum=zeros(), nu=zeros())

  def update_fn(updates, state, params=None, *, loss_index=None, **extra_args):
    del params, extra_args
    i = state.count % m if loss_index is None else jnp.asarray(loss_index, jnp.int32)
    hot = jax.nn.one_hot(i, m, dtype=jnp.int32)
    loss_counts = state.loss_counts + hot

    def ema_row(mom, g):
      row = (b1 * mom[i] + (1.0 - b1) * g).astype(mom.dtype)
      return jax.lax.dynamic_update_index_in_dim(mom, row, i, 0)

    momenta = jax.tree.map(ema_row, state.momenta, updates)
    ready = jnp.all(loss_counts > 0)
    # Per-loss bias correction; a loss not seen yet gets factor 1 (its zero momentum is unused until ready).
    bc1 = jnp.where(loss_counts > 0, 1.0 - b1 ** loss_counts.astype(jnp.float32), 1.0)
    m_hats = jax.tree.map(lambda x: x / bc1.reshape((m,) + (1,) * (x.ndim - 1)).astype(x.dtype), momenta)
    g_c = _combine(_config_coefficients(gram_matrix(m_hats), w, 1e-12), m_hats)
    steps = state.steps + ready.astype(jnp.int32)
    t = jnp.maximum(steps, 1).astype(jnp.float32)
    pseudo_m = jax.tree.map(lambda g: (g * (1.0 - b1 ** t)).astype(g.dtype), g_c)
    nu = jax.tree.map(lambda v, pm, old: b2 * v + (1.0 - b2) * jnp.square((pm - b1 * old) / (1.0 - b1)),
                      state.nu, pseudo_m, state.pseudo_momentum)
    bc2 = 1.0 - b2 ** t
    direction = jax.tree.map(lambda g, v: jnp.where(ready, g / (jnp.sqrt(v / bc2) + eps), 0.0).astype(g.dtype),
                             g_c, nu)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ready, a, b).astype(b.dtype), new, old)
    new_state = MConfigState(count=optax.safe_int32_increment(state.count), loss_counts=loss_counts,
                             momenta=momenta, steps=steps, pseudo_momentum=keep(pseudo_m, state.pseudo_momentum),
                             nu=keep(nu, state.nu))
    return direction, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def m_config(learning_rate: ScalarOrSchedule, num_losses: int, b1: float = 0.9, b2: float = 0.999,
             eps: float = 1e-8, weights: jax.Array | None = None) -> optax.GradientTransformationExtraArgs:
  """M-ConFIG optimizer: ``θ ← θ - lr · scale_by_m_config(...)`` (SGD on the M-ConFIG direction).

  Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks", arXiv:2408.11104,
  Sec. 3.3; matches ``conflictfree.momentum_operator.PseudoMomentumOperator`` followed by ``torch.optim.SGD``.
  ``update(grads_i, state, params=None, *, loss_index=None)`` takes ONE loss's gradient per step; see
  :func:`scale_by_m_config` for the cycling convention.
  """
  if not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  return optax.chain(scale_by_m_config(num_losses, b1, b2, eps, weights), optax.scale_by_learning_rate(learning_rate))


# ----------------------------------------------------------------------------------------------------------- Bloop


def _restrict_like(updates: Any, tree: Any, name: str) -> Any:
  """``tree`` (structured like the full parameters) restricted to the leaves ``updates`` holds: under
  ``optax.masked`` the masked-out leaves of ``updates`` are ``optax.MaskedNode`` and become so in ``tree``."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  try:
    return jax.tree.map(lambda u, a: u if is_masked(u) else a, updates, tree, is_leaf=is_masked)
  except ValueError as e:
    raise ValueError(f"{name} must have the structure of the gradient (or of the full parameters under "
                     f"optax.masked): {e}") from e


def bloop_direction(main_grads: Any, aux_grads: Any, main_ema: Any, aux_weight: float) -> Any:
  """``d = g_main + λ π(g_aux; m)`` (Hsieh et al., arXiv:2402.02998, Alg. 1); ``m`` is the EMA of main grads."""
  projected = project_out(aux_grads, main_ema)
  return jax.tree.map(lambda g, a: (g + aux_weight * a).astype(g.dtype), main_grads, projected)


class BloopState(NamedTuple):
  """State of :func:`scale_by_bloop`: EMA ``m_t`` of the main-loss gradients."""
  main_ema: Any


def scale_by_bloop(aux_weight: float = 0.1, ema_decay: float = 0.99) -> optax.GradientTransformationExtraArgs:
  """Gradient surgery with an EMA (Bloop).

  Hsieh et al., "Careful with that Scalpel: Improving Gradient Surgery with an EMA", arXiv:2402.02998, Alg. 1:
  ``m_t = ρ m_{t-1} + (1-ρ) g_main,t`` and ``d_t = g_main,t + λ π(g_aux,t; m_t)``, fed to any optimizer. The
  auxiliary gradient is projected against the EMA (not the noisy minibatch gradient), so it is orthogonal to the
  main gradient in expectation and the iterates solve the bilevel problem (minimise aux over the main argmin).
  ``ema_decay = 0`` is plain per-step projection.

  ``update(main_grads, state, params=None, *, aux_grads)``.

  Args:
    aux_weight: ``λ >= 0``.
    ema_decay: ``ρ`` in [0, 1).
  """
  check_non_negative("aux_weight", aux_weight)
  check_range("ema_decay", ema_decay, 0.0, 1.0, high_inclusive=False)

  def init_fn(params):
    return BloopState(main_ema=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None, *, aux_grads=None, **extra_args):
    del params, extra_args
    if aux_grads is None:
      raise ValueError("scale_by_bloop needs the auxiliary-loss gradients: update(main_grads, state, "
                       "params, aux_grads=...).")
    aux_grads = _restrict_like(updates, aux_grads, "aux_grads")
    ema = jax.tree.map(lambda m, g: (ema_decay * m + (1.0 - ema_decay) * g).astype(m.dtype), state.main_ema, updates)
    return bloop_direction(updates, aux_grads, ema, aux_weight), BloopState(main_ema=ema)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def bloop(learning_rate: ScalarOrSchedule, aux_weight: float = 0.1, ema_decay: float = 0.99,
          base: optax.GradientTransformation | None = None) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(scale_by_bloop(aux_weight, ema_decay), base)``; ``base`` defaults to ``optax.sgd(learning_rate)``.

  Hsieh et al., arXiv:2402.02998. ``update(main_grads, state, params, aux_grads=...)``.
  """
  if not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  return optax.chain(scale_by_bloop(aux_weight, ema_decay), base if base is not None else optax.sgd(learning_rate))
