"""The sharpness-aware minimization (SAM) family as optax transformations that take a ``grad_fn``.

Each method here is a ``GradientTransformationExtraArgs`` wrapping a base optimizer ``inner``. Its
``update(grads, state, params, grad_fn=...)`` receives the gradient at ``params`` and a function
``grad_fn(params) -> grads`` on the same batch (``paperlab.train.make_train_step`` passes one), evaluates it at the
perturbed parameters and feeds the resulting gradient to ``inner``.

The ``grad_fn`` contract (shared by every ``grad_fn`` user of :mod:`paperlab.optim`: ``sam``, ``gsam``, ``wsam``,
``friendly_sam``, ``looksam``, ``awp``, ``rwp``, ``scale_by_egn`` and ``egn``):

* ``grads`` must be the raw gradient at ``params``. These methods compute a new gradient with ``grad_fn`` (or, for
  EGN, with ``output_fn``), so a transformation chained *before* them (``optax.chain(optax.clip_by_global_norm(c),
  sam(base))``) would be silently lost. Put such transformations *inside*, where they act on the gradient the
  method computes: ``sam(optax.chain(optax.clip_by_global_norm(c), base))`` (for EGN, after it:
  ``optax.chain(scale_by_egn(), optax.clip_by_global_norm(c), ...)``).
* This is checked when ``grad_fn`` is a :class:`GradFnAt`, the function together with the parameters and the
  gradient it gave there (:func:`grad_fn_at`; ``make_train_step`` always passes one): at trace time, the leaves of
  ``grads`` must be the very same arrays (Python object identity, no device work) as that gradient, otherwise a
  ``ValueError`` says where the transformations go. Wrappers that hand the gradient through unchanged
  (``optax.chain`` as first member, ``optax.masked``, ``optax.partition`` / ``multi_transform``,
  ``optax.inject_hyperparams``, ``optax.apply_if_finite``) pass the check; ``optax.MultiSteps`` (the gradient is an
  average over micro-batches that ``grad_fn`` cannot see) does not. A plain callable ``grad_fn`` cannot be
  checked: it is trusted, so call ``update`` with the raw gradient, or wrap it by hand::

    gf = optim.grad_fn_at(jax.grad(loss), params)      # one gradient pass, gf.grads
    updates, state = tx.update(gf.grads, state, params, grad_fn=gf)

* Under ``optax.masked`` and ``optax.partition`` the method sees ``params`` and ``grads`` with ``optax.MaskedNode``
  in place of the leaves it does not own. It then perturbs only its own leaves (norms are over those leaves: SAM on
  that subset of parameters, the others held at their current values) and calls ``grad_fn`` on the full
  parameters, taken from the :class:`GradFnAt` (a plain callable there is an error that says so).
* ``grad_fn`` may return ``flax.nnx.Variable`` leaves (``nnx.grad``'s ``nnx.State``): they are unwrapped to arrays
  and must then have the structure of ``grads`` (e.g. ``nnx.Optimizer``'s pure ``nnx.State``; see :func:`sam`).
* ``None`` leaves are empty subtrees (kept as ``None``). Numeric hyperparameters (``rho``, ``alpha``, ``gamma``,
  ``sigma``, ``lmbda``, ``eta``, ``eps``, learning rates) may be traced, so ``optax.inject_hyperparams`` + ``jit``
  can change them between steps; integer periods and counts (``looksam``'s ``k``, ``rwp``'s ``steps``, ``egn``'s
  ``max_backtracking_steps``) and callables that are not schedules (``mask``) go in ``static_args``.

Mixed precision: norms, inner products and the perturbation are computed in float32 (or wider) whatever the
parameter dtype; only the perturbed parameters handed to ``grad_fn`` are cast back to each leaf's dtype, and the
returned updates keep the leaves' dtypes. So bfloat16 / float16 parameters and gradients work (a norm accumulated
in bfloat16 over a large tensor would be off by percents, and a float16 sum of squares overflows above 256).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from paperlab._checks import check_non_negative, check_positive, check_range

__all__ = [
    "GradFnAt", "grad_fn_at",
    "SAMState", "sam_perturbation", "sam_gradient", "sam",
    "GSAMState", "gsam", "gsam_rho_schedule",
    "WSAMState", "wsam",
    "FriendlySAMState", "friendly_sam",
    "LookSAMState", "looksam",
]

GradFn = Callable[[optax.Params], optax.Updates]
ScalarOrSchedule = Union[float, Callable[[chex.Numeric], chex.Numeric]]


def _wide(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _tree_dot(a, b) -> jax.Array:
  return sum(jnp.sum(_wide(x) * _wide(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tree_norm(a) -> jax.Array:
  return jnp.sqrt(_tree_dot(a, a))


def _add(params, delta):
  """``params + delta`` computed in float32 and cast back to each parameter's dtype."""
  return jax.tree.map(lambda w, d: (_wide(w) + d).astype(w.dtype), params, delta)


