"""Weight averaging on parameter pytrees: uniform/weighted means, interpolation, SLERP, EMA, SWA (with a BatchNorm
statistics pass), LAWA.

Every function takes and returns pytrees (plain nested dicts or ``nnx.State``), works leaf by leaf through
``jax.tree.map`` (so a large model streams tensor by tensor), accumulates in float32 (float64 stays float64) and
returns each leaf in its input dtype.

Integer and bool leaves (step counters, masks, integer buffers) are never averaged, here or in any other merge of
``paperlab.merge``: a leaf equal (same dtype, shape and values) across the models is kept bit-exactly; a leaf that
differs raises ``ValueError`` naming its path (mergekit's behaviour), unless the caller passes ``integer_leaves=``:
``"first"`` (the first model's), ``"last"`` (the last model's), ``"base"`` (the base model's, for merges that take one)
or a callable ``(path, leaves) -> leaf`` that receives the versions of the leaf (base first when there is one).
Under ``jax.jit`` traced integer leaves are compared at run time by a host callback (``jax.debug.callback``):
equal leaves are kept, a difference stops the computation with a ``JaxRuntimeError`` carrying the same message.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Iterable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab._tree import check_same_structure, path_mask, path_str

PyTree = Any
IntegerLeaves = Union[str, Callable[[str, list], Any]]

__all__ = [
    "weighted_average", "uniform_average", "interpolate", "slerp", "negative_flip_rate",
    "EMAState", "ema_init", "ema_update",
    "SWAState", "swa_init", "swa_update", "swa_schedule", "bn_update",
    "LAWAState", "lawa_init", "lawa_update", "lawa_params", "latest_average",
]


# ----------------------------------------------------------------------------------------------------------------
# shared helpers (used by soups, task_vectors and subspace as well)


def _compute_dtype(dtype) -> jnp.dtype:
  return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _check_models(models: Sequence[PyTree], name: str = "models", base: PyTree | None = None,
                  base_name: str = "base") -> list:
  """Non-empty list of pytrees with the structure and shapes of the first one (and of ``base``); Python scalar
  leaves become arrays (so ``x.astype`` works on every leaf)."""
  if isinstance(models, (dict, str, bytes)) or not isinstance(models, (list, tuple)):
    raise TypeError(f"{name} must be a list or tuple of pytrees, got {type(models).__name__}.")
  models = [_scalars_as_arrays(m) for m in models]
  if not models:
    raise ValueError(f"{name} must hold at least one model, got an empty sequence.")
  trees = ([base] if base is not None else []) + models
  names = ([base_name] if base is not None else []) + [f"{name}[{i}]" for i in range(len(models))]
  check_same_structure(trees, names)
  return models


def _scalars_as_arrays(tree: PyTree) -> PyTree:
  """Python and NumPy scalar leaves as 0-d arrays of their (JAX-canonical) dtype; arrays are left alone."""
  def conv(x):
    return jnp.asarray(x) if isinstance(x, (numbers.Number, np.generic)) else x

  return jax.tree.map(conv, tree)


# ----------------------------------------------------------------------------------------------------------------
# integer and bool leaves: one policy for every merge (see the module docstring)

_INTEGER_RULES = ("error", "first", "last", "base")


def _check_integer_rule(rule: IntegerLeaves, has_base: bool) -> IntegerLeaves:
  if callable(rule):
    return rule
  accepted = [r for r in _INTEGER_RULES if has_base or r != "base"]
  if not isinstance(rule, str) or rule not in accepted:
    raise ValueError(f"integer_leaves must be one of {accepted} or a callable (path, leaves) -> leaf, got "
                     f"{rule!r}.")
  return rule


def _same_leaf(a, b) -> bool:
  if a is b:
    return True
  if jnp.shape(a) != jnp.shape(b):
    return False
  if hasattr(a, "dtype") and hasattr(b, "dtype") and np.dtype(a.dtype) != np.dtype(b.dtype):
    return False
  return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def _resolve_integer_leaf(path: str, leaves: Sequence[Any], names: Sequence[str], rule: IntegerLeaves,
                          has_base: bool) -> Any:
  """The merged value of one integer/bool leaf from its versions ``leaves`` (base first when ``has_base``)."""
  if callable(rule):
    return rule(path, list(leaves))
  if rule == "base":
    return leaves[0]
  if rule == "first":
    return leaves[1 if has_base else 0]
  if rule == "last":
    return leaves[-1]
  ref = leaves[0]
  traced = any(isinstance(x, jax.core.Tracer) for x in leaves)
  for name, x in zip(names[1:], leaves[1:]):
    if x is ref:
      continue
    if traced:
      if jnp.shape(x) != jnp.shape(ref) or jnp.result_type(x) != jnp.result_type(ref):
        raise ValueError(_differs(path, names[0], name, f"{jnp.result_type(ref)}{list(jnp.shape(ref))}",
                                  f"{jnp.result_type(x)}{list(jnp.shape(x))}"))
    elif not _same_leaf(ref, x):
      raise ValueError(_differs(path, names[0], name, _describe(ref), _describe(x)))
  if traced:  # values are known only at run time: compare them there (a host callback that raises)
    jax.debug.callback(functools.partial(_check_equal_on_host, path, tuple(names)), *leaves)
  return ref


def _differs(path: str, name_a: str, name_b: str, a: str, b: str) -> str:
  return (f"integer/bool leaf {path!r} differs between {name_a} ({a}) and {name_b} ({b}); integer and bool leaves "
          f"(step counters, masks) are never averaged. Pass integer_leaves='first', 'last', 'base' or a callable "
          f"(path, leaves) -> leaf to choose one.")


def _check_equal_on_host(path: str, names: tuple, *leaves) -> None:
  """Run-time half of the check for traced integer leaves (under ``jit`` it surfaces as a ``JaxRuntimeError``
  carrying this ``ValueError``'s message)."""
  for name, x in zip(names[1:], leaves[1:]):
    if not np.array_equal(np.asarray(leaves[0]), np.asarray(x)):
      raise ValueError(_differs(path, names[0], name, _describe(leaves[0]), _describe(x)))


def _describe(x) -> str:
  arr = np.asarray(x)
  head = arr.reshape(-1)[:4].tolist()
  return f"{getattr(x, 'dtype', arr.dtype)}{list(arr.shape)} {head}{'...' if arr.size > 4 else ''}"


def _integer_leaves(trees: Sequence[PyTree], names: Sequence[str], rule: IntegerLeaves, *, has_base: bool,
                    selected: Sequence[bool] | None = None) -> dict[int, Any]:
  """``{flat index: merged leaf}`` for every (selected) non-floating leaf of ``trees`` (base first when
  ``has_base``), by :func:`_resolve_integer_leaf`. Raises before any floating work is done."""
  rule = _check_integer_rule(rule, has_base)
  flat, treedef = jax.tree_util.tree_flatten_with_path(trees[0])
  cols = [treedef.flatten_up_to(t) for t in trees]
  out = {}
  for i, (p, x) in enumerate(flat):
    if _is_float(x) or (selected is not None and not selected[i]):
      continue
    out[i] = _resolve_integer_leaf(path_str(p), [c[i] for c in cols], names, rule, has_base)
  return out


def _put_integer_leaves(tree: PyTree, resolved: dict[int, Any]) -> PyTree:
  """``tree`` with the leaves at the flat indices of ``resolved`` replaced (the output of a merge)."""
  if not resolved:
    return tree
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, [resolved.get(i, x) for i, x in enumerate(leaves)])


