"""Model soups: uniform and greedy soups, DiWA, Model Stock, and BCWI's interpolation-coefficient search.

Soups average models fine-tuned from one shared initialization. Greedy selection is a host loop (it calls a
user-supplied evaluation function); the averages themselves are per-leaf and jittable.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import _checks, train
from paperlab.merge.averaging import (IntegerLeaves, _check_models, _compute_dtype, _integer_leaves, _is_float,
                                     _model_names, _put_integer_leaves, _selected, interpolate, uniform_average)

PyTree = Any

__all__ = ["uniform_soup", "greedy_soup", "diwa", "model_stock", "bcwi_select", "finetune_grid"]


def finetune_grid(graphdef: nnx.GraphDef, params: PyTree, model_state: PyTree, data: tuple[jax.Array, jax.Array],
                  hparams: jax.Array, keys: jax.Array, *, num_steps: int, batch_size: int,
                  num_checkpoints: int = 1, params_axis: int | None = None) -> PyTree:
  """Fine-tune one model per row of ``hparams`` from ``params``: the ingredient recipe of model soups (Wortsman et
  al., arXiv:2203.05482, Sec. 3: a grid over learning rate, weight decay, label smoothing and augmentation) and of
  DiWA (Ramé et al., arXiv:2205.09739, Sec. 4: random hyperparameters from a shared linear-probed init).

  Row ``k = (learning_rate, weight_decay, label_smoothing, input_noise)`` trains with ``optax.adamw(learning_rate,
  weight_decay=weight_decay)`` on softmax cross-entropy against ``optax.smooth_labels(one_hot(y), label_smoothing)``
  of inputs plus ``input_noise * N(0, 1)`` (Gaussian input augmentation); batches and noise come from ``keys[k]``
  (:func:`paperlab.train.run_steps`). All rows run as one vmapped, jitted program.

  Args:
    graphdef, model_state: the model's ``nnx.split`` parts (``paperlab.train.make_init``).
    params: initial parameters, shared by every row (``params_axis=None``) or stacked along ``params_axis``.
    data: ``(x, y)`` training arrays with integer labels.
    hparams: ``(K, 4)`` array of rows as above.
    keys: ``(K,)`` PRNG keys, one per row.
    num_steps, batch_size: optimizer steps and batch size of every row.
    num_checkpoints: ``C >= 1`` evenly spaced checkpoints to return (the last is the final model);
      ``num_steps`` must be a multiple of it. Checkpointing does not change the trajectory.

  Returns:
    The fine-tuned parameters stacked along a leading ``K`` axis, with a second ``C`` axis of checkpoints when
    ``num_checkpoints > 1``.
  """
  hparams = jnp.asarray(hparams, jnp.float32)
  if hparams.ndim != 2 or hparams.shape[1] != 4:
    raise ValueError(f"hparams must have shape (K, 4) (learning_rate, weight_decay, label_smoothing, input_noise), "
                     f"got {hparams.shape}.")
  if keys.shape[:1] != hparams.shape[:1]:
    raise ValueError(f"keys must hold one key per hparams row ({hparams.shape[0]}), got shape {keys.shape}.")
  for name, v in (("num_steps", num_steps), ("batch_size", batch_size), ("num_checkpoints", num_checkpoints)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}.")
  if num_steps % num_checkpoints:
    raise ValueError(f"num_steps ({num_steps}) must be a multiple of num_checkpoints ({num_checkpoints}).")
  x, y = data

  def one(p0, h, k):
    lr, wd, ls, noise = h[0], h[1], h[2], h[3]
    opt = optax.adamw(lr, weight_decay=wd)

    def loss_fn(model, batch, rng):
      bx, by = batch
      logits = model(bx + noise * jax.random.normal(rng, bx.shape))
      targets = optax.smooth_labels(jax.nn.one_hot(by, logits.shape[-1]), ls)
      return optax.softmax_cross_entropy(logits, targets).mean()

    step = train.make_train_step(graphdef, loss_fn, opt)
    state = train.TrainState(jnp.zeros((), jnp.int32), p0, model_state, opt.init(p0))
    seg = num_steps // num_checkpoints
    if num_checkpoints == 1:
      return train.run_steps(step, state, (x, y), k, batch_size=batch_size, num_steps=seg)[0].params

    def body(s, _):
      s = train.run_steps(step, s, (x, y), k, batch_size=batch_size, num_steps=seg)[0]
      return s, s.params

    return jax.lax.scan(body, state, None, length=num_checkpoints)[1]

  return jax.jit(jax.vmap(one, in_axes=(params_axis, 0, 0)))(params, hparams, keys)


def uniform_soup(models: Sequence[PyTree], *, include: str | None = None, exclude: str | None = None,
                 integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Uniform soup: the mean of all ingredients (Wortsman et al., "Model soups: averaging weights of multiple
  fine-tuned models improves accuracy without increasing inference time", arXiv:2203.05482, Sec. 3,
  ``f(x, 1/k sum_i theta_i)``). A soup of identical models is that model. Integer/bool leaves follow
  ``integer_leaves`` (see :mod:`paperlab.merge.averaging`: equal -> kept, different -> ``ValueError``)."""
  return uniform_average(models, include=include, exclude=exclude, integer_leaves=integer_leaves)