def _value(rho: ScalarOrSchedule, count) -> chex.Numeric:
  return rho(count) if callable(rho) else rho


def _check_rho(rho, eta, eps) -> None:
  if not callable(rho):
    check_positive("rho", rho)
  check_non_negative("eta", eta)
  check_non_negative("eps", eps)


def _check_inner(inner) -> optax.GradientTransformationExtraArgs:
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"inner must be an optax.GradientTransformation (the base optimizer), got {type(inner).__name__}.")
  return optax.with_extra_args_support(inner)


def _require(grad_fn, params, name: str) -> None:
  if params is None:
    raise ValueError(f"{name} needs params: call update(grads, state, params, grad_fn=...).")
  if grad_fn is None or not callable(grad_fn):
    raise ValueError(f"{name} needs grad_fn=: a function params -> grads on the same batch (e.g. passed by "
                     f"paperlab.train.make_train_step), got {grad_fn!r}.")


class GradFnAt:
  """``grad_fn`` together with the point ``params`` and the gradient ``grads`` it gave there (:func:`grad_fn_at`).

  Calling it calls ``fn``. Passed as ``grad_fn=``, it lets the ``grad_fn`` users check that the ``updates`` they
  receive are ``grads`` unmodified, and call ``fn`` on the full parameters under ``optax.masked`` (see the module
  docstring). Not a pytree: build it inside the jitted step from the arrays you pass as ``updates``.
  """

  __slots__ = ("fn", "params", "grads")

  def __init__(self, fn: GradFn, params: optax.Params, grads: optax.Updates):
    self.fn, self.params, self.grads = fn, params, grads

  def __call__(self, params: optax.Params) -> optax.Updates:
    return self.fn(params)

  def __repr__(self) -> str:
    return f"GradFnAt(fn={self.fn!r})"


def grad_fn_at(grad_fn: GradFn, params: optax.Params, grads: Optional[optax.Updates] = None) -> GradFnAt:
  """``grad_fn`` anchored at ``params``: a :class:`GradFnAt` holding ``grads = grad_fn(params)``.

  Pass ``grads`` when already computed (no extra pass); pass the same ``grads`` as the ``updates`` of
  ``tx.update(grads, state, params, grad_fn=grad_fn_at(grad_fn, params, grads))``.
  """
  if isinstance(grad_fn, GradFnAt):
    grad_fn = grad_fn.fn
  if not callable(grad_fn):
    raise TypeError(f"grad_fn must be a callable params -> grads, got {type(grad_fn).__name__}.")
  if grads is None:
    grads = grad_fn(params)
  return GradFnAt(grad_fn, params, grads)


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _array(x):
  """A leaf position's value: the array itself, or the array an ``nnx.Variable`` holds; None if a subtree."""
  if isinstance(x, nnx.Variable):
    leaves = jax.tree.leaves(x)
    return leaves[0] if len(leaves) == 1 else None
  return x if jax.tree_util.treedef_is_leaf(jax.tree.structure(x)) and x is not None else None


