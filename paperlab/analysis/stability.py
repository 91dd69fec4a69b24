"""Learning-rate sensitivity, the small-scale proxy of training instability of Wortsman et al. (2023).

Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities", arXiv:2309.14322,
Sec. 2 (Eq. 1): over a learning-rate range :math:`[a, b]`,

.. math:: \\mathrm{LR\\ sensitivity} = \\mathbb{E}_{\\eta \\in [a, b]}\\bigl[\\min(\\ell(A(\\eta)), \\ell_0)
          - \\min_{\\eta' \\in [a, b]} \\ell(A(\\eta'))\\bigr],

with :math:`\\ell_0` the loss at initialisation (a run that diverges, or ends worse than it started, counts as
:math:`\\ell_0`). The expectation is the mean over a grid of learning rates (log-spaced in the paper).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

__all__ = ["lr_sensitivity"]


def lr_sensitivity(losses_by_lr: chex.Array, init_loss: chex.Numeric, *, axis: int = -1) -> jax.Array:
  """LR sensitivity: the mean over the LR grid of ``min(L(eta), L_0) - L*``, with ``L*`` the best capped loss.

  Wortsman et al. 2023, arXiv:2309.14322, Eq. 1. Non-finite losses (diverged runs) count as ``init_loss``.
  0 means every learning rate of the grid reaches the best loss; ``init_loss - L*`` (its maximum) means only one
  does. Works under ``jax.jit`` and ``jax.vmap`` (e.g. over seeds or model variants).

  Args:
    losses_by_lr: final losses, one per learning rate along ``axis`` (any leading/trailing batch axes).
    init_loss: the loss at initialisation ``L_0`` (a scalar or broadcastable to the reduced shape).
    axis: the learning-rate axis.

  Returns:
    float32 sensitivity with ``axis`` reduced.
  """
  losses = jnp.asarray(losses_by_lr, jnp.float32)
  if losses.ndim == 0 or losses.shape[axis] < 1:
    raise ValueError(f"losses_by_lr must have a non-empty learning-rate axis {axis}, got shape "
                     f"{tuple(losses.shape)}.")
  init = jnp.expand_dims(jnp.asarray(init_loss, jnp.float32), axis) if jnp.ndim(init_loss) else \
      jnp.asarray(init_loss, jnp.float32)
  capped = jnp.where(jnp.isfinite(losses), jnp.minimum(losses, init), init)
  return jnp.mean(capped - jnp.min(capped, axis=axis, keepdims=True), axis=axis)