def _model_names(n: int, name: str = "models", base_name: str | None = None) -> list[str]:
  return ([base_name] if base_name is not None else []) + [f"{name}[{i}]" for i in range(n)]


def _check_weights(weights, n: int, name: str = "weights") -> np.ndarray | jax.Array | None:
  if weights is None:
    return None
  if isinstance(weights, jax.core.Tracer):
    if jnp.shape(weights) != (n,):
      raise ValueError(f"{name} must have shape ({n},), got {jnp.shape(weights)}.")
    return weights
  w = np.asarray(weights, dtype=np.float64)
  if w.shape != (n,):
    raise ValueError(f"{name} must hold one weight per model ({n}), got shape {w.shape}.")
  if not np.all(np.isfinite(w)):
    raise ValueError(f"{name} must be finite, got {w.tolist()}.")
  return w


def _selected(tree: PyTree, include: str | None, exclude: str | None) -> list[bool]:
  return jax.tree.leaves(path_mask(tree, include, exclude))


def _map_leaves(fn: Callable, trees: Sequence[PyTree], include: str | None = None, exclude: str | None = None,
                passthrough: int = 0, *, names: Sequence[str] | None = None,
                integer_leaves: IntegerLeaves = "error") -> PyTree:
  """``fn(*leaves)`` on floating leaves selected by the path filter; selected integer/bool leaves follow
  ``integer_leaves`` (see the module docstring); unselected leaves come from ``trees[passthrough]``."""
  trees = [_scalars_as_arrays(t) for t in trees]
  names = names if names is not None else _model_names(len(trees))
  treedef = jax.tree.structure(trees[0])
  leaves = [treedef.flatten_up_to(t) for t in trees]
  mask = _selected(trees[0], include, exclude)
  ints = _integer_leaves(trees, names, integer_leaves, has_base=False, selected=mask)
  out = [fn(*ls) if (m and _is_float(ls[0])) else ints.get(j, ls[passthrough])
         for j, (m, *ls) in enumerate(zip(mask, *leaves))]
  return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------------------------