def _pure(tree):
  """``tree`` with every ``nnx.Variable`` replaced by its value (containers kept, as ``nnx.as_pure``)."""
  return jax.tree.map(lambda v: _array(v) if isinstance(v, nnx.Variable) else v, tree,
                      is_leaf=lambda v: isinstance(v, nnx.Variable))


def _up_to(like, tree, name: str, what: str):
  """``(flat_like, flat_tree, treedef)``: ``tree`` flattened up to ``like``'s structure (MaskedNode as leaves)."""
  flat_like, treedef = jax.tree.flatten(like, is_leaf=_is_masked)
  try:
    flat = treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as err:
    raise ValueError(f"{name}: {what} must have the structure of the updates {treedef}, got "
                     f"{jax.tree.structure(tree)}. (grad_fn must return gradients shaped like the parameters it "
                     f"receives; for flax.nnx.Optimizer, nnx.grad of the model restricted to its wrt filter.)"
                     ) from err
  return flat_like, flat, treedef


def _align(tree, like, name: str, what: str):
  """``tree`` (full, possibly with ``nnx.Variable`` leaves) cut to ``like``: MaskedNode where ``like`` has one."""
  flat_like, flat, treedef = _up_to(like, tree, name, what)
  out = []
  for l, t in zip(flat_like, flat):
    if _is_masked(l):
      out.append(l)
      continue
    a = _array(t)
    if a is None:
      raise ValueError(f"{name}: {what} must have the structure of the updates {treedef}, got "
                       f"{jax.tree.structure(tree)} (a subtree where the updates have an array).")
    out.append(a)
  return treedef.unflatten(out)


_MOVE_INSIDE = ("Put such transformations inside it, where they act on the gradient it computes: "
                "{name}(optax.chain(optax.clip_by_global_norm(c), base)) instead of "
                "optax.chain(optax.clip_by_global_norm(c), {name}(base)).")


def _check_unmodified(name: str, updates, anchor: GradFnAt, fix: str) -> None:
  """Raise unless every (unmasked) leaf of ``updates`` is the very array ``anchor.grads`` holds there."""
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(updates, is_leaf=_is_masked)[0]]
  flat_u, flat_g, _ = _up_to(updates, anchor.grads, name, "grad_fn.grads (the gradient grad_fn gave at params)")
  for path, u, g in zip(paths, flat_u, flat_g):
    if not _is_masked(u) and u is not _array(g):
      raise ValueError(
          f"{name}: the updates it received are not the gradient grad_fn gave at params (first difference at "
          f"{jax.tree_util.keystr(path) or 'the root'}): a transformation before {name} (e.g. in an optax.chain, "
          f"or optax.MultiSteps) changed them, and {name} recomputes its gradient from grad_fn, so that change "
          f"would be silently lost. " + fix.format(name=name) + " Wrappers that pass the gradient through "
          f"unchanged (optax.masked, optax.partition, optax.inject_hyperparams) are fine.")


def _filler(name: str, params, grad_fn) -> Callable[[Any], Any]:
  """``p -> p`` with every MaskedNode (``optax.masked``) replaced by the full parameters' part."""
  if not any(_is_masked(x) for x in jax.tree.leaves(params, is_leaf=_is_masked)):
    return lambda p: p
  if not isinstance(grad_fn, GradFnAt):
    raise ValueError(
        f"{name} runs under optax.masked / optax.partition (its params contain optax.MaskedNode), so it cannot "
        f"evaluate grad_fn on them: pass grad_fn=paperlab.optim.grad_fn_at(fn, params, grads) with the full "
        f"params (paperlab.train.make_train_step does), got a plain {type(grad_fn).__name__}.")
  full = _pure(grad_fn.params)

  def fill(p):
    flat, flat_full, treedef = _up_to(p, full, name, "grad_fn.params (the full parameters)")
    return treedef.unflatten([f if _is_masked(x) else x for x, f in zip(flat, flat_full)])

  return fill


