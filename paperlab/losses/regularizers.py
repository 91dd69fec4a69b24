"""Regularizers: virtual adversarial training, entropy minimisation, the Norm loss and a max-norm projection."""

from __future__ import annotations

import re
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _mask
from paperlab._tree import path_str

__all__ = ["vat_direction", "vat_loss", "entropy_minimization", "oblique_norm_penalty", "add_norm_loss_gradient", "max_norm"]


def _per_example_normalize(d: jax.Array, eps: float = 1e-12) -> jax.Array:
  axes = tuple(range(1, d.ndim))
  return d / (jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True)) + eps)


@_low_precision_in_float32
def vat_direction(logits_fn: Callable[[jax.Array], jax.Array], x: chex.Array, key: chex.PRNGKey, *,
                  xi: float = 1e-6, num_power_iterations: int = 1) -> jax.Array:
  """Unit (per example) virtual adversarial direction ``d`` by ``num_power_iterations`` power-method steps.

  Miyato et al. (arXiv:1704.03976), Eq. 12-14: starting from a random unit ``d``,
  ``d <- normalize(grad_r KL(p(.|x) || p(.|x + r)) at r = xi d)``, which converges to the top eigenvector of the
  Hessian of the KL at ``r = 0``. Everything is under ``stop_gradient`` (the paper's ``theta^``).

  Precision note: in float32 with inputs of order 1, ``x + xi d`` keeps only a few significant bits of
  ``xi = 1e-6`` (the paper's value), so the direction carries rounding noise (it still converges with several
  iterations); larger ``xi`` (1e-3 to 10, as in popular re-implementations) or float64 inputs avoid that.
  """
  _checks.check_positive("xi", xi)
  if not isinstance(num_power_iterations, int) or num_power_iterations < 1:
    raise ValueError(f"num_power_iterations must be an int >= 1, got {num_power_iterations!r}.")
  x = jax.lax.stop_gradient(jnp.asarray(x))
  if x.ndim < 1:
    raise ValueError(f"x must have a leading batch axis, got shape {x.shape}.")
  log_p = jax.lax.stop_gradient(jax.nn.log_softmax(logits_fn(x), axis=-1))

  def kl_sum(r):
    log_q = jax.nn.log_softmax(logits_fn(x + r), axis=-1)
    return jnp.sum(optax.losses.kl_divergence_with_log_targets(log_q, log_p))

  def power_step(_, d):
    return _per_example_normalize(jax.lax.stop_gradient(jax.grad(kl_sum)(xi * d)))

  d = _per_example_normalize(jax.random.normal(key, x.shape, x.dtype))
  return jax.lax.fori_loop(0, num_power_iterations, power_step, d)


@_low_precision_in_float32
def vat_loss(logits_fn: Callable[[jax.Array], jax.Array], x: chex.Array, key: chex.PRNGKey, *, epsilon: float,
             xi: float = 1e-6, num_power_iterations: int = 1, where: chex.Array | None = None) -> jax.Array:
  """Local distributional smoothness (LDS) per example, the virtual adversarial training penalty.

  Implements Miyato et al., "Virtual Adversarial Training: A Regularization Method for Supervised and
  Semi-Supervised Learning" (TPAMI 2018, arXiv:1704.03976), Eq. 5-7 and 12-14:

    LDS(x) = KL(p(.|x; theta^) || p(.|x + r_vadv; theta)),   r_vadv = epsilon g / ||g||_2,
    g = grad_r KL(p(.|x; theta^) || p(.|x + r; theta^)) at r = xi d,

  with ``theta^`` a stop-gradient copy, ``d`` a random unit vector per example refined by
  ``num_power_iterations`` rounds of the power method (:func:`vat_direction`; the paper uses K=1, xi=1e-6). Norms
  are per example over all non-batch axes. The training objective is ``CE(labelled) + alpha * mean(LDS)`` over
  labelled and unlabelled inputs (alpha=1).

  Args:
    logits_fn: ``x -> logits`` for a batch (a closure over the current parameters).
    x: ``[B, ...]`` inputs.
    key: PRNG key for the initial random direction.
    epsilon: adversarial radius (>= 0; the key hyperparameter, chosen per dataset).
    xi: finite-difference scale of the power iteration (> 0).
    num_power_iterations: K >= 1.
    where: optional ``[B]`` mask; excluded examples give 0.

  Returns:
    ``[B]`` LDS values; gradients reach the parameters only through the perturbed branch.
  """
  _checks.check_non_negative("epsilon", epsilon)
  x = jax.lax.stop_gradient(jnp.asarray(x))
  d = vat_direction(logits_fn, x, key, xi=xi, num_power_iterations=num_power_iterations)
  log_p = jax.lax.stop_gradient(jax.nn.log_softmax(logits_fn(x), axis=-1))
  log_q = jax.nn.log_softmax(logits_fn(x + epsilon * d), axis=-1)
  lds = optax.losses.kl_divergence_with_log_targets(log_q, log_p)
  return jnp.where(_mask(where, lds.shape), lds, 0.0)


@_low_precision_in_float32
def entropy_minimization(logits: chex.Array, *, where: chex.Array | None = None) -> jax.Array:
  """Conditional entropy ``-sum_k p_k log p_k`` per example (the EntMin term of VAT+EntMin, Miyato et al. Sec. 4.2;
  Grandvalet and Bengio, 2005)."""
  log_p = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
  ent = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)
  return jnp.where(_mask(where, ent.shape), ent, 0.0)