# means and interpolation


def weighted_average(models: Sequence[PyTree], weights: Sequence[float] | jax.Array | None = None, *,
                     normalize: bool = True, include: str | None = None, exclude: str | None = None,
                     integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Weighted mean ``sum_i w_i theta_i / sum_i w_i`` of models with one architecture, leaf by leaf.

  The plain average of weights is the merge studied by Wortsman et al., "Model soups" (arXiv:2203.05482, eq. for
  the uniform soup) and FedAvg's aggregation (McMahan et al., arXiv:1602.05629).

  Args:
    models: non-empty sequence of pytrees with identical structure and shapes.
    weights: one weight per model (default: uniform). May be a traced array (differentiable mixing weights).
    normalize: divide by ``sum(weights)``; with ``False`` the result is ``sum_i w_i theta_i``.
    include, exclude: regex path filters (on ``/``-joined key paths); unselected leaves come from ``models[0]``.
    integer_leaves: integer/bool leaves are never averaged: equal across models -> kept, different ->
      ``ValueError`` naming the path (default ``"error"``), or ``"first"``, ``"last"`` or a callable
      ``(path, leaves) -> leaf`` (see the module docstring).

  Returns:
    A pytree like ``models[0]``, each leaf in its input dtype.
  """
  models = _check_models(models)
  n = len(models)
  w = _check_weights(weights, n)
  if w is None:
    w = np.full((n,), 1.0 / n) if normalize else np.ones((n,))
  elif normalize:
    if not isinstance(w, jax.core.Tracer) and abs(float(np.sum(w))) < 1e-12:
      raise ValueError(f"weights must not sum to zero when normalize=True, got {np.asarray(w).tolist()}.")
    w = w / jnp.sum(w) if isinstance(w, jax.core.Tracer) else w / w.sum()

  def leaf(*xs):
    ct = _compute_dtype(xs[0].dtype)
    acc = sum(jnp.asarray(wi, ct) * x.astype(ct) for wi, x in zip(w, xs))
    return acc.astype(xs[0].dtype)

  return _map_leaves(leaf, models, include, exclude, integer_leaves=integer_leaves)


def uniform_average(models: Sequence[PyTree], *, include: str | None = None, exclude: str | None = None,
                    integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Uniform mean of models (:func:`weighted_average` with equal weights); see Wortsman et al., arXiv:2203.05482."""
  return weighted_average(models, None, include=include, exclude=exclude, integer_leaves=integer_leaves)


def interpolate(a: PyTree, b: PyTree, alpha: float | jax.Array, *, include: str | None = None,
                exclude: str | None = None, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Linear interpolation ``(1 - alpha) * a + alpha * b``.

  Backward-compatible weight interpolation (BCWI; Schumann et al., "Backward Compatibility During Data Updates by
  Weight Interpolation", arXiv:2301.10546, eq. 2) deploys this between an old model ``a`` and its update ``b`` and
  picks ``alpha`` on validation data to cut negative flips (see :func:`negative_flip_rate`). ``alpha=0`` returns
  ``a``; ``alpha=1`` returns ``b``. ``alpha`` outside [0, 1] extrapolates. Integer/bool leaves follow
  ``integer_leaves`` (``"first"`` is ``a``'s, ``"last"`` ``b``'s; see the module docstring).
  """
  check_same_structure([a, b], ["a", "b"])

  def leaf(x, y):
    ct = _compute_dtype(x.dtype)
    al = jnp.asarray(alpha, ct)
    return ((1 - al) * x.astype(ct) + al * y.astype(ct)).astype(x.dtype)

  return _map_leaves(leaf, [a, b], include, exclude, names=["a", "b"], integer_leaves=integer_leaves)


def negative_flip_rate(pred_old: jax.Array, pred_new: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of examples the old model classifies correctly and the new one does not (Schumann et al.,
  arXiv:2301.10546, NFR definition; Yan et al., arXiv:2011.09161)."""
  pred_old, pred_new, labels = map(jnp.asarray, (pred_old, pred_new, labels))
  if not pred_old.shape == pred_new.shape == labels.shape:
    raise ValueError(f"pred_old, pred_new and labels must share a shape, got {pred_old.shape}, {pred_new.shape}, "
                     f"{labels.shape}.")
  return jnp.mean((pred_old == labels) & (pred_new != labels))


def _slerp_leaf(a, b, t, dot_threshold: float, eps: float, axis: int | None):
  ct = _compute_dtype(a.dtype)
  x, y = a.astype(ct), b.astype(ct)
  if axis is None:
    xs, ys = x.reshape(1, -1), y.reshape(1, -1)
  else:
    xs = jnp.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    ys = jnp.moveaxis(y, axis, 0).reshape(y.shape[axis], -1)
  na = jnp.linalg.norm(xs, axis=1, keepdims=True)
  nb = jnp.linalg.norm(ys, axis=1, keepdims=True)
  na = jnp.where(na > eps, na, 1.0)
  nb = jnp.where(nb > eps, nb, 1.0)
  dot = jnp.clip(jnp.sum((xs / na) * (ys / nb), axis=1, keepdims=True), -1.0, 1.0)
  # (Anti)collinear directions have no unique great circle: fall back to the linear path there.
  linear = jnp.abs(dot) > dot_threshold
  theta = jnp.arccos(jnp.where(linear, 0.0, dot))
  sin_theta = jnp.where(linear, 1.0, jnp.sin(theta))
  t = jnp.asarray(t, ct)
  ca = jnp.where(linear, 1 - t, jnp.sin((1 - t) * theta) / sin_theta)
  cb = jnp.where(linear, t, jnp.sin(t * theta) / sin_theta)
  out = ca * xs + cb * ys
  if axis is None:
    return out.reshape(a.shape).astype(a.dtype)
  moved = jnp.moveaxis(x, axis, 0).shape
  return jnp.moveaxis(out.reshape(moved), 0, axis).astype(a.dtype)


def slerp(a: PyTree, b: PyTree, t: float | jax.Array = 0.5, *, dot_threshold: float = 0.9995, eps: float = 1e-8,
          axis: int | None = None, include: str | None = None, exclude: str | None = None,
          integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Spherical linear interpolation between two models, leaf by leaf.

  Shoemake, "Animating rotation with quaternion curves" (SIGGRAPH 1985), as used for model merging by mergekit
  (Goddard et al., arXiv:2403.13257): with ``cos(theta) = <a/|a|, b/|b|>``,
  ``slerp = sin((1-t) theta)/sin(theta) * a + sin(t theta)/sin(theta) * b``; where ``|cos(theta)| >
  dot_threshold`` the linear interpolation ``(1-t) a + t b`` is used instead.

  Args:
    a, b: pytrees of one structure; ``t=0`` gives ``a``, ``t=1`` gives ``b``.
    t: interpolation factor (float or traced scalar).
    dot_threshold: above this ``|cos|`` fall back to linear interpolation (mergekit's default 0.9995).
    eps: norms below ``eps`` are treated as 1.
    axis: ``None`` (default, mergekit's ``slerp``: each leaf is flattened and interpolated as one vector) or an
      int that interpolates every slice along that axis separately (e.g. ``axis=-1`` on a Flax ``(in, out)``
      kernel: one great circle per output unit; not what mergekit does). 0-d leaves are always one vector.
    include, exclude: path filters; unselected leaves come from ``a``.
    integer_leaves: policy for integer/bool leaves (default ``"error"`` when they differ; ``"first"`` is ``a``'s,
      ``"last"`` ``b``'s; see the module docstring). mergekit refuses non-floating tensors in ``slerp``.
  """
  check_same_structure([a, b], ["a", "b"])
  _checks.check_range("dot_threshold", dot_threshold, 0.0, 1.0)
  _checks.check_non_negative("eps", eps)

  def leaf(x, y):
    ax = axis if (axis is not None and x.ndim > 0) else None
    if ax is not None and not -x.ndim <= ax < x.ndim:
      raise ValueError(f"axis must index a dimension of every selected leaf, got {axis} for shape {x.shape}.")
    return _slerp_leaf(x, y, t, dot_threshold, eps, ax)

  return _map_leaves(leaf, [a, b], include, exclude, names=["a", "b"], integer_leaves=integer_leaves)


# ----------------------------------------------------------------------------------------------------------------
# EMA


class EMAState(NamedTuple):
  """Exponential moving average of parameters: ``ema`` (same tree as the params) and ``count`` (updates taken)."""

  ema: PyTree
  count: jax.Array


def ema_init(params: PyTree) -> EMAState:
  """Start an EMA at ``params`` (Polyak & Juditsky 1992; the EMA of weights used by e.g. Tarvainen & Valpola,
  "Mean teachers", arXiv:1703.01780, eq. 1)."""
  return EMAState(jax.tree.map(jnp.asarray, params), jnp.zeros((), jnp.int32))


def ema_update(state: EMAState, params: PyTree, decay: float | jax.Array = 0.999, *,
               integer_leaves: IntegerLeaves = "error") -> EMAState:
  """``ema <- decay * ema + (1 - decay) * params`` (arXiv:1703.01780, eq. 1). Jittable; ``decay`` in [0, 1].

  Integer/bool leaves follow ``integer_leaves`` (see the module docstring): ``"last"`` takes ``params``' (e.g. a
  step counter), ``"first"`` keeps the EMA's; the default raises when they differ (and under ``jit`` when traced)."""
  _checks.check_range("decay", decay, 0.0, 1.0)
  check_same_structure([state.ema, params], ["state.ema", "params"])

  def leaf(e, p):
    ct = _compute_dtype(e.dtype)
    d = jnp.asarray(decay, ct)
    return (d * e.astype(ct) + (1 - d) * p.astype(ct)).astype(e.dtype)

  return EMAState(_map_leaves(leaf, [state.ema, params], passthrough=1, names=["state.ema", "params"],
                              integer_leaves=integer_leaves), state.count + 1)


# ----------------------------------------------------------------------------------------------------------------
# SWA


class SWAState(NamedTuple):
  """Stochastic weight averaging: the running ``mean`` of snapshots and how many (``n``) went into it."""

  mean: PyTree
  n: jax.Array


def swa_init(params: PyTree) -> SWAState:
  """Empty SWA average shaped like ``params`` (``n = 0``; the first :func:`swa_update` copies its snapshot).

  Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", arXiv:1803.05407, Alg. 1.
  """
  return SWAState(jax.tree.map(jnp.asarray, params), jnp.zeros((), jnp.int32))


def swa_update(state: SWAState, params: PyTree, *, integer_leaves: IntegerLeaves = "error") -> SWAState:
  """``w_swa <- (n w_swa + w) / (n + 1)`` (arXiv:1803.05407, Alg. 1). Jittable; call it at each cycle end.

  Integer/bool leaves follow ``integer_leaves`` as in :func:`ema_update` (``"last"``: ``params``')."""
  check_same_structure([state.mean, params], ["state.mean", "params"])
  n = state.n

  def leaf(m, p):
    ct = _compute_dtype(m.dtype)
    nf = n.astype(ct)
    return ((nf * m.astype(ct) + p.astype(ct)) / (nf + 1)).astype(m.dtype)

  return SWAState(_map_leaves(leaf, [state.mean, params], passthrough=1, names=["state.mean", "params"],
                              integer_leaves=integer_leaves), n + 1)


def swa_schedule(base_schedule: Callable[[jax.Array], jax.Array] | float, start_step: int, swa_lr: float, *,
                 cycle: int | None = None, min_lr: float | None = None) -> Callable[[jax.Array], jax.Array]:
  """Learning-rate schedule for SWA (arXiv:1803.05407, eq. 2): ``base_schedule`` before ``start_step``, then a
  constant ``swa_lr``, or with ``cycle`` a cyclic schedule falling linearly from ``swa_lr`` (alpha_1) to
  ``min_lr`` (alpha_2, default ``swa_lr / 10``) within each cycle of ``cycle`` steps (average at cycle ends)."""
  _checks.check_non_negative("start_step", start_step)
  _checks.check_positive("swa_lr", swa_lr)
  if cycle is not None:
    _checks.check_range("cycle", cycle, 1, None)
  lo = swa_lr / 10 if min_lr is None else _checks.check_non_negative("min_lr", min_lr)
  base = base_schedule if callable(base_schedule) else (lambda step: jnp.asarray(base_schedule, jnp.float32))

  def schedule(step):
    step = jnp.asarray(step)
    if cycle is None:
      swa = jnp.asarray(swa_lr, jnp.float32)
    else:
      phase = (jnp.mod(step - start_step, cycle) + 1) / cycle  # 1/c ... 1
      swa = (1 - phase) * swa_lr + phase * lo
    return jnp.where(step < start_step, base(step), swa)

  return schedule


def bn_update(graphdef, params: PyTree, model_state: PyTree, batches: Iterable[Any]) -> PyTree:
  """Recompute BatchNorm statistics of averaged weights with one pass over data (arXiv:1803.05407, Sec. 3.2).

  Each batch is run through the model in training mode; the per-batch means and variances of every
  ``nnx.BatchNorm`` are averaged with equal weight per batch (a cumulative average, not a momentum update), which is
  what ``torch.optim.swa_utils.update_bn`` does. Host loop over a jitted forward.

  Args:
    graphdef: static half of ``nnx.split(model, nnx.Param, ...)`` (e.g. from ``paperlab.train.make_init``).
    params: the (averaged) parameters, a plain nested dict.
    model_state: the model's other variables as a plain nested dict (``TrainState.model_state``).
    batches: iterable of model inputs ``x`` (or ``(x, y)`` tuples; ``y`` is ignored).

  Returns:
    ``model_state`` with every BatchNorm ``mean``/``var`` replaced; unchanged for a model without BatchNorm.
  """
  from flax import nnx

  model = nnx.merge(graphdef, params, model_state)
  bns = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
  if not bns:
    return model_state
  for m in bns:
    m.momentum = 0.0  # running statistics := this batch's statistics
  gdef, _, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def batch_stats(params, rest, x):
    mdl = nnx.merge(gdef, params, rest)
    mdl.train()
    mdl(x)
    return nnx.to_pure_dict(nnx.split(mdl, nnx.BatchStat, ...)[1])

  total, count = None, 0
  rest_dict = nnx.to_pure_dict(rest)
  for batch in batches:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    stats = batch_stats(params, rest_dict, jnp.asarray(x))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
  if count == 0:
    raise ValueError("batches must yield at least one batch, got none.")
  mean = jax.tree.map(lambda s: s / count, total)

  def merge_dicts(dst, src):
    if not isinstance(dst, dict):
      return src.astype(jnp.result_type(dst))
    return {k: (merge_dicts(v, src[k]) if k in src else v) for k, v in dst.items()}

  return merge_dicts(model_state, mean)


# ----------------------------------------------------------------------------------------------------------------
# LAWA


class LAWAState(NamedTuple):
  """Ring buffer of the ``k`` latest checkpoints, stacked on a leading axis of every leaf, and the number of
  checkpoints pushed so far (``count``)."""

  buffer: PyTree
  count: jax.Array


def lawa_init(params: PyTree, k: int) -> LAWAState:
  """Empty LAWA buffer for ``k`` checkpoints shaped like ``params`` (Kaddour, "Stop Wasting My Time! Saving Days of
  ImageNet and BERT Training with Latest Weight Averaging", arXiv:2209.14981, Sec. 2). Memory: ``k`` x params."""
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}.")
  return LAWAState(jax.tree.map(lambda p: jnp.zeros((int(k),) + jnp.shape(p), jnp.result_type(p)), params),
                   jnp.zeros((), jnp.int32))


def lawa_update(state: LAWAState, params: PyTree) -> LAWAState:
  """Push a checkpoint (e.g. at an epoch end), overwriting the oldest once the buffer is full. Jittable."""
  check_same_structure([jax.tree.map(lambda b: b[0], state.buffer), params], ["state.buffer", "params"])
  k = jax.tree.leaves(state.buffer)[0].shape[0]
  slot = jnp.mod(state.count, k)
  buf = jax.tree.map(lambda b, p: jax.lax.dynamic_update_index_in_dim(b, jnp.asarray(p, b.dtype), slot, 0),
                     state.buffer, params)
  return LAWAState(buf, state.count + 1)


def lawa_params(state: LAWAState, *, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Uniform mean of the ``min(count, k)`` latest checkpoints (arXiv:2209.14981, eq. 1). Jittable.

  The average is for evaluation only; LAWA never feeds it back into training. Integer/bool leaves of the
  averaged checkpoints follow ``integer_leaves`` (see the module docstring; ``"last"`` is the latest checkpoint's,
  ``"first"`` the oldest averaged one's); under ``jit`` the default compares them at run time."""
  k = jax.tree.leaves(state.buffer)[0].shape[0]
  filled = jnp.minimum(state.count, k)
  valid = jnp.arange(k) < filled
  rule = _check_integer_rule(integer_leaves, has_base=False)
  flat = jax.tree_util.tree_flatten_with_path(state.buffer)[0]
  ints = {}
  for j, (p, b) in enumerate(flat):
    if _is_float(b):
      continue
    if isinstance(rule, str) and rule in ("first", "last"):
      oldest = jnp.mod(state.count - filled, k)
      ints[j] = b[jnp.mod(state.count - 1, k) if rule == "last" else oldest]
      continue
    if isinstance(state.count, jax.core.Tracer) and rule == "error":
      latest = b[jnp.mod(state.count - 1, k)]
      # a traced count: compare the filled slots with the latest at run time
      versions = [latest] + [jnp.where(valid[i], b[i], latest) for i in range(k)]
    else:
      order = [(int(state.count) - int(filled) + i) % k for i in range(max(int(filled), 1))]
      versions = [b[i] for i in order]
    ints[j] = _resolve_integer_leaf(path_str(p), versions, [f"checkpoint {i}" for i in range(len(versions))], rule,
                                    False)

  def leaf(b):
    if not jnp.issubdtype(b.dtype, jnp.floating):
      return b  # replaced below
    ct = _compute_dtype(b.dtype)
    w = valid.astype(ct) / jnp.maximum(filled, 1).astype(ct)
    return jnp.tensordot(w, b.astype(ct), axes=1).astype(b.dtype)

  return _put_integer_leaves(jax.tree.map(leaf, state.buffer), ints)


def latest_average(checkpoints: Sequence[PyTree], k: int, *, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Offline LAWA: the uniform mean of the last ``k`` of ``checkpoints`` (oldest first; arXiv:2209.14981, eq. 1).
  Integer/bool leaves follow ``integer_leaves`` (see the module docstring; ``"last"``: the latest checkpoint's)."""
  checkpoints = _check_models(checkpoints, "checkpoints")
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}.")
  return uniform_average(checkpoints[-int(k):], integer_leaves=integer_leaves)