def _bind(name: str, updates, params, grad_fn, fix: str = _MOVE_INSIDE):
  """Check the ``grad_fn`` contract (module docstring) and return ``(local_grad_fn, fill)`` that work in the
  structure of ``updates`` (MaskedNode kept, ``nnx.Variable`` unwrapped); ``fill`` completes masked params."""
  _require(grad_fn, params, name)
  if isinstance(grad_fn, GradFnAt):
    _check_unmodified(name, updates, grad_fn, fix)
  fill = _filler(name, params, grad_fn)
  return (lambda p: _align(grad_fn(fill(p)), updates, name, "grad_fn(params)")), fill


def sam_perturbation(grads: optax.Updates, params: optax.Params, rho: chex.Numeric = 0.05, *,
                     adaptive: bool = False, eta: float = 0.01, eps: float = 1e-12, normalize: bool = True
                     ) -> optax.Updates:
  """The SAM ascent step ``e = rho * T^2 g / (||T g||_2 + eps)`` (float32 leaves).

  SAM: ``T = I``, the p=2 solution ``rho g / ||g||`` of Foret et al., "Sharpness-Aware Minimization for
  Efficiently Improving Generalization", arXiv:2010.01412, Eq. (2). ASAM (``adaptive=True``): ``T = |w| + eta``
  elementwise, Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep
  Neural Networks", arXiv:2102.11600, Eq. (8) with the element-wise operator of Sec. 3.
  ``pytorch_optimizer.SAM(adaptive=True)`` uses ``eta = 0``.

  Args:
    grads: gradient at ``params``.
    params: current parameters (only used when ``adaptive``).
    rho: neighbourhood radius (SAM 0.05; ASAM typically 0.5-2).
    adaptive: ASAM's parameter-scaled neighbourhood.
    eta: ASAM's offset so that zero weights are still perturbed (paper 0.01).
    eps: added to the norm.
    normalize: ``False`` gives unnormalized SAM (USAM), ``e = rho T^2 g``, the variant analysed by Monzio
      Compagnoni et al., "An SDE for Modeling SAM: Theory and Insights", arXiv:2301.08203, Eq. (3) (USAM is
      attracted to saddles with curvature below ``-1/rho``).
  """
  if not normalize:
    if adaptive:
      return jax.tree.map(lambda g, w: _wide(g) * (jnp.abs(_wide(w)) + eta) ** 2 * rho, grads, params)
    return jax.tree.map(lambda g: _wide(g) * rho, grads)
  if adaptive:
    tg = jax.tree.map(lambda g, w: _wide(g) * (jnp.abs(_wide(w)) + eta), grads, params)
    scale = rho / (_tree_norm(tg) + eps)
    return jax.tree.map(lambda t, w: t * (jnp.abs(_wide(w)) + eta) * scale, tg, params)
  scale = rho / (_tree_norm(grads) + eps)
  return jax.tree.map(lambda g: _wide(g) * scale, grads)


def sam_gradient(grad_fn: GradFn, params: optax.Params, grads: Optional[optax.Updates] = None, *,
                 rho: chex.Numeric = 0.05, adaptive: bool = False, eta: float = 0.01, eps: float = 1e-12,
                 normalize: bool = True) -> optax.Updates:
  """The SAM gradient ``grad_fn(w + e(w))`` with ``e`` from :func:`sam_perturbation` (two passes, pure).

  Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", arXiv:2010.01412,
  Eq. (3) (the second-order term dropped, as in the paper); ASAM with ``adaptive=True`` (arXiv:2102.11600).

  Args:
    grad_fn: ``params -> grads`` on one batch.
    params: where to take the step.
    grads: ``grad_fn(params)`` if already computed (saves a pass).
    rho, adaptive, eta, eps, normalize: as in :func:`sam_perturbation` (``normalize=False``: USAM).

  Returns:
    The gradient at the perturbed parameters, in ``grads``' structure.
  """
  if not callable(rho):
    check_positive("rho", rho)
  if grads is None:
    grads = grad_fn(params)
  e = sam_perturbation(grads, params, rho, adaptive=adaptive, eta=eta, eps=eps, normalize=normalize)
  return grad_fn(_add(params, e))


