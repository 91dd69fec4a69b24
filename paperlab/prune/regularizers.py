"""HyperSparse regularization for Adaptive Regularized Training (ART).

Glandorf et al., "HyperSparse Neural Networks: Shifting Exploration to Exploitation through Adaptive
Regularization", arXiv:2308.07163, eq. 5-7; transcribed from the official code (GreenAutoML4FAS/HyperSparse at commit
ec945f9, ``loss/HyperSparse.py``, ``hyperSparse`` and ``grad_HS_loss``; defaults from ``utils/arg.py``).

Over all prunable weights ``w`` (concatenated), with ``|w|_(k)`` the magnitude at index ``floor(prune_rate * n)``
of the ascending sort and ``t = 0.6585 / |w|_(k)`` (so ``tanh(t |w|_(k)) ~ 0.577``),

    R_HS(w) = sum_i |w_i| * sum_j tanh(t |w_j|) / sg(sum_j tanh(t |w_j|)) - sum_i |w_i|,

whose value is 0 up to rounding but whose gradient is
``sign(w_i) t / cosh^2(t |w_i|) * sum_j |w_j| / sum_j tanh(t |w_j|)``: small weights are pushed to zero, large ones
(beyond the threshold) barely regularized. ``t`` is a constant of the gradient (``sg``, the official code's
``detach``). ART multiplies the penalty by ``lambda_e = lambda_0 eta^e`` (``lambda_0 = 5e-6``, ``eta = 1.05``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab.prune.masks import apply_masks, magnitude_masks, prunable

PyTree = Any

__all__ = ["HS_CONSTANT", "REGULARIZERS", "hypersparse_penalty", "hypersparse_grad", "l1_penalty", "art_lambda",
           "ARTResult", "art_train"]

REGULARIZERS = ("hypersparse", "l1")

HS_CONSTANT = 0.6585  # tanh(0.6585) = 0.5774


def _prunable_flat(params: PyTree, include, exclude) -> tuple[jax.Array, list[bool]]:
  sel = jax.tree.leaves(prunable(params, include, exclude))
  leaves = jax.tree.leaves(params)
  return jnp.concatenate([x.reshape(-1).astype(jnp.float32) for x, s in zip(leaves, sel) if s]), sel


def _slope(w_abs: jax.Array, prune_rate) -> jax.Array:
  v = _checks._concrete(prune_rate)
  idx = math.floor(v * w_abs.size) if v is not None else jnp.floor(prune_rate * w_abs.size).astype(jnp.int32)
  return HS_CONSTANT / jax.lax.stop_gradient(jnp.sort(w_abs)[idx])


def hypersparse_penalty(params: PyTree, prune_rate: float, *, include: str | None = None,
                        exclude: str | None = None) -> jax.Array:
  """The HyperSparse regularizer ``R_HS`` (module docstring) over the prunable leaves (``ndim >= 2`` by default),
  float32 scalar; differentiate it with ``jax.grad`` (jittable).

  Args:
    params: parameter pytree.
    prune_rate: the target fraction of pruned weights ``kappa``, in ``[0, 1)`` (e.g. 0.98).
    include, exclude: path filter of prunable leaves.
  """
  _checks.check_range("prune_rate", prune_rate, 0.0, 1.0, high_inclusive=False)
  w, _ = _prunable_flat(params, include, exclude)
  w_abs = jnp.abs(w)
  t = _slope(w_abs, prune_rate)
  tanh_sum = jnp.sum(jnp.tanh(t * w_abs))
  return jnp.sum(w_abs * tanh_sum / jax.lax.stop_gradient(tanh_sum) - w_abs)


def hypersparse_grad(params: PyTree, prune_rate: float, *, include: str | None = None,
                     exclude: str | None = None) -> PyTree:
  """The closed-form gradient of :func:`hypersparse_penalty` (the official ``grad_HS_loss``):
  ``sign(w) t / cosh^2(t |w|) * sum |w| / sum tanh(t |w|)`` on prunable leaves, zero elsewhere."""
  _checks.check_range("prune_rate", prune_rate, 0.0, 1.0, high_inclusive=False)
  w, sel = _prunable_flat(params, include, exclude)
  w_abs = jnp.abs(w)
  t = _slope(w_abs, prune_rate)
  g = jnp.sign(w) * t / jnp.cosh(t * w_abs) ** 2 * jnp.sum(w_abs) / jnp.sum(jnp.tanh(t * w_abs))
  leaves, treedef = jax.tree.flatten(params)
  out, start = [], 0
  for x, s in zip(leaves, sel):
    if s:
      out.append(g[start:start + x.size].reshape(x.shape).astype(x.dtype))
      start += x.size
    else:
      out.append(jnp.zeros_like(x))
  return jax.tree.unflatten(treedef, out)


def art_lambda(epoch, lam0: float = 5e-6, eta: float = 1.05) -> jax.Array:
  """ART's regularization weight ``lambda_e = lambda_0 eta^e`` (official defaults ``lambda_init = 5e-6``,
  ``eta = 1.05``), increased every epoch until pruning no longer hurts."""
  _checks.check_positive("lam0", lam0)
  _checks.check_range("eta", eta, 1.0, None, low_inclusive=False)
  return lam0 * jnp.asarray(eta, jnp.float32) ** jnp.asarray(epoch, jnp.float32)


def l1_penalty(params: PyTree, *, include: str | None = None, exclude: str | None = None) -> jax.Array:
  """``sum |w|`` over the prunable leaves, float32 (the official ``lx_loss(p=1)``, ART's L1 baseline)."""
  w, _ = _prunable_flat(params, include, exclude)
  return jnp.sum(jnp.abs(w))


class ARTResult(NamedTuple):
  """What :func:`art_train` returns: the pruned, fine-tuned ``params`` and their keep-``masks``; ``art_epochs``, the
  ART epochs run until the stop rule held (or ``max_art_epochs``); ``terminated``, whether it held;
  ``pruned_train_acc``, the chosen pruned model's train accuracy before fine-tuning."""

  params: PyTree
  masks: PyTree
  art_epochs: jax.Array
  terminated: jax.Array
  pruned_train_acc: jax.Array


def art_train(key: jax.Array, params: PyTree, data: tuple[jax.Array, jax.Array], *,
              loss_fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
              accuracy_fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
              optimizer: optax.GradientTransformation, prune_rate: float, batch_size: int, warmup_epochs: int,
              max_art_epochs: int, finetune_epochs: int, lam0: float = 5e-6, eta: float = 1.05,
              regularizer: str | Callable[[PyTree], jax.Array] = "hypersparse", buffer: int = 1, include: str | None = None,
              exclude: str | None = None) -> ARTResult:
  """Adaptive Regularized Training (ART) with the HyperSparse (or L1) penalty, then magnitude pruning and
  fine-tuning, as the official ``train.py`` / ``utils/art.py`` (GreenAutoML4FAS/HyperSparse, commit ec945f9) run it:

  1. ``warmup_epochs`` of dense training (the official code warms up from scratch, or from a loaded model);
  2. ART epochs ``e = 0, 1, ...``: train on ``loss + art_lambda(e, lam0, eta) * R`` (``R`` the HyperSparse or L1
     penalty at ``prune_rate``); after each epoch prune a copy globally by magnitude to ``prune_rate`` and measure
     its train accuracy; keep the last ``2 buffer + 1`` of these in a buffer; when the buffer's mean beats the best
     so far, the buffer's middle model becomes the best; stop once the best's buffer mean exceeds the epoch's dense
     (running) train accuracy -- pruning no longer hurts -- or after ``max_art_epochs`` (added here: the official
     loop has no cap);
  3. ``finetune_epochs`` of training the best pruned model from a fresh optimizer state with its mask fixed.

  Pure and jittable (epochs are ``lax.scan`` steps; ART epochs after the stop are skipped with ``lax.cond``), so it
  ``vmap``s over seeds and numeric hyperparameters (``lam0``, ``eta``).

  Args:
    key: PRNG key for the batch order.
    params: the (dense) parameters to start from.
    data: ``(x, y)`` training arrays; each epoch takes ``len(x) // batch_size`` shuffled batches.
    loss_fn: ``loss_fn(params, x, y) -> scalar``, the task loss.
    accuracy_fn: ``accuracy_fn(params, x, y) -> scalar``, the stop rule's accuracy.
    optimizer: optax optimizer (official: SGD, momentum 0.9, lr 0.1, weight decay 1e-4).
    prune_rate: target fraction of pruned weights ``kappa`` in ``[0, 1)``.
    batch_size, warmup_epochs, max_art_epochs, finetune_epochs: static ints.
    lam0, eta: the ART schedule (official ``lambda_init = 5e-6``, ``eta = 1.05``).
    regularizer: ``"hypersparse"`` or ``"l1"`` (one of :data:`REGULARIZERS`), or a callable ``params -> scalar``
      penalty (e.g. one that picks between the two with a traced flag, so one compiled program serves both).
    buffer: the official ``size_model_buffer`` (default 1: a buffer of 3 epochs).
    include, exclude: path filter of the prunable leaves (``ndim >= 2`` by default).

  Returns:
    An :class:`ARTResult`.
  """
  _checks.check_range("prune_rate", prune_rate, 0.0, 1.0, high_inclusive=False)
  if not callable(regularizer):
    _checks.check_choice("regularizer", regularizer, REGULARIZERS)
  for name, v, low in (("batch_size", batch_size, 1), ("warmup_epochs", warmup_epochs, 0),
                       ("max_art_epochs", max_art_epochs, 1), ("finetune_epochs", finetune_epochs, 0),
                       ("buffer", buffer, 0)):
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
      raise ValueError(f"{name} must be an int >= {low}, got {v!r}.")
  x, y = jnp.asarray(data[0]), jnp.asarray(data[1])
  if x.shape[0] < batch_size:
    raise ValueError(f"batch_size={batch_size} exceeds the {x.shape[0]} training examples.")
  steps = x.shape[0] // batch_size
  size = 2 * buffer + 1
  if callable(regularizer):
    penalty = regularizer
  elif regularizer == "hypersparse":
    penalty = lambda p: hypersparse_penalty(p, prune_rate, include=include, exclude=exclude)
  else:
    penalty = lambda p: l1_penalty(p, include=include, exclude=exclude)
  ones = jax.tree.map(lambda w: jnp.ones(jnp.shape(w), bool), params)

  def run_epoch(params, opt, ekey, masks, lam, penalize: bool):
    order = jax.random.permutation(ekey, x.shape[0])[:steps * batch_size].reshape(steps, batch_size)

    def step(carry, idx):
      params, opt = carry
      xb, yb = x[idx], y[idx]
      acc = accuracy_fn(params, xb, yb)  # the official running train accuracy, before the update
      # the penalty only in ART epochs: on a pruned model |w|_(kappa) = 0 and R_HS's slope is infinite
      grads = jax.grad(lambda p: loss_fn(p, xb, yb) + (lam * penalty(p) if penalize else 0.0))(params)
      grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros((), g.dtype)), grads, masks)
      updates, opt = optimizer.update(grads, opt, params)
      params = apply_masks(optax.apply_updates(params, updates), masks)
      return (params, opt), acc

    (params, opt), accs = jax.lax.scan(step, (params, opt), order)
    return params, opt, jnp.mean(accs)

  # 1. warmup
  def warm(carry, e):
    params, opt = carry
    params, opt, _ = run_epoch(params, opt, jax.random.fold_in(key, e), ones, 0.0, False)
    return (params, opt), None

  (params, opt), _ = jax.lax.scan(warm, (params, optimizer.init(params)), jnp.arange(warmup_epochs))

  # 2. ART with the official model buffer
  stack = lambda t: jax.tree.map(lambda a: jnp.zeros((size,) + jnp.shape(a), jnp.asarray(a).dtype), t)
  art0 = {"params": params, "opt": opt, "buf_params": stack(params), "buf_masks": stack(ones),
          "buf_acc": jnp.zeros(size), "count": jnp.zeros((), jnp.int32), "best_acc": jnp.zeros(()),
          "best_mean": jnp.zeros(()), "best_params": params, "best_masks": ones, "done": jnp.zeros((), bool),
          "epochs": jnp.zeros((), jnp.int32)}

  def art_epoch(s, e):
    def live(s):
      lam = art_lambda(e, lam0, eta)
      params, opt, dense_acc = run_epoch(s["params"], s["opt"], jax.random.fold_in(key, warmup_epochs + e), ones, lam,
                                         True)
      masks = magnitude_masks(params, prune_rate, include=include, exclude=exclude)
      pruned = apply_masks(params, masks)
      acc = accuracy_fn(pruned, x, y)
      slot = s["count"] % size
      put = lambda buf, v: jax.tree.map(lambda b, a: b.at[slot].set(a), buf, v)
      buf_params, buf_masks = put(s["buf_params"], pruned), put(s["buf_masks"], masks)
      buf_acc, n = s["buf_acc"].at[slot].set(acc), s["count"] + 1
      filled = jnp.minimum(n, size)
      mean = jnp.sum(jnp.where(jnp.arange(size) < filled, buf_acc, 0.0)) / filled
      middle = ((n - filled) + jnp.minimum(filled - 1, buffer)) % size  # chronological middle of the ring
      better = mean > s["best_acc"]  # the official rule compares with the best's own (middle) accuracy
      take = lambda buf, old: jax.tree.map(lambda b, o: jnp.where(better, b[middle], o), buf, old)
      best_params, best_masks = take(buf_params, s["best_params"]), take(buf_masks, s["best_masks"])
      best_acc = jnp.where(better, buf_acc[middle], s["best_acc"])
      best_mean = jnp.where(better, mean, s["best_mean"])
      return {"params": params, "opt": opt, "buf_params": buf_params, "buf_masks": buf_masks, "buf_acc": buf_acc,
              "count": n, "best_acc": best_acc, "best_mean": best_mean, "best_params": best_params,
              "best_masks": best_masks, "done": best_mean > dense_acc, "epochs": s["epochs"] + 1}

    return jax.lax.cond(s["done"], lambda s: s, live, s), None

  s, _ = jax.lax.scan(art_epoch, art0, jnp.arange(max_art_epochs))

  # 3. fine-tune the best pruned model with its mask fixed
  def tune(carry, e):
    params, opt = carry
    params, opt, _ = run_epoch(params, opt, jax.random.fold_in(key, 10_000 + e), s["best_masks"], 0.0,
                                 False)
    return (params, opt), None

  (params, _), _ = jax.lax.scan(tune, (s["best_params"], optimizer.init(s["best_params"])),
                                jnp.arange(finetune_epochs))
  return ARTResult(params, s["best_masks"], s["epochs"], s["done"], s["best_acc"])
