"""Oracle pruning analysis: the loss change of removing each structure, masks drawn at a fixed sparsity, and the
rank correlation between the loss right after pruning and the performance after retraining.

Feng, Tao & Wang, "Is Oracle Pruning the True Oracle?", arXiv:2412.00143, Sec. 3: *oracle pruning* keeps the
weights whose removal raises the training loss the least (the premise of Mozer & Smolensky's skeletonization and
LeCun et al.'s optimal brain damage). The study prunes one pre-trained model with many masks at one sparsity,
retrains every pruned model, and measures Kendall's ``tau`` between the pruned train loss (before retraining) and
the test performance after retraining. Oracle pruning is valid when ``tau`` is strongly negative (lower loss before
-> higher accuracy after); the paper finds it weak or absent on modern models and tasks, weaker as the task grows
harder.

The correlations are jittable ``O(n^2)`` pair counts (``n`` = number of pruned models, a few hundred at most);
:func:`oracle_pruning_correlation` is the host loop over masks (it calls the user's evaluation and retraining).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.prune.masks import apply_masks
from paperlab.prune.structured import select_top

PyTree = Any

__all__ = ["kendall_tau", "spearman_rho", "structure_removal_losses", "oracle_keep", "random_structured_masks",
           "oracle_pruning_correlation"]


def _pair(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  if x.ndim != 1 or x.shape != y.shape or x.shape[0] < 2:
    raise ValueError(f"x and y must be 1-D of the same length >= 2, got shapes {x.shape} and {y.shape}.")
  return x, y


def kendall_tau(x: jax.Array, y: jax.Array) -> jax.Array:
  """Kendall's tau-b (the variant of ``scipy.stats.kendalltau``, and the statistic of Feng et al.):
  ``sum_{i<j} s_ij t_ij / sqrt(sum s_ij^2 * sum t_ij^2)`` with ``s_ij = sign(x_i - x_j)``, ``t_ij = sign(y_i -
  y_j)``, i.e. ``(P - Q) / sqrt((P + Q + T_x)(P + Q + T_y))`` with ties. NaN when either input is constant.

  Raises:
    ValueError: inputs not 1-D of one length >= 2.
  """
  x, y = _pair(x, y)
  s = jnp.sign(x[:, None] - x[None, :])
  t = jnp.sign(y[:, None] - y[None, :])
  return jnp.sum(s * t) / jnp.sqrt(jnp.sum(s * s) * jnp.sum(t * t))


def _average_ranks(x: jax.Array) -> jax.Array:
  less = jnp.sum(x[None, :] < x[:, None], axis=1)
  equal = jnp.sum(x[None, :] == x[:, None], axis=1)
  return less + (equal + 1) / 2.0


def spearman_rho(x: jax.Array, y: jax.Array) -> jax.Array:
  """Spearman's rank correlation: Pearson correlation of the average ranks (ties share their mean rank), as
  ``scipy.stats.spearmanr``. NaN when either input is constant.

  Raises:
    ValueError: inputs not 1-D of one length >= 2.
  """
  x, y = _pair(x, y)
  rx, ry = _average_ranks(x), _average_ranks(y)
  rx, ry = rx - rx.mean(), ry - ry.mean()
  return jnp.sum(rx * ry) / jnp.sqrt(jnp.sum(rx * rx) * jnp.sum(ry * ry))


def structure_removal_losses(loss_of_mask: Callable[[jax.Array], jax.Array], num_structures: int) -> jax.Array:
  """Oracle scores: ``L(mask without structure i) - L(full mask)`` for every structure ``i`` (one forward pass
  per structure, ``vmap``-ed), where ``loss_of_mask(keep)`` evaluates the model with the structures where the
  ``(num_structures,)`` float keep-vector is 0 removed. Oracle pruning removes the smallest.

  Raises:
    ValueError: ``num_structures < 1``.
  """
  if not isinstance(num_structures, int) or num_structures < 1:
    raise ValueError(f"num_structures must be a positive int, got {num_structures!r}.")
  full = jnp.ones((num_structures,), jnp.float32)
  removed = 1.0 - jnp.eye(num_structures, dtype=jnp.float32)
  return jax.vmap(loss_of_mask)(removed) - loss_of_mask(full)


def oracle_keep(removal_losses: jax.Array, keep: int) -> jax.Array:
  """Bool keep-mask of the ``keep`` structures whose removal raises the loss the most (oracle pruning drops the
  others)."""
  return jnp.zeros(removal_losses.shape, bool).at[select_top(removal_losses, keep)].set(True)


def random_structured_masks(key: jax.Array, num_structures: int, keep: int, num_masks: int) -> jax.Array:
  """``(num_masks, num_structures)`` bool masks, each keeping exactly ``keep`` structures chosen uniformly.

  Raises:
    ValueError: ``keep`` outside ``[0, num_structures]`` or ``num_masks < 1``.
  """
  if not isinstance(keep, int) or not 0 <= keep <= num_structures:
    raise ValueError(f"keep must be an int in [0, num_structures={num_structures}], got {keep!r}.")
  if not isinstance(num_masks, int) or num_masks < 1:
    raise ValueError(f"num_masks must be a positive int, got {num_masks!r}.")
  u = jax.random.uniform(key, (num_masks, num_structures))
  ranks = jnp.argsort(jnp.argsort(u, axis=1, stable=True), axis=1, stable=True)
  return ranks < keep


def oracle_pruning_correlation(params: PyTree, masks: Sequence[PyTree], loss_fn: Callable[[PyTree], float],
                               retrain_fn: Callable[[PyTree, PyTree], float]) -> dict:
  """The study of Feng et al. (arXiv:2412.00143, Sec. 3) for one model: for every mask, the loss of the pruned
  model before retraining and the performance ``retrain_fn(params, mask)`` after retraining, then Kendall's tau
  (with its two-sided p-value from ``scipy.stats.kendalltau``) and Spearman's rho between them. Host loop.

  Args:
    params: the pre-trained parameters.
    masks: keep-mask pytrees (one pruned model each), at least 2.
    loss_fn: ``loss_fn(pruned_params) -> float``, the (train) loss right after pruning.
    retrain_fn: ``retrain_fn(params, mask) -> float``, the metric after retraining (e.g. test accuracy).

  Returns:
    ``{"loss_before": [...], "metric_after": [...], "tau": float, "tau_pvalue": float, "rho": float}``.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  if len(masks) < 2:
    raise ValueError(f"masks must hold at least 2 masks, got {len(masks)}.")
  before = np.asarray([float(loss_fn(apply_masks(params, m))) for m in masks])
  after = np.asarray([float(retrain_fn(params, m)) for m in masks])
  return {"loss_before": before.tolist(), "metric_after": after.tolist(),
          "tau": float(kendall_tau(before, after)), "tau_pvalue": float(stats.kendalltau(before, after).pvalue),
          "rho": float(spearman_rho(before, after))}