def _cast_like(tree, like):
  return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


class SAMState(NamedTuple):
  """State of :func:`sam`: step count (for a ``rho`` schedule) and the base optimizer's state."""

  count: chex.Array
  inner_state: optax.OptState


def sam(inner: optax.GradientTransformation, rho: ScalarOrSchedule = 0.05, adaptive: bool = False,
        eta: float = 0.01, eps: float = 1e-12, normalize: bool = True) -> optax.GradientTransformationExtraArgs:
  """SAM / ASAM: feed the base optimizer the gradient at the adversarially perturbed weights.

  ``g_SAM = grad L(w + rho T^2 g / ||T g||)``; ``updates = inner(g_SAM)``. One extra gradient per step.

  Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", arXiv:2010.01412,
  Algorithm 1 (rho=0.05 default). ASAM (``adaptive=True``): Kwon et al., arXiv:2102.11600, Algorithm 1.

  Args:
    inner: the base optimizer (any optax transformation, e.g. ``optax.sgd(0.05, momentum=0.9)``).
    rho: radius (> 0), or a schedule ``count -> rho`` (e.g. a large rho after re-weighting starts, Rangwani et
      al., "Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data", arXiv:2212.13827).
    adaptive: ASAM.
    eta: ASAM offset (paper 0.01; ``pytorch_optimizer`` uses 0).
    eps: added to the gradient norm.
    normalize: ``False`` for unnormalized SAM (USAM, ``e = rho g``; arXiv:2301.08203).

  Returns:
    A transformation whose ``update(grads, state, params, grad_fn=...)`` needs ``grad_fn`` (the module docstring
    gives the contract: ``grads`` unmodified, transformations such as clipping go inside ``inner``).

  Example with ``flax.nnx.Optimizer``: its ``update(model, grads, **kwargs)`` hands ``grad_fn`` on to
  ``tx.update`` with ``params`` the pure ``nnx.State`` of its ``wrt`` variables, so ``grad_fn`` rebuilds the model
  from them (``nnx.merge``) and may return ``nnx.grad``'s output; :func:`grad_fn_at` lets ``sam`` check that the
  gradient reached it unmodified::

    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from paperlab import optim
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optim.sam(optax.sgd(0.1), rho=0.05), wrt=nnx.Param)
    >>> loss_fn = lambda model, x, y: jnp.mean((model(x) - y) ** 2)
    >>> @nnx.jit
    ... def train_step(model, optimizer, x, y):
    ...   graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ...   grad_fn = lambda p: nnx.grad(loss_fn)(nnx.merge(graphdef, p, rest), x, y)
    ...   grads = nnx.grad(loss_fn)(model, x, y)
    ...   optimizer.update(model, grads, grad_fn=optim.grad_fn_at(grad_fn, params, grads))
    >>> x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    >>> before = loss_fn(model, x, y)
    >>> train_step(model, optimizer, x, y)
    >>> bool(loss_fn(model, x, y) < before)
    True
  """
  _check_rho(rho, eta, eps)
  inner = _check_inner(inner)

  def init_fn(params):
    return SAMState(jnp.zeros([], jnp.int32), inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn=None, **extra):
    grad_fn, _ = _bind("sam", grads, params, grad_fn)
    g_sam = sam_gradient(grad_fn, params, grads, rho=_value(rho, state.count), adaptive=adaptive, eta=eta, eps=eps,
                         normalize=normalize)
    updates, inner_state = inner.update(_cast_like(g_sam, grads), state.inner_state, params, **extra)
    return updates, SAMState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class GSAMState(NamedTuple):
  """State of :func:`gsam`."""

  count: chex.Array
  inner_state: optax.OptState


