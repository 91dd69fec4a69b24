"""Weight averaging on parameter pytrees: uniform/weighted means, interpolation, SLERP, EMA, SWA (with a BatchNorm
statistics pass), LAWA.

Every function takes and returns pytrees (plain nested dicts or ``nnx.State``), works leaf by leaf through
``jax.tree.map`` (so a large model streams tensor by tensor), accumulates in float32 (float64 stays float64) and
returns each leaf in its input dtype. Non-floating leaves (step counters, integer buffers) are taken from the first
model unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab._tree import check_same_structure, path_mask

PyTree = Any

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
  """Non-empty list of pytrees with the structure and shapes of the first one (and of ``base``)."""
  if isinstance(models, dict) or not isinstance(models, (list, tuple)):
    raise TypeError(f"{name} must be a list or tuple of pytrees, got {type(models).__name__}.")
  models = list(models)
  if not models:
    raise ValueError(f"{name} must hold at least one model, got an empty sequence.")
  trees = ([base] if base is not None else []) + models
  names = ([base_name] if base is not None else []) + [f"{name}[{i}]" for i in range(len(models))]
  check_same_structure(trees, names)
  return models


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
                passthrough: int = 0) -> PyTree:
  """``fn(*leaves)`` on floating leaves selected by the path filter; other leaves come from ``trees[passthrough]``."""
  treedef = jax.tree.structure(trees[0])
  leaves = [treedef.flatten_up_to(t) for t in trees]
  mask = _selected(trees[0], include, exclude)
  out = [fn(*ls) if (m and _is_float(ls[0])) else ls[passthrough] for m, *ls in zip(mask, *leaves)]
  return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------------------------------------------
# means and interpolation


def weighted_average(models: Sequence[PyTree], weights: Sequence[float] | jax.Array | None = None, *,
                     normalize: bool = True, include: str | None = None, exclude: str | None = None) -> PyTree:
  """Weighted mean ``sum_i w_i theta_i / sum_i w_i`` of models with one architecture, leaf by leaf.

  The plain average of weights is the merge studied by Wortsman et al., "Model soups" (arXiv:2203.05482, eq. for
  the uniform soup) and FedAvg's aggregation (McMahan et al., arXiv:1602.05629).

  Args:
    models: non-empty sequence of pytrees with identical structure and shapes.
    weights: one weight per model (default: uniform). May be a traced array (differentiable mixing weights).
    normalize: divide by ``sum(weights)``; with ``False`` the result is ``sum_i w_i theta_i``.
    include, exclude: regex path filters (on ``/``-joined key paths); unselected leaves come from ``models[0]``.

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

  return _map_leaves(leaf, models, include, exclude)


def uniform_average(models: Sequence[PyTree], **kwargs) -> PyTree:
  """Uniform mean of models (:func:`weighted_average` with equal weights); see Wortsman et al., arXiv:2203.05482."""
  return weighted_average(models, None, **kwargs)


def interpolate(a: PyTree, b: PyTree, alpha: float | jax.Array, *, include: str | None = None,
                exclude: str | None = None) -> PyTree:
  """Linear interpolation ``(1 - alpha) * a + alpha * b``.

  Backward-compatible weight interpolation (BCWI; Schumann et al., "Backward Compatibility During Data Updates by
  Weight Interpolation", arXiv:2301.10546, eq. 2) deploys this between an old model ``a`` and its update ``b`` and
  picks ``alpha`` on validation data to cut negative flips (see :func:`negative_flip_rate`). ``alpha=0`` returns
  ``a``; ``alpha=1`` returns ``b``. ``alpha`` outside [0, 1] extrapolates.
  """
  check_same_structure([a, b], ["a", "b"])

  def leaf(x, y):
    ct = _compute_dtype(x.dtype)
    al = jnp.asarray(alpha, ct)
    return ((1 - al) * x.astype(ct) + al * y.astype(ct)).astype(x.dtype)

  return _map_leaves(leaf, [a, b], include, exclude)


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
          axis: int | None = None, include: str | None = None, exclude: str | None = None) -> PyTree:
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
    axis: ``None`` interpolates each leaf as one vector; an int interpolates every slice along that axis
      separately (``axis=0`` on a PyTorch ``(out, in)`` weight or ``axis=-1`` on a Flax ``(in, out)`` kernel is
      per output unit, mergekit's behaviour). 0-d leaves are always treated as one vector.
    include, exclude: path filters; unselected leaves come from ``a``.
  """
  check_same_structure([a, b], ["a", "b"])
  _checks.check_range("dot_threshold", dot_threshold, 0.0, 1.0)
  _checks.check_non_negative("eps", eps)

  def leaf(x, y):
    ax = axis if (axis is not None and x.ndim > 0) else None
    if ax is not None and not -x.ndim <= ax < x.ndim:
      raise ValueError(f"axis must index a dimension of every selected leaf, got {axis} for shape {x.shape}.")
    return _slerp_leaf(x, y, t, dot_threshold, eps, ax)

  return _map_leaves(leaf, [a, b], include, exclude)


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


def ema_update(state: EMAState, params: PyTree, decay: float | jax.Array = 0.999) -> EMAState:
  """``ema <- decay * ema + (1 - decay) * params`` (arXiv:1703.01780, eq. 1). Jittable; ``decay`` in [0, 1]."""
  _checks.check_range("decay", decay, 0.0, 1.0)
  check_same_structure([state.ema, params], ["state.ema", "params"])

  def leaf(e, p):
    ct = _compute_dtype(e.dtype)
    d = jnp.asarray(decay, ct)
    return (d * e.astype(ct) + (1 - d) * p.astype(ct)).astype(e.dtype)

  return EMAState(_map_leaves(leaf, [state.ema, params], passthrough=1), state.count + 1)


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


def swa_update(state: SWAState, params: PyTree) -> SWAState:
  """``w_swa <- (n w_swa + w) / (n + 1)`` (arXiv:1803.05407, Alg. 1). Jittable; call it at each cycle end."""
  check_same_structure([state.mean, params], ["state.mean", "params"])
  n = state.n

  def leaf(m, p):
    ct = _compute_dtype(m.dtype)
    nf = n.astype(ct)
    return ((nf * m.astype(ct) + p.astype(ct)) / (nf + 1)).astype(m.dtype)

  return SWAState(_map_leaves(leaf, [state.mean, params], passthrough=1), n + 1)


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


def lawa_params(state: LAWAState) -> PyTree:
  """Uniform mean of the ``min(count, k)`` latest checkpoints (arXiv:2209.14981, eq. 1). Jittable.

  The average is for evaluation only; LAWA never feeds it back into training."""
  k = jax.tree.leaves(state.buffer)[0].shape[0]
  filled = jnp.minimum(state.count, k)
  valid = jnp.arange(k) < filled

  def leaf(b):
    if not jnp.issubdtype(b.dtype, jnp.floating):
      return b[jnp.mod(state.count - 1, k)]
    ct = _compute_dtype(b.dtype)
    w = valid.astype(ct) / jnp.maximum(filled, 1).astype(ct)
    return jnp.tensordot(w, b.astype(ct), axes=1).astype(b.dtype)

  return jax.tree.map(leaf, state.buffer)


def latest_average(checkpoints: Sequence[PyTree], k: int) -> PyTree:
  """Offline LAWA: the uniform mean of the last ``k`` of ``checkpoints`` (oldest first; arXiv:2209.14981, eq. 1)."""
  checkpoints = _check_models(checkpoints, "checkpoints")
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}.")
  return uniform_average(checkpoints[-int(k):])
