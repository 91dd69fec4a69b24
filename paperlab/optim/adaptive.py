"""Adafactor and decoupled weight decay (AdamW / SGDW), reusing optax and adding only what optax lacks.

* Adafactor: ``optax.adafactor`` already has the factored second moment, the ``1 - t^-0.8`` decay schedule, update
  clipping and the parameter-scale step. Missing pieces: the relative step size (:func:`adafactor_relative_step`)
  and a paper-defaults alias (:func:`adafactor_paper`) that factors every matrix and exposes ``eps2``.
* AdamW / SGDW: ``optax.adamw`` multiplies the decay by the learning rate (``lr * wd``, as ``torch.optim.AdamW``).
  The paper decouples the decay from the base rate ``alpha`` and multiplies both by the schedule multiplier
  ``eta_t``: :func:`adamw_paper`, :func:`sgdw`; :func:`normalized_weight_decay` is the paper's normalized lambda.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_non_negative, check_positive, check_range

__all__ = ["adafactor_relative_step", "adafactor_paper", "adamw_paper", "sgdw", "normalized_weight_decay",
           "state_size"]

MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def adafactor_relative_step(max_step: float = 1e-2) -> optax.Schedule:
  """Relative step size ``rho_t = min(max_step, 1 / sqrt(t))`` (t = count + 1).

  Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", arXiv:1804.04235, Sec. 8
  and Algorithm 4-5 (``max_step = 1e-2``). Used as the learning rate of a chain that also applies
  ``optax.scale_by_param_block_rms`` (the ``max(eps2, RMS(X))`` factor).
  """
  check_positive("max_step", max_step)

  def schedule(count: chex.Numeric) -> chex.Numeric:
    t = jnp.asarray(count, jnp.float32) + 1.0
    return jnp.minimum(max_step, jax.lax.rsqrt(t))

  return schedule


def adafactor_paper(learning_rate: Optional[optax.ScalarOrSchedule] = None, decay_rate: float = 0.8,
                    clipping_threshold: Optional[float] = 1.0, eps1: float = 1e-30, eps2: float = 1e-3,
                    momentum: Optional[float] = None, factored: bool = True, min_dim_size_to_factor: int = 1,
                    weight_decay: Optional[float] = None, mask: MaskOrFn = None) -> optax.GradientTransformation:
  """Adafactor with the paper's defaults: factored second moments, ``1 - t^-0.8`` decay, clipping, relative step.

  For a matrix ``G``: ``R_t = b_t R + (1 - b_t) (G^2 + eps1) 1``, ``C_t = b_t C + (1 - b_t) 1^T (G^2 + eps1)``,
  ``V_t = R_t C_t / (1^T R_t)``, ``U = G / sqrt(V_t)``, ``U <- U / max(1, RMS(U) / d)``,
  ``X <- X - max(eps2, RMS(X)) rho_t U`` with ``b_t = 1 - t^-0.8`` and ``rho_t = min(1e-2, 1/sqrt(t))``; vectors keep
  an unfactored EMA of ``G^2``. Built from ``optax.scale_by_factored_rms``, ``optax.clip_by_block_rms``,
  ``optax.scale_by_param_block_rms`` (the same pieces as ``optax.adafactor``).

  Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", arXiv:1804.04235,
  Algorithms 4 and 5 with Sec. 7 (update clipping, d=1), Sec. 8 (relative step) and Sec. 9 (``beta1 = 0``).

  Args:
    learning_rate: ``None`` uses :func:`adafactor_relative_step` (the paper); a float/schedule replaces ``rho_t``.
    decay_rate: exponent ``c`` of ``b_t = 1 - t^-c`` (paper 0.8), in (0, 1].
    clipping_threshold: ``d`` (paper 1.0, >= 1), or ``None`` for no clipping.
    eps1: added to ``G^2`` (paper 1e-30).
    eps2: lower bound of the parameter scale ``RMS(X)`` (paper 1e-3).
    momentum: ``beta1`` (paper: none).
    factored: factor the second moment of matrices (``False``: the unfactored ablation).
    min_dim_size_to_factor: factor only when both of the two largest dims are at least this (paper: always, 1).
    weight_decay: optional decoupled decay rate (not in the paper), with ``mask``.
  """
  check_range("decay_rate", decay_rate, 0.0, 1.0, low_inclusive=False)
  if clipping_threshold is not None:
    check_range("clipping_threshold", clipping_threshold, 1.0, None)
  check_non_negative("eps1", eps1)
  check_non_negative("eps2", eps2)
  if momentum is not None:
    check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
  if weight_decay is not None:
    check_non_negative("weight_decay", weight_decay)
  if learning_rate is None:
    learning_rate = adafactor_relative_step()
  elif not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  chain = [optax.scale_by_factored_rms(factored=factored, decay_rate=decay_rate,
                                       min_dim_size_to_factor=min_dim_size_to_factor, epsilon=eps1)]
  if clipping_threshold is not None:
    chain.append(optax.clip_by_block_rms(clipping_threshold))
  chain.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  chain.append(optax.scale_by_param_block_rms(eps2))
  if momentum is not None:
    chain.append(optax.ema(momentum, debias=False))
  if weight_decay is not None:
    chain.append(optax.add_decayed_weights(weight_decay, mask=mask))
  chain.append(optax.scale(-1.0))
  return optax.chain(*chain)


def _schedule_or_one(schedule: Optional[optax.ScalarOrSchedule]) -> Callable[[chex.Numeric], chex.Numeric]:
  if schedule is None:
    return lambda count: jnp.ones([], jnp.float32)
  if callable(schedule):
    return schedule
  check_non_negative("schedule", schedule)
  return lambda count: jnp.asarray(schedule, jnp.float32)


def adamw_paper(learning_rate: float = 1e-3, schedule: Optional[optax.ScalarOrSchedule] = None, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, mask: MaskOrFn = None
                ) -> optax.GradientTransformation:
  """AdamW as in the paper: ``theta <- theta - eta_t (alpha m_hat / (sqrt(v_hat) + eps) + lambda theta)``.

  ``alpha`` is ``learning_rate`` (named as in optax). ``lambda`` (``weight_decay``) is decoupled from the base rate
  ``alpha``; both are multiplied by the schedule
  multiplier ``eta_t`` (e.g. cosine annealing ``optax.cosine_decay_schedule(1.0, T)`` or warm restarts
  ``optax.sgdr_schedule``). ``optax.adamw(lr, weight_decay=w)`` is the special case ``alpha = lr``,
  ``lambda = lr * w`` with a constant multiplier.

  Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101, Algorithm 2,
  line 12. Defaults alpha=1e-3, betas=(0.9, 0.999), eps=1e-8. Every numeric argument may be traced
  (``optax.inject_hyperparams``).

  Args:
    learning_rate: the paper's base step size ``alpha`` (> 0); 1e-3 as in the paper.
    schedule: schedule multiplier ``eta_t`` (``count -> float``), a constant, or ``None`` for 1.
    b1, b2: in [0, 1).
    eps: Adam epsilon.
    weight_decay: ``lambda`` (>= 0), NOT multiplied by ``alpha``.
    mask: leaves that get decay (pytree of bools or a callable), as in ``optax.adamw``.
  """
  check_positive("learning_rate", learning_rate)
  check_range("b1", b1, 0.0, 1.0, high_inclusive=False)
  check_range("b2", b2, 0.0, 1.0, high_inclusive=False)
  check_non_negative("eps", eps)
  check_non_negative("weight_decay", weight_decay)
  eta = _schedule_or_one(schedule)
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), optax.scale(learning_rate),
                     optax.add_decayed_weights(weight_decay, mask=mask), optax.scale_by_schedule(eta),
                     optax.scale(-1.0))


def sgdw(learning_rate: float, momentum: float = 0.9, weight_decay: float = 0.0,
         schedule: Optional[optax.ScalarOrSchedule] = None, nesterov: bool = False, mask: MaskOrFn = None
         ) -> optax.GradientTransformation:
  """SGDW: momentum SGD with decoupled weight decay, ``m_t = b m_{t-1} + eta_t alpha g_t``,
  ``theta_t = theta_{t-1} - m_t - eta_t lambda theta_{t-1}``.

  ``alpha`` is ``learning_rate`` (named as in optax; the paper gives no default for SGD). With a constant multiplier
  this equals ``pytorch_optimizer.SGDW(lr=alpha, weight_decay=lambda / alpha)``; with
  plain SGD (``momentum=0``) it equals L2 regularization with coefficient ``lambda / alpha`` (they only differ
  under momentum or adaptivity).

  Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019, arXiv:1711.05101, Algorithm 1,
  lines 6-8.

  Args:
    learning_rate: the paper's base learning rate ``alpha`` (> 0).
    momentum: ``beta1`` in [0, 1).
    weight_decay: ``lambda`` (>= 0), NOT multiplied by ``alpha``.
    schedule: multiplier ``eta_t`` or ``None``.
    nesterov: Nesterov momentum.
    mask: leaves that get decay.
  """
  check_positive("learning_rate", learning_rate)
  check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
  check_non_negative("weight_decay", weight_decay)
  eta = _schedule_or_one(schedule)
  step = optax.chain(optax.scale_by_schedule(lambda c: learning_rate * eta(c)),
                     optax.trace(decay=momentum, nesterov=nesterov))
  decay = optax.chain(optax.add_decayed_weights(weight_decay, mask=mask), optax.scale_by_schedule(eta))
  # The momentum buffer sees only the scaled gradient; the decay term bypasses it (lines 6 and 8 of Alg. 1).
  return optax.chain(_sum_of(step, decay), optax.scale(-1.0))


def _sum_of(a: optax.GradientTransformation, b: optax.GradientTransformation) -> optax.GradientTransformation:
  """``a(g) + b(0)``: ``b`` only sees params (used for the decay term, which must not enter the momentum)."""

  def init_fn(params):
    return a.init(params), b.init(params)

  def update_fn(updates, state, params=None):
    ua, sa = a.update(updates, state[0], params)
    ub, sb = b.update(jax.tree.map(jnp.zeros_like, updates), state[1], params)
    return jax.tree.map(jnp.add, ua, ub), (sa, sb)

  return optax.GradientTransformation(init_fn, update_fn)


def normalized_weight_decay(lambda_norm: float, batch_size: int, n_train: int, epochs: float) -> float:
  """``lambda = lambda_norm * sqrt(b / (B T))``: the decay that keeps its total effect fixed across budgets.

  Loshchilov & Hutter, "Decoupled Weight Decay Regularization", arXiv:1711.05101, Appendix B.1 (Eq. 15).
  """
  check_non_negative("lambda_norm", lambda_norm)
  check_positive("batch_size", batch_size)
  check_positive("n_train", n_train)
  check_positive("epochs", epochs)
  return float(lambda_norm) * math.sqrt(batch_size / (n_train * epochs))


def state_size(opt_state: optax.OptState) -> int:
  """Number of array elements held in an optimizer state (memory comparisons, e.g. Adafactor vs Adam)."""
  return int(sum(jnp.size(x) for x in jax.tree.leaves(opt_state)))