def gsam_rho_schedule(learning_rate: Callable[[chex.Numeric], chex.Numeric], lr_max: float, lr_min: float,
                      rho_max: float = 0.05, rho_min: float = 0.05) -> Callable[[chex.Numeric], chex.Numeric]:
  """``rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)``: rho proportional to the lr.

  Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization", arXiv:2203.08065, Sec. 5.2 (rho_t schedule);
  ``rho_max`` when ``lr_max == lr_min`` (as ``pytorch_optimizer.ProportionScheduler``).
  """
  check_non_negative("rho_min", rho_min)
  check_range("rho_max", rho_max, rho_min, None)
  if lr_max == lr_min:
    return lambda count: jnp.asarray(rho_max, jnp.float32)
  return lambda count: rho_min + (rho_max - rho_min) * (learning_rate(count) - lr_min) / (lr_max - lr_min)


def gsam(inner: optax.GradientTransformation, rho: ScalarOrSchedule = 0.05, alpha: float = 0.4,
         adaptive: bool = False, eta: float = 0.01, eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """GSAM: SAM gradient minus ``alpha`` times the part of the clean gradient orthogonal to it.

  ``g_p = grad L(w + e)``; ``g_perp = g - <g, g_p / ||g_p||> g_p / ||g_p||``; ``updates = inner(g_p - alpha g_perp)``
  which descends the perturbed loss while ascending the surrogate gap ``L(w + e) - L(w)`` only orthogonally.

  Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization", ICLR 2022, arXiv:2203.08065, Algorithm 1.
  ``alpha=0.4`` and ``eps=1e-12`` follow ``pytorch_optimizer.GSAM``; rho usually follows the lr
  (:func:`gsam_rho_schedule`).

  Args:
    inner: base optimizer.
    rho: radius (> 0) or schedule.
    alpha: weight of the orthogonal (gap-ascent) component, in [0, 1].
    adaptive, eta, eps: as in :func:`sam_perturbation`.
  """
  _check_rho(rho, eta, eps)
  check_range("alpha", alpha, 0.0, 1.0)
  inner = _check_inner(inner)

  def init_fn(params):
    return GSAMState(jnp.zeros([], jnp.int32), inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn=None, **extra):
    grad_fn, _ = _bind("gsam", grads, params, grad_fn)
    g_p = sam_gradient(grad_fn, params, grads, rho=_value(rho, state.count), adaptive=adaptive, eta=eta, eps=eps)
    g_norm, gp_norm = _tree_norm(grads), _tree_norm(g_p)
    cosine = _tree_dot(grads, g_p) / (g_norm * gp_norm + eps)
    coef = cosine * g_norm / (gp_norm + eps)
    combined = jax.tree.map(lambda gp, g: (_wide(gp) - alpha * (_wide(g) - coef * _wide(gp))).astype(g.dtype),
                            g_p, grads)
    updates, inner_state = inner.update(combined, state.inner_state, params, **extra)
    return updates, GSAMState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class WSAMState(NamedTuple):
  """State of :func:`wsam`."""

  count: chex.Array
  inner_state: optax.OptState


def wsam(inner: optax.GradientTransformation, rho: ScalarOrSchedule = 0.05, gamma: float = 0.9, *,
         decouple: bool = True, learning_rate: Optional[ScalarOrSchedule] = None, adaptive: bool = False,
         eta: float = 0.01, eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """WSAM: minimize ``L(w) + gamma / (1 - gamma) (L(w + e) - L(w))``, sharpness as a weighted regularizer.

  With ``a = gamma / (1 - gamma)`` and ``g_p = grad L(w + e)``: coupled, ``updates = inner(g + a (g_p - g))``;
  decoupled (the paper's Algorithm 1, default), ``updates = inner(g) - lr_t a (g_p - g)``, so the sharpness term
  bypasses the base optimizer's preconditioning.

  Yue et al., "Sharpness-Aware Minimization Revisited: Weighted Sharpness as a Regularization Term", KDD 2023,
  arXiv:2305.15817, Eq. (6) and Algorithm 1. Defaults rho=0.05, gamma=0.9 (as ``pytorch_optimizer.WSAM``).

  Args:
    inner: base optimizer.
    rho: radius (> 0) or schedule.
    gamma: sharpness weight in [0, 1).
    decouple: apply the sharpness term outside the base optimizer (needs ``learning_rate``).
    learning_rate: the base optimizer's learning rate (float or schedule), used only when ``decouple``.
    adaptive, eta, eps: as in :func:`sam_perturbation`.
  """
  _check_rho(rho, eta, eps)
  check_range("gamma", gamma, 0.0, 1.0, high_inclusive=False)
  if decouple and learning_rate is None:
    raise ValueError("wsam(decouple=True) needs learning_rate= (the base optimizer's lr), got None.")
  if learning_rate is not None and not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  a = gamma / (1.0 - gamma)
  inner = _check_inner(inner)

  def init_fn(params):
    return WSAMState(jnp.zeros([], jnp.int32), inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn=None, **extra):
    grad_fn, _ = _bind("wsam", grads, params, grad_fn)
    g_p = sam_gradient(grad_fn, params, grads, rho=_value(rho, state.count), adaptive=adaptive, eta=eta, eps=eps)
    sharp = jax.tree.map(lambda gp, g: _wide(gp) - _wide(g), g_p, grads)
    if decouple:
      updates, inner_state = inner.update(grads, state.inner_state, params, **extra)
      lr = _value(learning_rate, state.count)
      updates = jax.tree.map(lambda u, s: (_wide(u) - lr * a * s).astype(u.dtype), updates, sharp)
    else:
      mixed = jax.tree.map(lambda g, s: (_wide(g) + a * s).astype(g.dtype), grads, sharp)
      updates, inner_state = inner.update(mixed, state.inner_state, params, **extra)
    return updates, WSAMState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class FriendlySAMState(NamedTuple):
  """State of :func:`friendly_sam`: step count, EMA of past gradients, base optimizer state."""

  count: chex.Array
  momentum: optax.Updates
  inner_state: optax.OptState


def friendly_sam(inner: optax.GradientTransformation, rho: ScalarOrSchedule = 0.05, sigma: float = 1.0,
                 lmbda: float = 0.9, adaptive: bool = False, eta: float = 0.01, eps: float = 1e-12
                 ) -> optax.GradientTransformationExtraArgs:
  """F-SAM: perturb along ``g_t - sigma m_{t-1}``, the batch-specific part of the gradient, not ``g_t``.

  ``m_t = lmbda m_{t-1} + (1 - lmbda) g_t`` estimates the full gradient (``m_1 = g_1``, and the first step
  perturbs along ``g_1``); ``e = rho d / ||d||`` with ``d = g_t - sigma m_{t-1}``; ``updates = inner(grad L(w + e))``.

  Li et al., "Friendly Sharpness-Aware Minimization", CVPR 2024, arXiv:2403.12350, Eq. (9) and Algorithm 1.
  Defaults sigma=1, lmbda=0.9, rho=0.05 (as ``pytorch_optimizer.FriendlySAM``).

  Args:
    inner: base optimizer.
    rho: radius (> 0) or schedule.
    sigma: weight of the removed full-gradient component (>= 0).
    lmbda: EMA decay in [0, 1).
    adaptive, eta, eps: as in :func:`sam_perturbation`.
  """
  _check_rho(rho, eta, eps)
  check_non_negative("sigma", sigma)
  check_range("lmbda", lmbda, 0.0, 1.0, high_inclusive=False)
  inner = _check_inner(inner)

  def init_fn(params):
    return FriendlySAMState(jnp.zeros([], jnp.int32), jax.tree.map(lambda w: jnp.zeros_like(_wide(w)), params),
                            inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn=None, **extra):
    grad_fn, _ = _bind("friendly_sam", grads, params, grad_fn)
    first = state.count == 0
    direction = jax.tree.map(lambda g, m: jnp.where(first, _wide(g), _wide(g) - sigma * m), grads, state.momentum)
    momentum = jax.tree.map(lambda g, m: jnp.where(first, _wide(g), lmbda * m + (1 - lmbda) * _wide(g)),
                            grads, state.momentum)
    e = sam_perturbation(direction, params, _value(rho, state.count), adaptive=adaptive, eta=eta, eps=eps)
    g_p = _cast_like(grad_fn(_add(params, e)), grads)
    updates, inner_state = inner.update(g_p, state.inner_state, params, **extra)
    return updates, FriendlySAMState(optax.safe_increment(state.count), momentum, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class LookSAMState(NamedTuple):
  """State of :func:`looksam`: step count, the stored orthogonal sharpness direction ``g_v``, base state."""

  count: chex.Array
  g_v: optax.Updates
  inner_state: optax.OptState


def looksam(inner: optax.GradientTransformation, rho: ScalarOrSchedule = 0.1, k: int = 10, alpha: float = 0.7,
            adaptive: bool = False, eta: float = 0.01, eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  """LookSAM: take the SAM gradient only every ``k`` steps and reuse its sharpness direction in between.

  Every ``k``-th step (starting with the first): ``g_s = grad L(w + e)`` is used, and
  ``g_v = g_s - ||g_s|| cos(g, g_s) g / ||g||`` (the part of ``g_s`` orthogonal to ``g``) is stored. Other steps
  cost one gradient: ``updates = inner(g + alpha ||g|| / (||g_v|| + 1e-8) g_v)``. Norms and cosines are per
  parameter tensor, as in ``pytorch_optimizer.LookSAM`` (the paper's layer-wise variant).

  Liu et al., "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR 2022, arXiv:2203.02714,
  Algorithm 1 (Eq. 5-6). Defaults rho=0.1, k=10, alpha=0.7 (as ``pytorch_optimizer.LookSAM``).

  Args:
    inner: base optimizer.
    rho: radius (> 0) or schedule.
    k: period of the full SAM step (int >= 1); the skipped steps do not call ``grad_fn`` (``lax.cond``).
    alpha: weight of the reused direction, in (0, 1).
    adaptive, eta, eps: as in :func:`sam_perturbation`.
  """
  _check_rho(rho, eta, eps)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be a Python int >= 1 (a period, so under optax.inject_hyperparams list it in "
                     f"static_args=('k',)), got {k!r}.")
  check_range("alpha", alpha, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  inner = _check_inner(inner)

  def init_fn(params):
    return LookSAMState(jnp.zeros([], jnp.int32), jax.tree.map(lambda w: jnp.zeros_like(_wide(w)), params),
                        inner.init(params))

  def update_fn(grads, state, params=None, *, grad_fn=None, **extra):
    grad_fn, _ = _bind("looksam", grads, params, grad_fn)
    wide = jax.tree.map(_wide, grads)

    def full(_):
      g_s = jax.tree.map(_wide, sam_gradient(grad_fn, params, grads, rho=_value(rho, state.count),
                                             adaptive=adaptive, eta=eta, eps=eps))

      def orthogonal(gs, g):
        gs_norm, g_norm = jnp.linalg.norm(gs), jnp.linalg.norm(g)
        g_unit = g / jnp.maximum(g_norm, eps)
        return gs - gs_norm * jnp.sum(g_unit * gs / jnp.maximum(gs_norm, eps)) * g_unit

      return g_s, jax.tree.map(orthogonal, g_s, wide)

    def reuse(_):
      mixed = jax.tree.map(lambda g, v: g + alpha * jnp.linalg.norm(g) / (jnp.linalg.norm(v) + 1e-8) * v,
                           wide, state.g_v)
      return mixed, state.g_v

    g_used, g_v = jax.lax.cond(state.count % k == 0, full, reuse, None)
    updates, inner_state = inner.update(_cast_like(g_used, grads), state.inner_state, params, **extra)
    return updates, LookSAMState(optax.safe_increment(state.count), g_v, inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
