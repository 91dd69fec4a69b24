"""Batch-size rules: hyperparameter scaling when the batch changes, adaptive batch sizes, ghost batch norm.

* the SDE square-root scaling rule for Adam/RMSprop and the linear rule for SGD (Malladi et al., 2022,
  arXiv:2205.10287);
* the sqrt LR rule and ghost batch normalisation of "train longer" (Hoffer et al., 2017, arXiv:1705.08741);
* adaptive-sampling tests that grow the batch, and AdaGrad-Norm, from AdAdaGrad (Lau et al., 2024,
  arXiv:2402.11215).

All are pure functions; the tests are jittable statistics over per-example gradients (``jax.vmap(jax.grad(...))``)
that the training loop calls between steps.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_non_negative, check_positive, check_range

__all__ = [
    "adam_sqrt_scaling",
    "rmsprop_sqrt_scaling",
    "sqrt_scaling",
    "sgd_linear_scaling",
    "sqrt_lr_scaling",
    "ghost_batch_norm",
    "BatchSizeTest",
    "norm_test",
    "coordinatewise_norm_test",
    "inner_product_test",
    "next_batch_size",
    "AdaGradNormState",
    "scale_by_adagrad_norm",
    "adagrad_norm",
]


def _check_kappa(kappa) -> None:
  check_positive("kappa", kappa)


def _scale_one_minus(name: str, beta: float, kappa: float) -> float:
  """``1 - kappa (1 - beta)``, refusing values where the rule has broken down (``kappa (1 - beta) >= 1``)."""
  check_range(name, beta, 0.0, 1.0, high_inclusive=False)
  scaled = 1.0 - kappa * (1.0 - beta)
  if scaled < 0.0:
    raise ValueError(f"the square-root rule takes 1 - {name} to kappa * (1 - {name}) = {kappa * (1 - beta):g} >= 1 "
                     f"({name}={beta!r}, kappa={kappa!r}); the SDE approximation no longer holds: use a smaller "
                     f"batch ratio or a {name} closer to 1.")
  return scaled


def adam_sqrt_scaling(kappa: float, *, learning_rate: float, b1: float = 0.9, b2: float = 0.999,
                      eps: float = 1e-8) -> dict:
  r"""Square-root scaling rule for Adam when the batch grows ``B -> kappa B`` (Malladi et al., 2022, Def. 4.2).

  ``eta -> sqrt(kappa) eta``, ``1 - beta_i -> kappa (1 - beta_i)``, ``eps -> eps / sqrt(kappa)``; train for
  ``T / kappa`` steps (same epochs). Derived so the SDE of Adam is unchanged. ``kappa < 1`` shrinks the batch.
  The rule composes exactly: scaling by ``k1`` then ``k2`` equals scaling by ``k1 k2``; ``kappa = 1`` is the
  identity. It breaks down when ``kappa (1 - beta)`` approaches 1 (ValueError once it exceeds it).

  Args:
    kappa: batch-size ratio ``B_new / B_base`` (> 0).
    learning_rate, b1, b2, eps: the base hyperparameters (defaults: Adam's).

  Returns:
    ``dict(learning_rate=..., b1=..., b2=..., eps=...)``, ready for ``optax.adam(**h)``.

  References:
    Malladi, Lyu, Panigrahi, Arora, `On the SDEs and Scaling Rules for Adaptive Gradient Algorithms
    <https://arxiv.org/abs/2205.10287>`_, NeurIPS 2022.
  """
  _check_kappa(kappa)
  check_positive("learning_rate", learning_rate)
  check_non_negative("eps", eps)
  root = math.sqrt(kappa)
  return dict(learning_rate=learning_rate * root, b1=_scale_one_minus("b1", b1, kappa),
              b2=_scale_one_minus("b2", b2, kappa), eps=eps / root)


def rmsprop_sqrt_scaling(kappa: float, *, learning_rate: float, decay: float = 0.9, eps: float = 1e-8) -> dict:
  r"""Square-root scaling rule for RMSprop (Malladi et al., 2022, Def. 4.1), in ``optax.rmsprop``'s names.

  ``eta -> sqrt(kappa) eta``, ``1 - decay -> kappa (1 - decay)``, ``eps -> eps / sqrt(kappa)``.

  Returns:
    ``dict(learning_rate=..., decay=..., eps=...)``.
  """
  _check_kappa(kappa)
  check_positive("learning_rate", learning_rate)
  check_non_negative("eps", eps)
  root = math.sqrt(kappa)
  return dict(learning_rate=learning_rate * root, decay=_scale_one_minus("decay", decay, kappa), eps=eps / root)


def sqrt_scaling(base_batch_size: int, batch_size: int, *, learning_rate: float, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8, num_steps: int | None = None) -> dict:
  r"""Adam hyperparameters for ``batch_size`` from those tuned at ``base_batch_size`` (square-root rule).

  :func:`adam_sqrt_scaling` with ``kappa = batch_size / base_batch_size``; if ``num_steps`` (the base run's
  length) is given, the result also holds ``num_steps = ceil(num_steps / kappa)`` (same number of epochs).

  References:
    Malladi et al., `On the SDEs and Scaling Rules for Adaptive Gradient Algorithms
    <https://arxiv.org/abs/2205.10287>`_, 2022.
  """
  check_positive("base_batch_size", base_batch_size)
  check_positive("batch_size", batch_size)
  kappa = batch_size / base_batch_size
  out = adam_sqrt_scaling(kappa, learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)
  if num_steps is not None:
    check_positive("num_steps", num_steps)
    out["num_steps"] = max(1, math.ceil(num_steps / kappa))
  return out


def sgd_linear_scaling(kappa: float, *, learning_rate: float) -> dict:
  r"""Linear scaling rule for SGD: ``eta -> kappa eta`` when ``B -> kappa B`` (the SGD counterpart of the
  square-root rule; Goyal et al., 2017; Malladi et al., 2022, Sec. 2).

  Returns:
    ``dict(learning_rate=...)``.
  """
  _check_kappa(kappa)
  check_positive("learning_rate", learning_rate)
  return dict(learning_rate=learning_rate * kappa)


def sqrt_lr_scaling(learning_rate: chex.Numeric, batch_ratio: float) -> chex.Numeric:
  r"""``eta * sqrt(|B_L| / |B_S|)`` (Hoffer et al., 2017, Sec. 4): keeps the covariance of the SGD update's
  noise when the batch grows. Works on floats and traced values.

  References:
    Hoffer et al., `Train longer, generalize better <https://arxiv.org/abs/1705.08741>`_, 2017.
  """
  check_non_negative("learning_rate", learning_rate)
  check_positive("batch_ratio", batch_ratio)
  return learning_rate * math.sqrt(batch_ratio)


def ghost_batch_norm(x: jax.Array, virtual_batch_size: int, *, epsilon: float = 1e-5
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""Ghost batch normalisation, training mode (Hoffer et al., 2017, Alg. 1).

  The batch ``(B, ...)`` is split into ``B / v`` ghost batches of ``v`` examples; each is normalised with its own
  mean and (biased) variance over all axes but the last (features), ``(x - mu_g) / sqrt(var_g + eps)``.
  With ``v = B`` this is ordinary batch norm. Apply the affine scale and bias afterwards.

  Args:
    x: activations ``(B, ..., features)``; ``B`` must be a multiple of ``virtual_batch_size``.
    virtual_batch_size: ``v``, the ghost batch size (paper: 128, the small-batch size).
    epsilon: added to the variance.

  Returns:
    ``(y, mean, var)``: the normalised activations, and the ghost statistics averaged over ghost batches
    (shape ``(features,)``), to update running statistics with the usual EMA.

  References:
    Hoffer et al., `Train longer, generalize better <https://arxiv.org/abs/1705.08741>`_, 2017.
  """
  if isinstance(virtual_batch_size, bool) or not isinstance(virtual_batch_size, numbers.Integral):
    raise TypeError(f"virtual_batch_size must be an int, got {virtual_batch_size!r}.")
  check_positive("virtual_batch_size", virtual_batch_size)
  check_non_negative("epsilon", epsilon)
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"x must have a batch and a feature axis, got shape {x.shape}.")
  batch = x.shape[0]
  if batch % virtual_batch_size:
    raise ValueError(f"the batch size {batch} must be a multiple of virtual_batch_size={virtual_batch_size}.")
  ghosts = x.reshape(batch // virtual_batch_size, virtual_batch_size, *x.shape[1:])
  axes = tuple(range(1, ghosts.ndim - 1))
  mean = jnp.mean(ghosts, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(ghosts - mean), axis=axes, keepdims=True)
  y = ((ghosts - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)
  return y, jnp.mean(mean, axis=tuple(range(ghosts.ndim - 1))), jnp.mean(var, axis=tuple(range(ghosts.ndim - 1)))


class BatchSizeTest(NamedTuple):
  """Outcome of an adaptive-sampling test on one batch.

  Attributes:
    passed: whether the current batch is large enough.
    proposed_batch_size: the smallest batch the test would accept (a float, ``ceil``-ed, >= 1); feed it to
      :func:`next_batch_size`.
    statistic: the test's left-hand side divided by its right-hand side (passed iff ``<= 1``).
  """

  passed: jax.Array
  proposed_batch_size: jax.Array
  statistic: jax.Array


def _flat_per_example(per_example_grads, where) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(g, w, b)``: per-example gradients flattened to ``(B, P)``, 0/1 weights of the valid rows, their count."""
  leaves = jax.tree.leaves(per_example_grads)
  if not leaves:
    raise ValueError("per_example_grads is an empty pytree.")
  b = leaves[0].shape[0] if leaves[0].ndim else None
  if b is None or any(leaf.ndim == 0 or leaf.shape[0] != b for leaf in leaves):
    raise ValueError("every leaf of per_example_grads needs the same leading (example) axis, got shapes "
                     f"{[leaf.shape for leaf in leaves]}.")
  if b < 2:
    raise ValueError(f"the tests need at least 2 per-example gradients, got {b}.")
  g = jnp.concatenate([jnp.reshape(leaf, (b, -1)).astype(jnp.float32) for leaf in leaves], axis=1)
  if where is None:
    return g, jnp.ones((b,), jnp.float32), jnp.asarray(b, jnp.float32)
  where = jnp.asarray(where)
  if where.shape != (b,):
    raise ValueError(f"where must have shape ({b},) (one flag per example), got {where.shape}.")
  w = where.astype(jnp.float32)
  return g, w, jnp.maximum(jnp.sum(w), 2.0)


def _moments(g, w, b):
  """Masked mean ``(P,)`` and per-coordinate unbiased variance ``(P,)`` of the rows of ``g``."""
  mean = jnp.sum(g * w[:, None], axis=0) / b
  var = jnp.sum(jnp.square(g - mean) * w[:, None], axis=0) / (b - 1)
  return mean, var


def _result(lhs_times_b, rhs, b) -> BatchSizeTest:
  """Test ``lhs_times_b / b <= rhs``; the proposal is ``ceil(lhs_times_b / rhs)``."""
  tiny = jnp.finfo(jnp.float32).tiny
  proposed = jnp.maximum(1.0, jnp.ceil(lhs_times_b / jnp.maximum(rhs, tiny)))
  statistic = lhs_times_b / (b * jnp.maximum(rhs, tiny))
  return BatchSizeTest(statistic <= 1.0, proposed, statistic)


def norm_test(per_example_grads, eta: float, *, where: jax.Array | None = None) -> BatchSizeTest:
  r"""Norm test for the batch size (Byrd et al., 2012; AdAdaGrad-Norm, Lau et al., 2024, Eq. 3.2).

  With ``g_i`` the per-example gradients of the current batch of size ``b`` and ``g`` their mean, the batch
  passes when ``Var / b <= eta^2 ||g||^2``, with ``Var = sum_i ||g_i - g||^2 / (b - 1)``; otherwise the next
  batch should have ``ceil(Var / (eta^2 ||g||^2))`` examples. Jittable.

  Args:
    per_example_grads: pytree whose leaves have a leading example axis (``jax.vmap(jax.grad(loss))``).
    eta: test tolerance (> 0); a smaller ``eta`` asks for larger batches.
    where: optional boolean ``(B,)`` mask of the examples in the batch, so a growing batch can live in a
      fixed-size (jit-friendly) buffer; ``b`` is then the number of True entries.

  References:
    Lau, Liu, Kolar, `AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods
    <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  check_positive("eta", eta)
  g, w, b = _flat_per_example(per_example_grads, where)
  mean, var = _moments(g, w, b)
  return _result(jnp.sum(var), eta * eta * jnp.sum(jnp.square(mean)), b)


def coordinatewise_norm_test(per_example_grads, eta: float, *, where: jax.Array | None = None
                             ) -> BatchSizeTest:
  r"""Coordinate-wise norm test, for coordinate-wise AdaGrad (AdAdaGrad; Lau et al., 2024, Sec. 3).

  Each coordinate ``j`` must satisfy ``Var_j / b <= eta^2 g_j^2`` with ``Var_j = sum_i (g_ij - g_j)^2 / (b-1)``;
  the proposal is the largest ``ceil(Var_j / (eta^2 g_j^2))`` (cap it with :func:`next_batch_size`).
  """
  check_positive("eta", eta)
  g, w, b = _flat_per_example(per_example_grads, where)
  mean, var = _moments(g, w, b)
  rhs = eta * eta * jnp.square(mean)
  tiny = jnp.finfo(jnp.float32).tiny
  ratio = var / jnp.maximum(rhs, tiny)
  j = jnp.argmax(ratio)
  return _result(var[j], rhs[j], b)


def inner_product_test(per_example_grads, theta: float, *, where: jax.Array | None = None) -> BatchSizeTest:
  r"""Inner-product test (Bollapragada et al., 2018), the alternative test in AdAdaGrad (Lau et al., 2024).

  Passes when ``Var_ip / b <= theta^2 ||g||^4`` with ``Var_ip = sum_i (<g_i, g> - ||g||^2)^2 / (b - 1)``: the
  batch gradient need only be a descent direction with high probability, so it asks for smaller batches than
  :func:`norm_test`.
  """
  check_positive("theta", theta)
  g, w, b = _flat_per_example(per_example_grads, where)
  mean, _ = _moments(g, w, b)
  sq = jnp.sum(jnp.square(mean))
  var = jnp.sum(jnp.square(g @ mean - sq) * w) / (b - 1)
  return _result(var, theta * theta * sq * sq, b)


def next_batch_size(batch_size: chex.Numeric, test: BatchSizeTest, *, max_batch_size: int) -> jax.Array:
  """``b_{k+1} = min(b_max, max(b_k, proposed))``: the batch never shrinks (AdAdaGrad's rule). Jittable."""
  check_positive("max_batch_size", max_batch_size)
  grown = jnp.where(test.passed, batch_size, jnp.maximum(batch_size, test.proposed_batch_size))
  return jnp.minimum(max_batch_size, grown).astype(jnp.int32)


class AdaGradNormState(NamedTuple):
  """State of :func:`scale_by_adagrad_norm`: ``sum_i ||g_i||^2``, the accumulated squared gradient norms
  (``b_k^2 = b_0^2 + sum_of_squares``; ``b_0`` is added at each step so that it may be traced and changed)."""

  sum_of_squares: jax.Array


def scale_by_adagrad_norm(b0: float = 1e-2) -> optax.GradientTransformation:
  r"""AdaGrad-Norm: one scalar step size for all coordinates (Ward et al., 2019; the model step of AdAdaGrad-Norm).

  ``b_k^2 = b_{k-1}^2 + ||g_k||^2`` and ``u_k = g_k / b_k`` (chain with ``optax.scale(-lr)``). The state holds
  ``b_k^2 - b_0^2``, so ``b0`` may be traced (``optax.inject_hyperparams``) and changed between steps.

  Args:
    b0: initial accumulator ``b_0`` (> 0).

  References:
    Ward, Wu, Bottou, `AdaGrad stepsizes: sharp convergence over nonconvex landscapes
    <https://arxiv.org/abs/1806.01811>`_, 2019; Lau et al., `AdAdaGrad <https://arxiv.org/abs/2402.11215>`_, 2024.
  """
  check_positive("b0", b0)

  def init_fn(params):
    del params
    return AdaGradNormState(jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    total = state.sum_of_squares + jnp.square(optax.global_norm(updates)).astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.square(jnp.asarray(b0, jnp.float32)) + total)
    return jax.tree.map(lambda g: (g * inv).astype(g.dtype), updates), AdaGradNormState(total)

  return optax.GradientTransformation(init_fn, update_fn)


def adagrad_norm(learning_rate: optax.ScalarOrSchedule, b0: float = 1e-2) -> optax.GradientTransformation:
  """AdaGrad-Norm, ``x <- x - lr * g / b_k`` (see :func:`scale_by_adagrad_norm`)."""
  if not callable(learning_rate):
    check_positive("learning_rate", learning_rate)
  return optax.chain(scale_by_adagrad_norm(b0), optax.scale_by_learning_rate(learning_rate))