def _selected(path: str, leaf: Any, include: re.Pattern | None, exclude: re.Pattern | None) -> bool:
  if include is None:
    ok = jnp.ndim(leaf) >= 2
  else:
    ok = include.search(path) is not None
  return ok and (exclude is None or exclude.search(path) is None)


def _filter_norms(w: jax.Array, filter_axis: int) -> jax.Array:
  """``||w_i||_2`` of every filter, the slice ``i`` along ``filter_axis`` flattened over the other axes."""
  w = jnp.moveaxis(w, filter_axis, 0)
  return jnp.sqrt(jnp.sum(jnp.reshape(w, (w.shape[0], -1)) ** 2, axis=1))


def _compile(pattern: str | None) -> re.Pattern | None:
  return None if pattern is None else re.compile(pattern)


def oblique_norm_penalty(params: Any, *, weight: float = 1e-2, filter_axis: int = -1, include: str | None = None,
                         exclude: str | None = None) -> jax.Array:
  """The Norm loss ``weight * sum_layers sum_i (1 - ||w_i||_2)^2`` (soft oblique-manifold constraint).

  Implements Georgiou et al., "Norm Loss: An efficient yet effective regularization method for deep neural
  networks" (ICPR 2020, arXiv:2103.06583), Eq. 3: every output filter (Flax kernels keep outputs on the last axis,
  ``filter_axis=-1``) is pulled towards unit L2 norm. It replaces weight decay; the paper reports low sensitivity to
  ``weight``, so the default is a typical small value, not a tuned one.

  Args:
    params: parameter pytree.
    weight: lambda >= 0.
    filter_axis: axis indexing filters in each selected kernel.
    include: regex on the ``/``-joined leaf path selecting kernels; ``None`` selects every leaf with ndim >= 2
      (kernels, not biases or norm scales).
    exclude: regex of paths to skip.

  Returns:
    Scalar penalty.
  """
  _checks.check_non_negative("weight", weight)
  inc, exc = _compile(include), _compile(exclude)
  total, dtypes = jnp.zeros((), jnp.float32), []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if _selected(path_str(path), leaf, inc, exc):
      leaf = jnp.asarray(leaf)
      dtypes.append(leaf.dtype)
      total = total + jnp.sum((1.0 - _filter_norms(leaf.astype(jnp.float32), filter_axis)) ** 2)
  # accumulated in float32, returned in the selected leaves' dtype (float32 when none is selected)
  return (weight * total).astype(jnp.result_type(*dtypes) if dtypes else jnp.float32)


def _per_filter(fn: Callable[[jax.Array, jax.Array], jax.Array], w: jax.Array, filter_axis: int) -> jax.Array:
  norms = _filter_norms(w, filter_axis)
  shape = [1] * w.ndim
  shape[filter_axis] = -1
  return fn(w, norms.reshape(shape))


def add_norm_loss_gradient(weight: float = 1e-2, *, filter_axis: int = -1, include: str | None = None,
                           exclude: str | None = None) -> optax.GradientTransformation:
  """Add the Norm-loss gradient ``-2 weight (1 - ||w_i||) w_i / ||w_i||`` to the updates (like
  ``optax.add_decayed_weights`` does for weight decay); equal to ``jax.grad`` of :func:`oblique_norm_penalty`.
  Place it before the optimizer's scaling in a chain, e.g. ``optax.chain(add_norm_loss_gradient(1e-2),
  optax.sgd(0.1, momentum=0.9))``. Filters of zero norm get no gradient."""
  _checks.check_non_negative("weight", weight)
  inc, exc = _compile(include), _compile(exclude)

  def grad_leaf(w, norms):
    safe = jnp.where(norms > 0, norms, 1.0)
    return jnp.where(norms > 0, -2.0 * weight * (1.0 - norms) * w / safe, 0.0)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("add_norm_loss_gradient needs params: call update(updates, state, params).")

    def add(path, u, p):
      if not _selected(path_str(path), p, inc, exc):
        return u
      return u + _per_filter(grad_leaf, jnp.asarray(p), filter_axis).astype(u.dtype)

    return jax.tree_util.tree_map_with_path(add, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def max_norm(max_norm_value: float = 1.0, *, filter_axis: int = -1, include: str | None = None,
             exclude: str | None = None) -> optax.GradientTransformation:
  """MaxNorm constraint as the last link of an optax chain: rewrites the updates so that every selected filter of
  ``params + updates`` has L2 norm at most ``max_norm_value`` (filters already inside the ball are untouched).

  The per-filter projection ``w <- w * min(1, c / ||w||)`` of weight balancing's second stage (Hasegawa et al.,
  "Exploring Weight Balancing on Long-Tailed Recognition Problem", ICLR 2024, arXiv:2305.16573, Sec. 3; after
  Alshammari et al., CVPR 2022). ``optax.apply_updates`` then lands exactly on the projection.
  """
  _checks.check_positive("max_norm_value", max_norm_value)
  inc, exc = _compile(include), _compile(exclude)

  def project(w, norms):
    return w * jnp.minimum(1.0, max_norm_value / jnp.maximum(norms, 1e-12))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("max_norm needs params: call update(updates, state, params).")

    def proj(path, u, p):
      if not _selected(path_str(path), p, inc, exc):
        return u
      new = jnp.asarray(p) + u
      return (_per_filter(project, new, filter_axis) - p).astype(u.dtype)

    return jax.tree_util.tree_map_with_path(proj, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
