"""Diagonal Fisher estimation, Fisher-weighted averaging and uncertainty-based gradient matching.

* Matena & Raffel, "Merging Models with Fisher-Weighted Averaging" (NeurIPS 2022, arXiv:2111.09832).
* Daheim et al., "Model Merging by Uncertainty-Based Gradient Matching" (ICLR 2024, arXiv:2310.12808).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from paperlab._checks import check_choice, check_non_negative, check_positive
from paperlab._tree import check_same_structure
from paperlab.merge.averaging import (IntegerLeaves, _check_models, _integer_leaves, _is_float, _model_names,
                                     _put_integer_leaves)

__all__ = ["diag_fisher", "fisher_merge", "gradient_matching"]

PyTree = Any


def _per_example_sq_grads(apply_fn, params, x, y_or_none, key, mode):
  """Squared gradients of log-likelihood terms for one example (``x`` without batch axis)."""
  def log_probs(p):
    return jax.nn.log_softmax(apply_fn(p, x[None])[0].astype(jnp.float32))

  if mode == "exact":
    probs = jax.lax.stop_gradient(jnp.exp(log_probs(params)))
    jac = jax.jacrev(log_probs)(params)  # leaves (classes, *shape)
    return jax.tree.map(lambda j: jnp.tensordot(probs, j.astype(jnp.float32) ** 2, axes=1), jac)
  if mode == "true":
    y = jax.random.categorical(key, jax.lax.stop_gradient(log_probs(params)))
  else:
    y = y_or_none
  g = jax.grad(lambda p: log_probs(p)[y])(params)
  return jax.tree.map(lambda t: t.astype(jnp.float32) ** 2, g)


def diag_fisher(apply_fn: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, x: jax.Array, *,
                mode: str = "exact", labels: jax.Array | None = None, rng: jax.Array | None = None,
                chunk: int = 64) -> PyTree:
  """Diagonal Fisher information of a classifier, ``F = E_x E_y [(d/dtheta log p_theta(y|x))^2]``.

  Matena & Raffel (arXiv:2111.09832), Sec. 2.2 (the diagonal Fisher), with the expectation over ``y``:
  ``mode="exact"``: summed over classes weighted by ``p_theta(y|x)`` (one Jacobian per example);
  ``"true"``: one ``y ~ p_theta(.|x)`` sampled per example (needs ``rng``);
  ``"empirical"``: the given ``labels`` (the "empirical Fisher").
  The paper uses a few hundred to thousands of examples (FusionBench: 256).

  Args:
    apply_fn: ``apply_fn(params, x_batch) -> logits (batch, classes)``, e.g.
      :func:`paperlab.merge.model_apply`.
    params: parameter pytree.
    x: inputs with a leading example axis.
    mode: ``"exact"``, ``"true"`` or ``"empirical"``.
    labels: integer labels for ``"empirical"``.
    rng: key for ``"true"``.
    chunk: examples per vectorised chunk (bounds memory: per-example gradients of ``chunk`` examples).

  Returns:
    A float32 pytree like ``params``: the mean over examples. Jittable (``apply_fn``, ``mode``, ``chunk``
    static).
  """
  check_choice("mode", mode, ("exact", "true", "empirical"))
  if int(chunk) != chunk or chunk < 1:
    raise ValueError(f"chunk must be a positive integer, got {chunk!r}.")
  if mode == "empirical" and labels is None:
    raise ValueError("mode='empirical' needs labels (the empirical Fisher uses the observed labels).")
  if mode == "true" and rng is None:
    raise ValueError("mode='true' needs rng to sample labels from the model.")
  x = jnp.asarray(x)
  n = x.shape[0]
  if n == 0:
    raise ValueError("x must hold at least one example.")
  labels = jnp.zeros((n,), jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape ({n},), got {labels.shape}.")
  keys = jax.random.split(jax.random.key(0) if rng is None else rng, n)
  chunk = min(int(chunk), n)
  num = -(-n // chunk)
  pad = num * chunk - n
  padded = lambda a: jnp.concatenate([a, jnp.repeat(a[:1], pad, 0)]).reshape(num, chunk, *a.shape[1:])
  weights = (jnp.arange(num * chunk) < n).astype(jnp.float32).reshape(num, chunk)  # padding weighs 0
  per_ex = jax.vmap(lambda xi, yi, ki: _per_example_sq_grads(apply_fn, params, xi, yi, ki, mode))

  def body(total, inputs):
    xs, ys, ks, w = inputs
    sq = per_ex(xs, ys, ks)
    return jax.tree.map(lambda t, s: t + jnp.tensordot(w, s, axes=1), total, sq), None

  zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
  total, _ = jax.lax.scan(body, zeros, (padded(x), padded(labels), padded(keys), weights))
  return jax.tree.map(lambda t: t / n, total)


def _check_weights(weights, n, name="weights"):
  if weights is None:
    return [1.0] * n
  weights = list(weights)
  if len(weights) != n:
    raise ValueError(f"{name} must have one entry per model ({n}), got {len(weights)}.")
  for i, w in enumerate(weights):
    check_non_negative(f"{name}[{i}]", w)
  return weights


def fisher_merge(models: Sequence[PyTree], fishers: Sequence[PyTree], *, weights: Sequence[float] | None = None,
                 eps: float = 1e-6, normalize: bool = False, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Fisher-weighted averaging, ``theta* = sum_i lambda_i F_i theta_i / sum_i lambda_i F_i`` elementwise.

  Matena & Raffel (arXiv:2111.09832), the Fisher merging rule (Sec. 2) with diagonal Fishers. ``eps`` is added to every Fisher (the
  FusionBench ``minimal_fisher_weight``, 1e-6) so parameters no model is sensitive to fall back to the weighted
  average; ``normalize=True`` first divides each model's Fisher by its global L2 norm (FusionBench's
  ``normalize_fisher_weight``).

  Args:
    models: parameter pytrees (same structure and shapes).
    fishers: one diagonal Fisher pytree per model (e.g. :func:`diag_fisher`), same structure.
    weights: per-model ``lambda_i >= 0`` (uniform by default).
    eps: floor added to each Fisher, ``>= 0``.
    normalize: divide each Fisher by its global L2 norm first.
    integer_leaves: integer/bool leaves are never averaged: equal across models -> kept, different ->
      ``ValueError`` naming the path; or ``"first"``, ``"last"`` or a callable (see :mod:`paperlab.merge.averaging`).

  Returns:
    The merged pytree, each leaf in its model dtype. Jittable.
  """
  models = _check_models(models)
  ints = _integer_leaves(models, _model_names(len(models)), integer_leaves, has_base=False)
  fishers = _check_models(fishers, "fishers")
  if len(fishers) != len(models):
    raise ValueError(f"fishers must have one entry per model: got {len(fishers)} for {len(models)} models.")
  check_same_structure([models[0], fishers[0]], ["models[0]", "fishers[0]"])
  weights = _check_weights(weights, len(models))
  if not any(float(w) > 0 for w in weights):
    raise ValueError(f"weights must not all be zero, got {list(weights)}.")
  check_non_negative("eps", eps)
  if normalize:
    norms = [jnp.sqrt(sum(jnp.sum(jnp.square(f.astype(jnp.float32))) for f in jax.tree.leaves(fi)))
             for fi in fishers]
    fishers = [jax.tree.map(lambda f, nrm=nrm: f / jnp.maximum(nrm, 1e-30), fi) for fi, nrm in zip(fishers, norms)]

  def merge_leaf(*args):
    thetas, fs = args[:len(models)], args[len(models):]
    num, den = 0.0, 0.0
    for lam, t, f in zip(weights, thetas, fs):
      c = lam * (f.astype(jnp.float32) + eps)
      num, den = num + c * t.astype(jnp.float32), den + c
    return (num / den).astype(thetas[0].dtype)

  return _put_integer_leaves(jax.tree.map(merge_leaf, *models, *fishers), ints)


