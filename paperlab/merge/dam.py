"""Differentiable Adaptive Merging (Gauthier-Caron et al., "Merging in a Bottle: Differentiable Adaptive Merging
(DAM) and the Path from Averaging to Automation", arXiv:2410.08371).

DAM keeps N fine-tuned models frozen and learns scaling coefficients that mix them: for a linear layer,
``W = sum_i W_i diag(c_i)``, one coefficient per model and input feature (a Flax kernel ``(..., in, out)`` is scaled
along its ``in`` axis); vectors (biases, norm scales) get one coefficient per model and entry. The coefficients are
trained with an optax loop (in ``experiments/``) on :func:`dam_loss`: the temperature-``T`` KL divergence from each
model's logits to the merged model's logits on unlabeled inputs of that model's domain, plus optional regularisers.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab._tree import check_same_structure
from paperlab.merge.averaging import (IntegerLeaves, _check_models, _integer_leaves, _is_float, _model_names,
                                     _put_integer_leaves)

PyTree = Any

__all__ = ["dam_init", "dam_apply", "dam_loss"]

_GRANULARITIES = ("input", "layer")


def _coeff_shape(x, n: int, granularity: str) -> tuple:
  if granularity == "layer" or jnp.ndim(x) == 0:
    return (n,)
  if jnp.ndim(x) == 1:
    return (n, x.shape[0])
  return (n, x.shape[-2])


def _broadcast(c: jax.Array, x: jax.Array) -> jax.Array:
  """Coefficients ``(..)`` of one model, reshaped to broadcast against leaf ``x``."""
  if c.ndim == 0:
    return c
  if x.ndim == 1:
    return c
  return c.reshape(c.shape + (1,))  # (in,) -> (in, 1), broadcasting against (..., in, out)


def dam_init(models: Sequence[PyTree], init: float | None = None, *, granularity: str = "input") -> PyTree:
  """DAM's coefficients (Gauthier-Caron et al., arXiv:2410.08371, Sec. 3): a pytree shaped like one model whose leaf
  for parameter ``W`` has shape ``(N, in_features)`` (``W``'s axis ``-2``: Flax Dense ``(in, out)``, Conv
  ``(H, W, in, out)``), ``(N, d)`` for vectors and ``(N,)`` for scalars, all set to ``init`` (default ``1/N``, so
  :func:`dam_apply` starts from the simple average). ``granularity="layer"`` uses one coefficient per model and leaf
  (shape ``(N,)``) instead of the paper's per-input-feature ones."""
  models = _check_models(models)
  _checks.check_choice("granularity", granularity, _GRANULARITIES)
  n = len(models)
  value = 1.0 / n if init is None else init
  if _checks._concrete(value) is None:
    raise TypeError(f"init must be a real number or None (1/N), got {init!r}.")
  return jax.tree.map(lambda x: jnp.full(_coeff_shape(x, n, granularity), value, jnp.float32), models[0])


def dam_apply(models: Sequence[PyTree], coeffs: PyTree, *, integer_leaves: IntegerLeaves = "error") -> PyTree:
  """Merged parameters ``W = sum_i W_i diag(c_i)`` (Gauthier-Caron et al., arXiv:2410.08371, eq. 1): each leaf is
  the sum over models of the leaf times that model's coefficients (broadcast along the leaf's input axis). Jittable
  and differentiable in ``coeffs``; one-hot coefficients return model ``i``, ``1/N`` the simple average. The result
  has each leaf's dtype (the sum runs in float32 or wider). Integer/bool leaves are never mixed: equal across models
  -> kept, different -> ``ValueError`` naming the path, unless ``integer_leaves`` (``"first"``, ``"last"`` or a
  callable, see :mod:`paperlab.merge.averaging`) says otherwise; their coefficients are unused."""
  models = _check_models(models)
  ints = _integer_leaves(models, _model_names(len(models)), integer_leaves, has_base=False)
  check_same_structure([models[0], coeffs], ["models[0]", "coeffs"], check_shapes=False)
  n = len(models)
  leaves_c, treedef = jax.tree.flatten(coeffs)
  leaves_m = [treedef.flatten_up_to(m) for m in models]
  out = []
  for j, c in enumerate(leaves_c):
    x0 = leaves_m[0][j]
    if c.shape[0] != n:
      raise ValueError(f"coeffs leaf {j} must have a leading axis of size {n} (one row per model), got shape "
                       f"{c.shape}.")
    ct = jnp.promote_types(jnp.result_type(x0), jnp.float32)
    acc = sum(_broadcast(c[i].astype(ct), jnp.asarray(leaves_m[i][j])) * jnp.asarray(leaves_m[i][j]).astype(ct)
              for i in range(n))
    out.append(acc.astype(jnp.result_type(x0)) if _is_float(x0) else x0)
  return _put_integer_leaves(jax.tree.unflatten(treedef, out), ints)