def greedy_soup(models: Sequence[PyTree], eval_fn: Callable[[PyTree], float], *,
                order: Sequence[int] | None = None, integer_leaves: IntegerLeaves = "error"
                ) -> tuple[PyTree, list[int]]:
  """Greedy soup (arXiv:2203.05482, Recipe 1): sort ingredients by held-out score (descending), start from the
  best, and add each next ingredient iff the score of the averaged soup does not decrease.

  Host loop over ``eval_fn`` calls; it keeps a running float32 sum and a count (memory 2x params, not k x).

  Args:
    models: non-empty list of ingredients fine-tuned from one initialization.
    eval_fn: ``params -> float``, higher is better (held-out accuracy); never the test set.
    order: visiting order (indices into ``models``); default: by ``eval_fn`` of each ingredient, best first.
    integer_leaves: integer/bool leaves are resolved over all ingredients before the search (equal -> kept,
      different -> ``ValueError`` naming the path; or ``"first"``, ``"last"``, a callable; see
      :mod:`paperlab.merge.averaging`).

  Returns:
    ``(soup, selected)``: the soup and the indices of its ingredients in the order they were added. By
    construction ``eval_fn(soup) >= eval_fn(models[selected[0]])``.
  """
  models = _check_models(models)
  n = len(models)
  ints = _integer_leaves(models, _model_names(n), integer_leaves, has_base=False)
  if order is None:
    scores = [float(eval_fn(m)) for m in models]
    order = [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")]
  else:
    order = [int(i) for i in order]
    if sorted(set(order)) != sorted(order) or any(not 0 <= i < n for i in order) or not order:
      raise ValueError(f"order must be a non-empty list of distinct indices in [0, {n}), got {order}.")

  def to_acc(m):
    return jax.tree.map(lambda x: x.astype(_compute_dtype(x.dtype)) if _is_float(x) else x, m)

  first = order[0]
  total = to_acc(models[first])
  count = 1
  add = jax.jit(lambda t, m: jax.tree.map(lambda a, x: a + x.astype(a.dtype) if _is_float(a) else a, t, m))
  mean = jax.jit(lambda t, c, like: jax.tree.map(
      lambda a, x: (a / c).astype(x.dtype) if _is_float(a) else x, t, like))
  soup = _put_integer_leaves(models[first], ints)
  best = float(eval_fn(soup))
  selected = [first]
  for i in order[1:]:
    cand_total = add(total, models[i])
    cand = _put_integer_leaves(mean(cand_total, jnp.asarray(count + 1, jnp.float32), models[first]), ints)
    score = float(eval_fn(cand))
    if score >= best:
      total, count, soup, best = cand_total, count + 1, cand, score
      selected.append(i)
  return soup, selected


def diwa(models: Sequence[PyTree], eval_fn: Callable[[PyTree], float] | None = None, *,
         integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Diverse Weight Averaging (Ramé et al., "Diverse Weight Averaging for Out-of-Distribution Generalization",
  arXiv:2205.09739, Sec. 2.1, eq. 1): the uniform mean of models fine-tuned from one shared (linear-probed)
  initialization with diverse hyperparameters; with ``eval_fn`` the greedy "DiWA-restricted" variant
  (:func:`greedy_soup`). Returns the averaged parameters; integer/bool leaves follow ``integer_leaves``."""
  if eval_fn is None:
    return uniform_soup(models, integer_leaves=integer_leaves)
  return greedy_soup(models, eval_fn, integer_leaves=integer_leaves)[0]


@functools.partial(jax.jit, static_argnames=("rows", "return_ratio"))
def _stock_leaf(w0, ws, rows, return_ratio):
  """Model Stock on one leaf; ``rows=None``: one ratio for the whole leaf, else one per index of axis ``rows``."""
  ct = _compute_dtype(w0.dtype)
  k = len(ws)
  b = w0.astype(ct)
  if rows is None:
    flat = lambda x: x.reshape(1, -1)
  else:
    flat = lambda x: jnp.moveaxis(x, rows, 0).reshape(x.shape[rows], -1)
  offs = [flat(w.astype(ct) - b) for w in ws]
  norms = [jnp.linalg.norm(o, axis=1) for o in offs]
  cos = []
  for i in range(k):
    for j in range(i + 1, k):
      c = jnp.sum(offs[i] * offs[j], axis=1) / jnp.maximum(norms[i] * norms[j], 1e-6)
      cos.append(jnp.clip(c, -1.0, 1.0))
  cos = sum(cos) / len(cos)
  den = 1 + (k - 1) * cos
  singular = jnp.abs(den) < 1e-6  # no finite estimate: keep the base there
  t = jnp.where(singular, 0.0, k * cos / jnp.where(singular, 1.0, den))
  avg = sum(w.astype(ct) for w in ws) / k
  if rows is None:
    t = t.reshape(())
    tb = t
  else:
    tb = t.reshape([-1 if a == rows % w0.ndim else 1 for a in range(w0.ndim)])
  out = (tb * avg + (1 - tb) * b).astype(w0.dtype)
  return (out, t) if return_ratio else out


_LAYOUTS = ("flax", "torch")


def model_stock(base: PyTree, finetuned: Sequence[PyTree], *, filter_wise: bool = False, layout: str = "flax",
                return_ratios: bool = False, include: str | None = None, exclude: str | None = None,
                integer_leaves: IntegerLeaves = "error") -> PyTree | tuple[PyTree, PyTree]:
  """Model Stock (Jang et al., "Model Stock: All we need is just a few fine-tuned models", arXiv:2403.19522,
  eq. 6-7), per layer: with ``cos`` the mean pairwise cosine between the task vectors ``w_i - w_0``,
  ``t = k cos / (1 + (k - 1) cos)`` and ``w_H = t * mean_i(w_i) + (1 - t) * w_0``. The default (one ratio per
  leaf) is the paper's per-layer rule and mergekit's ``model_stock``.

  Args:
    base: the pre-trained weights ``w_0``.
    finetuned: ``k >= 2`` fine-tunes of it (the paper uses 2 with different seeds).
    filter_wise: one ratio per output channel (mergekit's ``filter_wise: true``): the angle of each output
      channel's slice (all its input and spatial entries). The output channel is the last axis of a Flax kernel
      (``(in, out)``, ``(h, w, in, out)``) with ``layout="flax"`` and axis 0 of a PyTorch ``(out, in, ...)`` weight
      with ``layout="torch"``. Vectors (biases, norm scales) and scalars are one row: one ratio, never one per
      element. On 2-D weights this is exactly mergekit's ``filter_wise``; for a PyTorch conv weight ``(out, in,
      kh, kw)`` mergekit takes rows along its last axis (one ratio per ``(out, in, kh)``), which is not a filter;
      here a filter is the output channel, i.e. mergekit on the ``(out, in * kh * kw)`` matrix.
    layout: ``"flax"`` (default) or ``"torch"``; used by ``filter_wise`` only.
    return_ratios: also return the pytree of ratios ``t`` (shape ``()`` per leaf, ``(out,)`` per filter-wise
      matrix; ``None`` for leaves that are not merged).
    include, exclude: path filters; unselected leaves are the base's.
    integer_leaves: integer/bool leaves are never averaged: equal across base and fine-tunes -> kept, different
      -> ``ValueError`` naming the path; or ``"first"``, ``"last"``, ``"base"`` or a callable (see
      :mod:`paperlab.merge.averaging`).

  Where ``1 + (k-1) cos`` vanishes (opposed task vectors) the base is kept, as mergekit does.
  """
  finetuned = _check_models(finetuned, "finetuned", base=base)
  if len(finetuned) < 2:
    raise ValueError(f"finetuned must hold at least 2 models for model_stock (angles need pairs), got "
                     f"{len(finetuned)}.")
  if not isinstance(filter_wise, (bool, np.bool_)):
    raise TypeError(f"filter_wise must be a bool, got {filter_wise!r}.")
  _checks.check_choice("layout", layout, _LAYOUTS)
  sel = _selected(base, include, exclude)
  ints = _integer_leaves([base, *finetuned], _model_names(len(finetuned), "finetuned", "base"), integer_leaves,
                         has_base=True, selected=sel)
  leaves, treedef = jax.tree.flatten(base)
  others = [treedef.flatten_up_to(m) for m in finetuned]
  merged, ratios = [], []
  for j, (s, w0) in enumerate(zip(sel, leaves)):
    if s and _is_float(w0):
      w0 = jnp.asarray(w0)
      rows = None if not filter_wise or w0.ndim < 2 else (w0.ndim - 1 if layout == "flax" else 0)
      out, t = _stock_leaf(w0, tuple(jnp.asarray(o[j]) for o in others), rows, True)
    else:
      out, t = ints.get(j, w0), None
    merged.append(out)
    ratios.append(t)
  merged = jax.tree.unflatten(treedef, merged)
  if not return_ratios:
    return merged
  return merged, jax.tree.unflatten(treedef, ratios)


def bcwi_select(old: PyTree, new: PyTree, alphas: Sequence[float], score_fn: Callable[[PyTree], float], *,
                integer_leaves: IntegerLeaves = "error") -> tuple[PyTree, float, list[float]]:
  """Backward-compatible weight interpolation (Schumann et al., arXiv:2301.10546, Sec. 3): evaluate
  ``interpolate(old, new, alpha)`` for every ``alpha`` and return the best by ``score_fn`` (e.g. validation
  accuracy minus a negative-flip penalty, see :func:`paperlab.merge.negative_flip_rate`). Host loop.

  Returns ``(params, alpha, scores)``. Integer/bool leaves follow ``integer_leaves`` as in :func:`interpolate`."""
  alphas = [float(a) for a in alphas]
  if not alphas:
    raise ValueError("alphas must hold at least one value, got an empty sequence.")
  for a in alphas:
    _checks.check_range("alphas[i]", a, 0.0, 1.0)
  mix = lambda a: interpolate(old, new, a, integer_leaves=integer_leaves)
  scores = [float(score_fn(mix(a))) for a in alphas]
  best = int(np.argmax(scores))
  return mix(alphas[best]), alphas[best], scores
