"""Softmax Collapse, StableMax and the orthogonal gradient (Prieto et al., "Grokking at the Edge of Numerical
Stability", arXiv:2501.04697).

Softmax Collapse (SC, Sec. 3): once the correct logit leads the others by more than about ``ln(2^24) ~ 16.6`` in
float32, ``log_softmax`` rounds the correct class's loss to exactly 0 and its gradient vanishes; the SC fraction is
the share of samples whose loss is exactly 0. StableMax (Sec. 4, Eq. 7-8) replaces ``exp`` by
``s(x) = x + 1`` (``x >= 0``) or ``1 / (1 - x)`` (``x < 0``), which grows linearly, so the probabilities saturate
much later. The orthogonal gradient ``grad_perp`` (Sec. 5, Eq. 9) removes the component of the gradient along the
weights (per parameter tensor), the direction that only scales the logits (naive loss minimization); the authors'
``OrthoGrad`` then rescales it to the gradient's norm.

Transcribed from the authors' code (LucasPrietoAl/grokking-at-the-edge-of-numerical-stability at commit 0cc9e8dc:
``utils.py`` ``s``/``log_stablemax``/``stablemax_cross_entropy``, ``orthograd.py`` ``OrthoGrad``), with their
``1e-30`` guards. The authors evaluate StableMax in float64; here it runs in the logits' dtype (float32 unless
``jax_enable_x64``), which is enough because ``s`` has no overflow.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["stablemax_s", "stablemax", "log_stablemax", "stablemax_cross_entropy", "softmax_collapse_fraction",
           "orthogonal_gradient", "OrthogonalGradientState"]


def _check_logits_labels(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise TypeError(f"logits must be floating point, got {logits.dtype}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integer class indices, got {labels.dtype}.")
  if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels must have the logits' shape without the class axis, got logits {logits.shape} and "
                     f"labels {labels.shape}.")
  return logits, labels


def stablemax_s(x: jax.Array) -> jax.Array:
  """``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for ``x < 0`` (Prieto et al., arXiv:2501.04697, Eq. 7):
  positive, continuous with a continuous first derivative at 0, linear growth instead of ``exp``."""
  x = jnp.asarray(x)
  return jnp.where(x < 0, 1 / (1 - jnp.minimum(x, 0) + 1e-30), x + 1)


def stablemax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """StableMax probabilities ``s(x_i) / sum_j s(x_j)`` along ``axis`` (arXiv:2501.04697, Eq. 8)."""
  s = stablemax_s(logits)
  return s / jnp.sum(s, axis=axis, keepdims=True)


def log_stablemax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """``log`` of :func:`stablemax` (the authors' ``log_stablemax``)."""
  s = stablemax_s(logits)
  return jnp.log(s / jnp.sum(s, axis=axis, keepdims=True))


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example StableMax cross-entropy ``-log stablemax(logits)[label]`` (arXiv:2501.04697, Sec. 4; the
  authors' ``stablemax_cross_entropy(reduction="none")``), in the ``optax.losses`` convention.

  Args:
    logits: ``(..., num_classes)`` floating logits.
    labels: ``(...)`` integer class indices.

  Returns:
    ``(...)`` losses.
  """
  logits, labels = _check_logits_labels(logits, labels)
  return -jnp.take_along_axis(log_stablemax(logits), labels[..., None], axis=-1)[..., 0]


def softmax_collapse_fraction(logits: jax.Array, labels: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
  """Share of samples whose softmax cross-entropy computed in ``dtype`` is exactly 0 (Softmax Collapse,
  arXiv:2501.04697, Sec. 3): their correct-class gradient is 0 in that precision.

  Args:
    logits: ``(..., num_classes)``; cast to ``dtype`` before ``log_softmax``.
    labels: ``(...)`` integer class indices.
    dtype: the floating dtype of the loss computation (float32 as in training; float16/bfloat16 collapse sooner).

  Returns:
    Scalar float32 fraction in ``[0, 1]``.
  """
  logits, labels = _check_logits_labels(logits, labels)
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise TypeError(f"dtype must be a floating dtype, got {dtype!r}.")
  logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
  loss = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  return jnp.mean((loss == 0).astype(jnp.float32))


class OrthogonalGradientState(NamedTuple):
  """:func:`orthogonal_gradient` keeps no state."""


def orthogonal_gradient(renormalize: bool = True) -> optax.GradientTransformation:
  """``grad_perp = g - (w.g / (w.w + 1e-30)) w`` per parameter tensor (Prieto et al., arXiv:2501.04697, Eq. 9),
  rescaled to ``|g|`` when ``renormalize`` (the authors' ``OrthoGrad``, their default).

  Chain it before the base optimizer, as ``OrthoGrad`` wraps one: ``optax.chain(orthogonal_gradient(),
  optax.adamw(1e-3))``. Needs ``params`` in ``update``.

  Args:
    renormalize: rescale ``grad_perp`` to the norm of ``g`` (``* |g| / (|grad_perp| + 1e-30)``).

  Returns:
    An ``optax.GradientTransformation``.
  """
  if not isinstance(renormalize, bool):
    raise TypeError(f"renormalize must be a bool, got {renormalize!r}.")

  def init_fn(params):
    del params
    return OrthogonalGradientState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("orthogonal_gradient needs params: call update(grads, state, params).")

    def one(g, w):
      gf, wf = g.reshape(-1).astype(jnp.float32), w.reshape(-1).astype(jnp.float32)
      perp = gf - jnp.vdot(wf, gf) / (jnp.vdot(wf, wf) + 1e-30) * wf
      if renormalize:
        perp = perp * (jnp.linalg.norm(gf) / (jnp.linalg.norm(perp) + 1e-30))
      return perp.reshape(g.shape).astype(g.dtype)

    return jax.tree.map(one, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)
