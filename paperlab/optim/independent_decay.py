"""Weight decay that is independent of the learning rate (Wortsman et al. 2023).

Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities", arXiv:2309.14322,
Sec. 3.2.2: AdamW as usually implemented (``optax.adamw``, PyTorch) decays by ``eta * lambda * theta``, so the
decay strength moves with the learning rate. The paper decouples it: with schedule multiplier :math:`s_t` (peak 1),

.. math:: \\theta_{t+1} = \\theta_t - s_t \\eta\\, u_t - s_t \\lambda\\, \\theta_t,

:math:`\\lambda = 10^{-4}` in the paper. :func:`independent_weight_decay` adds the last term; chain it *after* the
learning-rate scaling, e.g. ``optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(lr),
independent_weight_decay(1e-4))``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_non_negative

__all__ = ["IndependentWeightDecayState", "independent_weight_decay"]


class IndependentWeightDecayState(NamedTuple):
  count: jax.Array  # int32 step counter for the schedule multiplier


def independent_weight_decay(weight_decay: float = 1e-4, schedule: Optional[optax.Schedule] = None,
                             mask: Optional[Union[Any, Callable[[optax.Params], Any]]] = None
                             ) -> optax.GradientTransformation:
  """Add ``-s_t * weight_decay * theta`` to the updates: weight decay not multiplied by the learning rate.

  Wortsman et al. 2023, arXiv:2309.14322, Sec. 3.2.2, ``theta <- theta - s_t eta u - s_t lambda theta``, default
  ``lambda = 1e-4`` (the paper's). Place it after the learning-rate scaling in a chain (it writes the final,
  signed update). ``weight_decay`` may be traced (``optax.inject_hyperparams``); jit-safe, no host round-trip.

  Args:
    weight_decay: ``lambda`` (>= 0), NOT multiplied by the learning rate.
    schedule: the learning-rate schedule's multiplier ``s_t`` (``count -> float``, 1 at the peak); ``None``
      for a constant 1. Pass ``lambda t: lr_schedule(t) / peak_lr`` to follow a learning-rate schedule.
    mask: which leaves decay (a pytree of bools or a callable), as in ``optax.add_decayed_weights``.
  """
  check_non_negative("weight_decay", weight_decay)

  def init_fn(params):
    del params
    return IndependentWeightDecayState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("independent_weight_decay needs params: call update(updates, state, params).")
    s = jnp.ones([], jnp.float32) if schedule is None else jnp.asarray(schedule(state.count), jnp.float32)
    rate = s * jnp.asarray(weight_decay, jnp.float32)
    new = jax.tree.map(lambda u, p: u - (rate * p).astype(u.dtype), updates, params)
    return new, IndependentWeightDecayState(optax.safe_increment(state.count))

  tx = optax.GradientTransformation(init_fn, update_fn)
  return optax.masked(tx, mask) if mask is not None else tx