def gradient_matching(base: PyTree, finetuned: Sequence[PyTree], hessians: Sequence[PyTree], *,
                      base_hessian: PyTree | None = None, alpha: float = 1.0,
                      sizes: Sequence[float] | None = None, base_size: float = 1.0, delta: float = 1e-12,
                      integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Uncertainty-based gradient matching (Daheim et al., arXiv:2310.12808, Sec. 3, with
  diagonal Hessians, as in the authors' ``uncertainty_based_gradient_matching.py``).

  ``theta = theta_0 + alpha * sum_t [(s_t H_t + s_0 H_0 + delta) / (alpha sum_t' s_t' H_t' + s_0 H_0 + delta)]
  * (theta_t - theta_0)``, elementwise, where ``H_t`` is a diagonal Fisher of fine-tune ``t`` on its data,
  ``H_0`` that of the base, and ``s`` the data-set sizes. Special cases: ``H_0`` dominant gives task arithmetic
  with scale ``alpha``; ``H_0 = 0``, equal ``s_t H_t`` gives the plain average of the fine-tunes (with
  ``alpha`` cancelling); one task with ``alpha = 1`` gives the fine-tune.

  Args:
    base: the pretrained parameters ``theta_0``.
    finetuned: fine-tuned models ``theta_t``.
    hessians: diagonal Fisher/Hessian estimates ``H_t`` (e.g. :func:`diag_fisher`), one per fine-tune.
    base_hessian: ``H_0`` (zeros by default).
    alpha: task-vector scale ``> 0``.
    sizes: ``s_t >= 0`` (1 each by default).
    base_size: ``s_0 >= 0``.
    delta: damping ``>= 0`` (the authors' 1e-12).
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path; or ``"first"``, ``"last"``, ``"base"`` or a callable.

  Returns:
    The merged pytree in the base's dtypes. Jittable.
  """
  finetuned = _check_models(finetuned, "finetuned")
  hessians = _check_models(hessians, "hessians")
  if len(hessians) != len(finetuned):
    raise ValueError(f"hessians must have one entry per fine-tuned model: got {len(hessians)} for "
                     f"{len(finetuned)}.")
  check_same_structure([base] + finetuned, ["base"] + [f"finetuned[{i}]" for i in range(len(finetuned))])
  check_same_structure([base, hessians[0]], ["base", "hessians[0]"])
  ints = _integer_leaves([base, *finetuned], _model_names(len(finetuned), "finetuned", "base"), integer_leaves,
                         has_base=True)
  if base_hessian is None:
    base_hessian = jax.tree.map(jnp.zeros_like, base)
  check_same_structure([base, base_hessian], ["base", "base_hessian"])
  sizes = _check_weights(sizes, len(finetuned), "sizes")
  check_positive("alpha", alpha)
  check_non_negative("base_size", base_size)
  check_non_negative("delta", delta)
  n = len(finetuned)

  def merge_leaf(b, h0, *args):
    thetas, hs = args[:n], args[n:]
    b32 = b.astype(jnp.float32)
    prior = base_size * h0.astype(jnp.float32) + delta
    den = alpha * sum(s * h.astype(jnp.float32) for s, h in zip(sizes, hs)) + prior
    upd = sum((s * h.astype(jnp.float32) + prior) * (t.astype(jnp.float32) - b32)
              for s, h, t in zip(sizes, hs, thetas))
    return (b32 + alpha * upd / den).astype(b.dtype)

  return _put_integer_leaves(jax.tree.map(merge_leaf, base, base_hessian, *finetuned, *hessians), ints)