def _kl_teacher_student(teacher: jax.Array, student: jax.Array, temperature) -> jax.Array:
  t = jax.nn.log_softmax(teacher / temperature, axis=-1)
  s = jax.nn.log_softmax(student / temperature, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


def dam_loss(apply_fn: Callable[[PyTree, jax.Array, int], jax.Array], models: Sequence[PyTree], coeffs: PyTree,
             batches_per_model: Sequence[jax.Array], temperature: float = 2.0, *,
             teacher_logits: Sequence[jax.Array] | None = None, cosine_weight: float = 0.0, l1_weight: float = 0.0,
             l2_weight: float = 0.0, integer_leaves: IntegerLeaves = "error") -> jax.Array:
  """DAM's objective (Gauthier-Caron et al., arXiv:2410.08371, Sec. 3.2)::

      sum_i T^2 KL( softmax(f(W_i; x_i) / T) || softmax(f(dam_apply(W, c); x_i) / T) )
        + cosine_weight * sum_{i<j} cos(c_i, c_j) + l1_weight * |c - 1/N|_1 + l2_weight * |c - 1/N|^2

  where ``x_i = batches_per_model[i]`` are unlabeled inputs of model ``i``'s domain and the teacher is model ``i``
  itself (knowledge distillation of every expert into the merge; ``T^2`` keeps the gradient scale of Hinton et
  al.). The cosine term (``c_i`` = all of model ``i``'s coefficients, flattened) pushes the models' coefficient vectors
  apart; the L1/L2 terms (weights 0 by default: the
  paper leaves their exact form open) pull the coefficients toward the simple average.

  Args:
    apply_fn: ``(params, x, i) -> logits``; ``i`` (a Python int) is the model whose domain ``x`` comes from, so a
      multi-head setup can use head ``i`` (ignore it when the models share their output layer).
    models: the N frozen fine-tuned parameter pytrees.
    coeffs: from :func:`dam_init`.
    batches_per_model: N input batches.
    temperature: ``T > 0`` (default 2.0).
    teacher_logits: optional cached teacher logits per model (computed with ``apply_fn(models[i], x_i, i)`` if
      omitted; never differentiated).
    cosine_weight, l1_weight, l2_weight: regulariser weights (>= 0).
    integer_leaves: policy for integer/bool leaves of the models, as in :func:`dam_apply`.

  Returns:
    A scalar loss, differentiable in ``coeffs``.
  """
  models = _check_models(models)
  n = len(models)
  if len(batches_per_model) != n:
    raise ValueError(f"batches_per_model must hold one batch per model ({n}), got {len(batches_per_model)}.")
  if teacher_logits is not None and len(teacher_logits) != n:
    raise ValueError(f"teacher_logits must hold one array per model ({n}), got {len(teacher_logits)}.")
  _checks.check_positive("temperature", temperature)
  for name, w in (("cosine_weight", cosine_weight), ("l1_weight", l1_weight), ("l2_weight", l2_weight)):
    _checks.check_non_negative(name, w)
  merged = dam_apply(models, coeffs, integer_leaves=integer_leaves)
  loss = jnp.zeros((), jnp.float32)
  for i, x in enumerate(batches_per_model):
    teacher = apply_fn(models[i], x, i) if teacher_logits is None else teacher_logits[i]
    loss = loss + temperature ** 2 * _kl_teacher_student(jax.lax.stop_gradient(teacher), apply_fn(merged, x, i),
                                                         temperature)
  leaves = [c.reshape(n, -1) for c in jax.tree.leaves(coeffs)]
  if not (isinstance(cosine_weight, (int, float)) and cosine_weight == 0) and n > 1:
    flat = jnp.concatenate(leaves, axis=1)
    unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    loss = loss + cosine_weight * (jnp.sum(sim) - jnp.trace(sim)) / 2
  if not (isinstance(l1_weight, (int, float)) and l1_weight == 0):
    loss = loss + l1_weight * sum(jnp.sum(jnp.abs(c - 1.0 / n)) for c in leaves)
  if not (isinstance(l2_weight, (int, float)) and l2_weight == 0):
    loss = loss + l2_weight * sum(jnp.sum((c - 1.0 / n) ** 2) for c in leaves)
  return loss

