"""Learning-rate schedules from papers, as optax ``Schedule``s (pure, jittable ``step -> value`` functions).

* 1cycle and cyclical momentum, and the LR range test (Smith, 2018, arXiv:1803.09820);
* warmup-stable-decay / cooldown (Hu et al., 2024, arXiv:2404.06395; Hägele et al., 2024, arXiv:2405.18392);
* the Power scheduler (Shen et al., 2024, arXiv:2408.13359);
* the last-iterate convex bound that predicts schedule quality and the optimal base LR (Schaipp et al., 2025,
  arXiv:2501.18965, after Defazio et al., 2023, arXiv:2310.07831);
* regime adaptation, "train longer" (Hoffer et al., 2017, arXiv:1705.08741);
* effective-LR diagnostics for scale-invariant weights under weight decay (D'Angelo et al., 2024,
  arXiv:2310.04415).

Every schedule accepts a traced integer or float step, so it composes with ``optax.inject_hyperparams``,
``optax.scale_by_schedule`` and ``jax.jit``/``jax.vmap``.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_choice, check_non_negative, check_positive, check_range

__all__ = [
    "one_cycle",
    "one_cycle_momentum",
    "LRRangeTestResult",
    "lr_range_test",
    "COOLDOWN_TYPES",
    "cooldown_factor",
    "wsd_schedule",
    "power_schedule",
    "last_iterate_bound",
    "optimal_base_lr",
    "regime_adaptation",
    "effective_lr",
    "angular_update",
    "equilibrium_angular_update",
]

ANNEAL_STRATEGIES = ("linear", "cos")
COOLDOWN_TYPES = ("linear", "1-sqrt", "1-square", "cosine", "exp")


def _check_int(name: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be a Python int, got {value!r} of type {type(value).__name__}.")
  if value < low:
    raise ValueError(f"{name} must be >= {low}, got {value!r}.")
  return value


def _anneal_segments(step, knots: list[float], values: list, strategy: str) -> jax.Array:
  """Interpolate ``values`` between ``knots``, linearly or by a half cosine; constant outside the knots.

  A step equal to a knot belongs to the segment that ends there (as in ``torch.optim.lr_scheduler.OneCycleLR``),
  which makes no difference since segments meet continuously.
  """
  step = jnp.asarray(step, jnp.float32)
  k = jnp.asarray(knots, jnp.float32)
  v = jnp.stack([jnp.asarray(x, jnp.float32) for x in values])
  seg = jnp.clip(jnp.searchsorted(k, step, side="left") - 1, 0, len(knots) - 2)
  start, end = v[seg], v[seg + 1]
  # Weights of both ends computed from their own distances, so values near either end keep full relative
  # precision in float32 (``start + (end - start) * pct`` loses it when the LR falls by orders of magnitude).
  length = k[seg + 1] - k[seg]
  w_end = jnp.clip((step - k[seg]) / length, 0.0, 1.0)
  w_start = jnp.clip((k[seg + 1] - step) / length, 0.0, 1.0)
  if strategy == "cos":  # end + (start - end)(1 + cos(pi p)) / 2, written as a sum of two positive terms
    w_end, w_start = jnp.sin(0.5 * jnp.pi * w_end) ** 2, jnp.sin(0.5 * jnp.pi * w_start) ** 2
  return w_start * start + w_end * end


def _one_cycle_knots(total_steps: int, pct_start: float, three_phase: bool) -> list[float]:
  _check_int("total_steps", total_steps, 2)
  check_range("pct_start", pct_start, 0.0, 0.5 if three_phase else 1.0, low_inclusive=False,
              high_inclusive=False)
  up_end = pct_start * total_steps - 1.0
  knots = [0.0, up_end, 2.0 * pct_start * total_steps - 2.0, total_steps - 1.0] if three_phase else [
      0.0, up_end, total_steps - 1.0]
  if any(b <= a for a, b in zip(knots, knots[1:])):
    raise ValueError(f"pct_start={pct_start!r} with total_steps={total_steps!r} leaves a phase with no steps "
                     f"(phase boundaries {knots}); raise total_steps or move pct_start towards the middle.")
  return knots


def one_cycle(total_steps: int, max_lr: chex.Numeric, *, pct_start: float = 0.45, div_factor: float = 10.0,
              final_div_factor: float = 1e2, three_phase: bool = True,
              anneal_strategy: str = "linear") -> optax.Schedule:
  r"""The 1cycle learning-rate policy of Smith (2018).

  Three phases (``three_phase=True``, the paper's form): the LR rises from ``max_lr / div_factor`` to ``max_lr``
  over the first ``pct_start`` of training, falls back symmetrically to ``max_lr / div_factor``, then anneals to
  ``max_lr / (div_factor * final_div_factor)`` (the "annihilation" phase) over the remaining steps. With
  ``three_phase=False`` the LR falls from its peak straight to the minimum (fastai's variant). Phase
  boundaries follow ``torch.optim.lr_scheduler.OneCycleLR`` exactly: steps ``pct_start*T - 1``,
  ``2*pct_start*T - 2`` and ``T - 1``, so step ``T - 1`` is the last step and holds the minimum (later steps stay
  there).

  ``optax.linear_onecycle_schedule`` places its knots one step later (at ``int(pct_start*T)``) and takes fastai's
  defaults, so it is not reused here; the difference is at most one step of the schedule.

  Args:
    total_steps: ``T``, the number of optimizer steps of the cycle (>= 2).
    max_lr: the peak learning rate, e.g. the LR range test's suggestion.
    pct_start: fraction of ``T`` spent rising; Smith uses ~0.45 (with three phases it must be < 0.5).
    div_factor: ``max_lr / initial_lr``; the paper uses 3 to 20, typically ~10.
    final_div_factor: ``initial_lr / min_lr``; the annihilation takes the LR "several orders of magnitude" below
      the initial one.
    three_phase: the paper's symmetric cycle plus annihilation; ``False`` for the two-phase variant.
    anneal_strategy: ``'linear'`` (the paper) or ``'cos'`` (half-cosine interpolation within each phase).

  Returns:
    An optax schedule ``step -> lr``.

  References:
    Smith, `A disciplined approach to neural network hyper-parameters: Part 1 -- learning rate, batch size,
    momentum, and weight decay <https://arxiv.org/abs/1803.09820>`_, 2018 (Sec. 4.1).
  """
  knots = _one_cycle_knots(total_steps, pct_start, three_phase)
  check_positive("max_lr", max_lr)
  check_range("div_factor", div_factor, 1.0, None)
  check_range("final_div_factor", final_div_factor, 1.0, None)
  check_choice("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
  initial = max_lr / div_factor
  final = initial / final_div_factor
  values = [initial, max_lr, initial, final] if three_phase else [initial, max_lr, final]
  return lambda step: _anneal_segments(step, knots, values, anneal_strategy)


def one_cycle_momentum(total_steps: int, *, pct_start: float = 0.45, base_momentum: float = 0.85,
                       max_momentum: float = 0.95, three_phase: bool = True,
                       anneal_strategy: str = "linear") -> optax.Schedule:
  r"""Cyclical momentum, run inversely to :func:`one_cycle` (Smith, 2018, Sec. 4.3).

  Momentum falls from ``max_momentum`` to ``base_momentum`` while the LR rises, climbs back while the LR falls,
  and stays at ``max_momentum`` during the annihilation phase; same phase boundaries as :func:`one_cycle`
  (and as ``torch.optim.lr_scheduler.OneCycleLR(cycle_momentum=True)``). Feed it to
  ``optax.inject_hyperparams(optax.sgd)(learning_rate=one_cycle(...), momentum=one_cycle_momentum(...))``.

  Args:
    total_steps: the cycle length ``T`` (>= 2).
    pct_start: as in :func:`one_cycle`.
    base_momentum: the lowest momentum, at the LR peak (paper: 0.85).
    max_momentum: the momentum at the start and end (paper: 0.95).
    three_phase: as in :func:`one_cycle`.
    anneal_strategy: ``'linear'`` or ``'cos'``.

  References:
    Smith, `A disciplined approach to neural network hyper-parameters: Part 1
    <https://arxiv.org/abs/1803.09820>`_, 2018.
  """
  knots = _one_cycle_knots(total_steps, pct_start, three_phase)
  check_range("base_momentum", base_momentum, 0.0, 1.0, high_inclusive=False)
  check_range("max_momentum", max_momentum, 0.0, 1.0, high_inclusive=False)
  if base_momentum > max_momentum:
    raise ValueError(f"base_momentum must be <= max_momentum, got {base_momentum!r} > {max_momentum!r}.")
  check_choice("anneal_strategy", anneal_strategy, ANNEAL_STRATEGIES)
  values = ([max_momentum, base_momentum, max_momentum, max_momentum] if three_phase
            else [max_momentum, base_momentum, max_momentum])
  return lambda step: _anneal_segments(step, knots, values, anneal_strategy)


class LRRangeTestResult(NamedTuple):
  """Outcome of :func:`lr_range_test`.

  Attributes:
    lrs: the learning rate used at each step, shape ``(num_steps,)``.
    losses: the training loss reported by each step.
    smoothed_losses: bias-corrected exponential moving average of ``losses``.
    suggested_lr: the largest LR before the loss stops falling: the LR of the step that produced the smoothed
      minimum (before divergence), corrected for the EMA's lag of ``smoothing / (1 - smoothing)`` steps.
    diverged_at: index of the first step whose smoothed loss exceeds ``divergence_factor`` times the best one so
      far (or is not finite); ``num_steps`` if that never happens.
    state: the training state after the last step.
  """

  lrs: jax.Array
  losses: jax.Array
  smoothed_losses: jax.Array
  suggested_lr: jax.Array
  diverged_at: jax.Array
  state: object


def lr_range_test(step_fn: Callable, state, *, lr_min: float = 1e-5, lr_max: float = 10.0,
                  num_steps: int = 100, spacing: str = "exponential", smoothing: float = 0.9,
                  divergence_factor: float = 4.0) -> LRRangeTestResult:
  r"""The LR range test (Smith, 2018, Sec. 4.1): a short run whose LR grows from ``lr_min`` to ``lr_max``.

  ``lr_t = lr_min * (lr_max / lr_min)^(t / (num_steps - 1))`` (``spacing='exponential'``) or linear in ``t``.
  The loss is smoothed by a bias-corrected EMA, ``s_t = (beta*m_{t-1} + (1-beta)*loss_t) / (1-beta^(t+1))``,
  and the suggested maximal LR is the LR at the smoothed minimum before divergence, moved back by the EMA's mean
  lag ``beta / (1 - beta)`` steps: "the largest LR before the loss stops falling" (Smith's ``lr_max`` for
  :func:`one_cycle`). Once the smoothed loss exceeds
  ``divergence_factor`` times the best so far, the remaining steps are ignored.

  The whole test is one ``jax.lax.scan``, so it jits (with ``step_fn`` static) and vmaps over seeds.

  Args:
    step_fn: ``step_fn(state, lr, t) -> (state, loss)``: one training step at learning rate ``lr`` (e.g. set
      ``opt_state.hyperparams['learning_rate']`` of an ``optax.inject_hyperparams`` optimizer) on the batch
      of step ``t``.
    state: the initial training state (any pytree).
    lr_min: first LR (paper: ~1e-5).
    lr_max: last LR (paper: ~1 to 10).
    num_steps: length of the test (>= 2).
    spacing: ``'exponential'`` or ``'linear'``.
    smoothing: EMA factor ``beta`` in [0, 1).
    divergence_factor: divergence threshold, > 1.

  Returns:
    An :class:`LRRangeTestResult`.

  References:
    Smith, `A disciplined approach to neural network hyper-parameters: Part 1
    <https://arxiv.org/abs/1803.09820>`_, 2018; Smith, `Cyclical Learning Rates for Training Neural Networks
    <https://arxiv.org/abs/1506.01186>`_, 2017.
  """
  check_positive("lr_min", lr_min)
  check_positive("lr_max", lr_max)
  if lr_min >= lr_max:
    raise ValueError(f"lr_min must be < lr_max, got lr_min={lr_min!r}, lr_max={lr_max!r}.")
  _check_int("num_steps", num_steps, 2)
  check_choice("spacing", spacing, ("exponential", "linear"))
  check_range("smoothing", smoothing, 0.0, 1.0, high_inclusive=False)
  check_range("divergence_factor", divergence_factor, 1.0, None, low_inclusive=False)
  t = jnp.arange(num_steps, dtype=jnp.float32)
  if spacing == "exponential":
    lrs = lr_min * (lr_max / lr_min) ** (t / (num_steps - 1))
  else:
    lrs = lr_min + (lr_max - lr_min) * t / (num_steps - 1)

  def body(state, xs):
    lr, i = xs
    state, loss = step_fn(state, lr, i)
    return state, jnp.asarray(loss, jnp.float32)

  state, losses = jax.lax.scan(body, state, (lrs, jnp.arange(num_steps)))

  def ema(m, xs):
    loss, i = xs
    m = smoothing * m + (1.0 - smoothing) * loss
    return m, m / (1.0 - smoothing ** (i + 1.0))

  _, smoothed = jax.lax.scan(ema, jnp.zeros((), jnp.float32), (losses, t))
  best_so_far = jax.lax.cummin(jnp.where(jnp.isfinite(smoothed), smoothed, jnp.inf))
  bad = ~jnp.isfinite(smoothed) | (smoothed > divergence_factor * best_so_far)
  diverged_at = jnp.where(jnp.any(bad), jnp.argmax(bad), num_steps)
  valid = jnp.arange(num_steps) < diverged_at
  # The EMA of a loss curve that is locally quadratic around its minimum is the same parabola delayed by the
  # EMA's mean lag beta / (1 - beta) steps; and losses[t] is measured before step t, so the lowest loss was
  # produced by the LR one step earlier.
  lag = round(smoothing / (1.0 - smoothing))
  suggested = lrs[jnp.maximum(jnp.argmin(jnp.where(valid, smoothed, jnp.inf)) - 1 - lag, 0)]
  return LRRangeTestResult(lrs, losses, smoothed, suggested, diverged_at, state)


def cooldown_factor(progress: chex.Numeric, decay_type: str = "linear", final_ratio: float = 0.0) -> jax.Array:
  r"""Shape of a cooldown, from 1 at ``progress = 0`` to ``final_ratio`` at ``progress = 1`` (clipped outside).

  With ``p`` the progress and ``r`` the final ratio: ``'linear'``: ``r + (1-r)(1-p)``; ``'1-sqrt'``:
  ``r + (1-r)(1-sqrt(p))`` (Hägele et al., 2024, their best cooldown); ``'1-square'``: ``r + (1-r)(1-p^2)``;
  ``'cosine'``: ``r + (1-r)(1+cos(pi p))/2``; ``'exp'``: ``r^p`` (geometric, MiniCPM-style; needs ``r > 0``).
  For ``r = 0`` the first four equal ``pytorch_optimizer``'s WSD cooldowns.
  """
  check_choice("decay_type", decay_type, COOLDOWN_TYPES)
  check_range("final_ratio", final_ratio, 0.0, 1.0)
  if decay_type == "exp" and isinstance(final_ratio, (int, float)) and final_ratio <= 0:
    raise ValueError(f"final_ratio must be > 0 for decay_type='exp' (geometric decay), got {final_ratio!r}.")
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  if decay_type == "exp":
    return jnp.asarray(final_ratio, jnp.float32) ** p
  shape = {"linear": lambda: 1.0 - p, "1-sqrt": lambda: 1.0 - jnp.sqrt(p), "1-square": lambda: 1.0 - p * p,
           "cosine": lambda: 0.5 * (1.0 + jnp.cos(jnp.pi * p))}[decay_type]()
  return final_ratio + (1.0 - final_ratio) * shape


def _cooldown_schedule(value: chex.Numeric, decay_steps: int, decay_type: str, final_ratio: float):
  return lambda count: value * cooldown_factor(count / decay_steps, decay_type, final_ratio)


def wsd_schedule(peak_value: chex.Numeric, total_steps: int, *, warmup_steps: int = 0,
                 decay_steps: int | None = None, decay_fraction: float = 0.2, decay_type: str = "linear",
                 final_value_ratio: float = 0.0, init_value: float = 0.0) -> optax.Schedule:
  r"""Warmup-stable-decay (WSD, "trapezoidal") schedule with a cooldown.

  ``lr = init + (peak - init) t / W`` for ``t < W``; ``peak`` for ``W <= t < T - D``; then
  ``peak * cooldown_factor((t - (T - D)) / D)`` (see :func:`cooldown_factor`), reaching
  ``final_value_ratio * peak`` at ``t = T`` and staying there. Built from ``optax.linear_schedule``,
  ``optax.constant_schedule`` and ``optax.join_schedules``.

  Unlike a cosine schedule, the stable phase does not depend on ``T``, so a run can be extended and cooled down
  from any checkpoint. Hägele et al. find a ~20% cooldown (``decay_fraction=0.2``) with ``'1-sqrt'`` or linear
  shape matches cosine; Schaipp et al. show the convex last-iterate bound (:func:`last_iterate_bound`)
  reproduces this. Hu et al. (MiniCPM) used an exponential decay over ~10%.

  Args:
    peak_value: the stable LR.
    total_steps: ``T``, the step at which the cooldown ends.
    warmup_steps: ``W``, linear warmup steps (0 for none).
    decay_steps: ``D``, cooldown steps; defaults to ``round(decay_fraction * T)``.
    decay_fraction: cooldown fraction in [0, 1] used when ``decay_steps`` is None.
    decay_type: one of ``COOLDOWN_TYPES``.
    final_value_ratio: LR at the end of the cooldown, as a fraction of ``peak_value``.
    init_value: the LR at step 0 of the warmup.

  References:
    Hu et al., `MiniCPM <https://arxiv.org/abs/2404.06395>`_, 2024; Hägele et al., `Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations <https://arxiv.org/abs/2405.18392>`_, 2024;
    Schaipp et al., `The Surprising Agreement Between Convex Optimization Theory and Learning-Rate Scheduling
    for Large Model Training <https://arxiv.org/abs/2501.18965>`_, 2025.
  """
  check_non_negative("peak_value", peak_value)
  _check_int("total_steps", total_steps, 1)
  _check_int("warmup_steps", warmup_steps, 0)
  check_range("decay_fraction", decay_fraction, 0.0, 1.0)
  check_choice("decay_type", decay_type, COOLDOWN_TYPES)
  check_range("final_value_ratio", final_value_ratio, 0.0, 1.0)
  if decay_type == "exp" and final_value_ratio <= 0:
    raise ValueError(f"final_value_ratio must be > 0 for decay_type='exp', got {final_value_ratio!r}.")
  decay_steps = round(decay_fraction * total_steps) if decay_steps is None else decay_steps
  _check_int("decay_steps", decay_steps, 0)
  stable_steps = total_steps - warmup_steps - decay_steps
  if stable_steps < 0:
    raise ValueError(f"warmup_steps + decay_steps must be <= total_steps, got {warmup_steps} + {decay_steps} > "
                     f"{total_steps}.")
  schedules, boundaries = [], []
  if warmup_steps > 0:
    schedules.append(optax.linear_schedule(init_value, peak_value, warmup_steps))
    boundaries.append(warmup_steps)
  schedules.append(optax.constant_schedule(peak_value))
  if decay_steps > 0:
    boundaries.append(warmup_steps + stable_steps)
    schedules.append(_cooldown_schedule(peak_value, decay_steps, decay_type, final_value_ratio))
  else:
    boundaries.append(total_steps)
    schedules.append(optax.constant_schedule(peak_value * final_value_ratio))
  joined = optax.join_schedules(schedules, boundaries)
  return lambda step: jnp.asarray(joined(step), jnp.float32)


def power_schedule(batch_size: float, *, a: float = 4.0, b: float = -0.51, lr_max: float = 0.02,
                   tokens_per_step: float | None = None, warmup_steps: int = 0, total_steps: int | None = None,
                   decay_steps: int = 0, decay_type: str = "linear",
                   final_value_ratio: float = 0.0) -> optax.Schedule:
  r"""The Power scheduler (Shen et al., 2024): a WSD schedule whose stable phase follows a power law in tokens.

  With ``n = step * tokens_per_step`` the number of tokens seen and ``beta`` the batch size,
  ``f(n) = min(lr_max, beta * a * n^b)`` (their Eq. for the optimal WSD LR, ``eta_opt = beta a T^b``, used as a
  schedule). The LR is ``(t/W) f(n_W)`` during warmup, ``f(n)`` in the stable-power phase, and, when
  ``total_steps`` and ``decay_steps`` are given, ``f(n_{T-D}) * cooldown_factor((t-(T-D))/D)`` over the last
  ``D`` steps. The schedule needs the total length only to place the final decay, so runs can be extended.

  Paper defaults (their Sec. 4; the power law was fitted with ``b ~ -0.51`` and used with ``a = 4``,
  ``lr_max = 0.02`` under muP; verify against arXiv:2408.13359 for your setting). ``batch_size`` is in
  sequences and tokens in tokens in the paper; for non-sequence data use examples for both.

  Args:
    batch_size: ``beta`` in the power law (> 0).
    a: power-law amplitude (> 0).
    b: power-law exponent (< 0).
    lr_max: cap on the LR (> 0).
    tokens_per_step: tokens consumed by one step; defaults to ``batch_size``.
    warmup_steps: linear warmup steps.
    total_steps: the run length, needed only for the final decay.
    decay_steps: length of the final decay (0 for none).
    decay_type: shape of the decay (see :func:`cooldown_factor`); the paper decays to 0 over the last ~10%.
    final_value_ratio: LR after the decay as a fraction of its start.

  References:
    Shen et al., `Power Scheduler: A Batch Size and Token Number Agnostic Learning Rate Scheduler
    <https://arxiv.org/abs/2408.13359>`_, 2024.
  """
  check_positive("batch_size", batch_size)
  check_positive("a", a)
  check_range("b", b, None, 0.0, high_inclusive=False)
  check_positive("lr_max", lr_max)
  tokens_per_step = batch_size if tokens_per_step is None else tokens_per_step
  check_positive("tokens_per_step", tokens_per_step)
  _check_int("warmup_steps", warmup_steps, 0)
  _check_int("decay_steps", decay_steps, 0)
  check_choice("decay_type", decay_type, COOLDOWN_TYPES)
  check_range("final_value_ratio", final_value_ratio, 0.0, 1.0)
  if decay_steps > 0:
    if total_steps is None:
      raise ValueError("total_steps is required when decay_steps > 0 (the decay is placed at the end).")
    _check_int("total_steps", total_steps, 1)
    if warmup_steps + decay_steps > total_steps:
      raise ValueError(f"warmup_steps + decay_steps must be <= total_steps, got {warmup_steps} + {decay_steps} > "
                       f"{total_steps}.")
  if decay_type == "exp" and decay_steps > 0 and final_value_ratio <= 0:
    raise ValueError(f"final_value_ratio must be > 0 for decay_type='exp', got {final_value_ratio!r}.")

  def power(step):
    n = jnp.asarray(step, jnp.float32) * tokens_per_step
    return jnp.minimum(lr_max, batch_size * a * jnp.power(jnp.maximum(n, 1e-30), b))

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    lr = power(step)
    if warmup_steps > 0:
      lr = jnp.where(step < warmup_steps, step / warmup_steps * power(warmup_steps), lr)
    if decay_steps > 0:
      start = total_steps - decay_steps
      decayed = power(start) * cooldown_factor((step - start) / decay_steps, decay_type, final_value_ratio)
      lr = jnp.where(step >= start, decayed, lr)
    return lr

  return schedule


def _bound_terms(lrs: jax.Array, D: chex.Numeric, G: chex.Numeric) -> tuple[jax.Array, jax.Array]:
  """``(t1, t2 + t3)`` such that ``bound(gamma * lrs) = t1 / gamma + gamma * (t2 + t3)``."""
  lrs = jnp.asarray(lrs)
  chex.assert_rank(lrs, 1)
  total = jnp.sum(lrs)
  tail = jnp.cumsum(lrs[::-1])[::-1]            # S_k = sum_{t >= k} eta_t
  tail_sq = jnp.cumsum((lrs * lrs)[::-1])[::-1]  # Q_k = sum_{t >= k} eta_t^2
  t1 = D * D / (2.0 * total)
  t2 = G * G * jnp.sum(lrs * lrs) / (2.0 * total)
  # k = 1 .. T-1; a tail sum of zero (LR already at 0) contributes nothing, since eta_k is 0 there too.
  num = lrs[:-1] * G * G * tail_sq[:-1]
  den = tail[1:] * tail[:-1]
  t3 = 0.5 * jnp.sum(jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0))
  return t1, t2 + t3


def last_iterate_bound(lrs: jax.Array, D: chex.Numeric = 1.0, G: chex.Numeric = 1.0) -> jax.Array:
  r"""Last-iterate suboptimality bound of SGD on a convex, G-Lipschitz problem, for a given LR sequence.

  Defazio et al. (2023, Thm. 10), used by Schaipp et al. (2025) to compare schedules:

  .. math::
    E[f(x_T) - f^*] \le \frac{D^2}{2\sum_t \eta_t} + \frac{G^2 \sum_t \eta_t^2}{2\sum_t \eta_t}
      + \frac12 \sum_{k=1}^{T-1} \frac{\eta_k}{\sum_{t=k+1}^T \eta_t}
        \frac{G^2 \sum_{t=k}^T \eta_t^2}{\sum_{t=k}^T \eta_t},

  with ``D = ||x_1 - x*||``. Jittable.

  Args:
    lrs: the step sizes ``eta_1 .. eta_T`` (non-negative, shape ``(T,)``).
    D: distance from the start to the solution.
    G: Lipschitz constant (gradient-norm bound).

  References:
    Schaipp et al., `The Surprising Agreement Between Convex Optimization Theory and Learning-Rate Scheduling
    for Large Model Training <https://arxiv.org/abs/2501.18965>`_, 2025; Defazio et al., `Optimal Linear Decay
    Learning Rate Schedules and Further Refinements <https://arxiv.org/abs/2310.07831>`_, 2023.
  """
  check_positive("D", D)
  check_positive("G", G)
  t1, t23 = _bound_terms(lrs, D, G)
  return t1 + t23


def optimal_base_lr(schedule: optax.Schedule | jax.Array, total_steps: int | None = None, D: chex.Numeric = 1.0,
                    G: chex.Numeric = 1.0) -> tuple[jax.Array, jax.Array]:
  r"""Base LR ``gamma*`` minimising :func:`last_iterate_bound` of ``gamma * s_t``, and the bound it attains.

  Writing the bound as ``t1 / gamma + gamma (t2 + t3)``: ``gamma* = sqrt(t1 / (t2 + t3))`` and
  ``rate = 2 sqrt(t1 (t2 + t3))`` (Schaipp et al., 2025, Sec. 3). The shape ``s_t`` is ``schedule(t)`` for
  ``t = 0 .. T-1`` (e.g. :func:`wsd_schedule` or ``optax.cosine_decay_schedule`` with peak 1) or an explicit
  array.

  Returns:
    ``(gamma_star, rate)``.
  """
  if callable(schedule):
    if total_steps is None:
      raise ValueError("total_steps is required when schedule is a function.")
    _check_int("total_steps", total_steps, 1)
    lrs = jax.vmap(schedule)(jnp.arange(total_steps))
  else:
    lrs = jnp.asarray(schedule)
  check_positive("D", D)
  check_positive("G", G)
  t1, t23 = _bound_terms(lrs, D, G)
  return jnp.sqrt(t1 / t23), 2.0 * jnp.sqrt(t1 * t23)


def regime_adaptation(schedule: optax.Schedule, batch_ratio: float) -> optax.Schedule:
  r"""Stretch a schedule ``batch_ratio`` times: ``adapted(k t) = schedule(t)`` (Hoffer et al., 2017, Sec. 5).

  "Regime adaptation": when the batch grows from ``|B_S|`` to ``|B_L| = k |B_S|``, train ``k`` times more epochs
  and move every LR drop ``k`` times later, so the large-batch run takes as many updates as the small-batch one.
  Pass the large-batch schedule written for the original number of epochs; the result is indexed by large-batch
  steps. Combine with ``sqrt_lr_scaling`` (``paperlab.optim.batch_size``) and ghost batch norm.

  Args:
    schedule: any optax schedule.
    batch_ratio: ``k = |B_L| / |B_S|`` (> 0).

  References:
    Hoffer et al., `Train longer, generalize better: closing the generalization gap in large batch training of
    neural networks <https://arxiv.org/abs/1705.08741>`_, 2017.
  """
  check_positive("batch_ratio", batch_ratio)
  if not callable(schedule):
    raise TypeError(f"schedule must be a callable step -> value, got {type(schedule).__name__}.")
  return lambda step: schedule(jnp.asarray(step, jnp.float32) / batch_ratio)


def effective_lr(params, learning_rate: chex.Numeric):
  r"""Per-tensor effective learning rate ``eta / ||w||^2`` of scale-invariant weights (D'Angelo et al., 2024).

  For a weight ``w`` followed by a normalisation layer the loss is invariant to ``||w||``, the gradient scales as
  ``1 / ||w||``, and an SGD step rotates ``w`` by an angle set by ``eta / ||w||^2``: weight decay acts on
  scale-invariant weights only through this effective LR. Only meaningful for scale-invariant tensors; select
  them yourself (e.g. hidden Dense kernels followed by a norm layer).

  Args:
    params: pytree of weights.
    learning_rate: the (current) learning rate.

  Returns:
    A pytree of scalars with the structure of ``params``.

  References:
    D'Angelo, Andriushchenko, Varre, Flammarion, `Why Do We Need Weight Decay in Modern Deep Learning?
    <https://arxiv.org/abs/2310.04415>`_, 2024.
  """
  return jax.tree.map(lambda w: learning_rate / jnp.sum(jnp.square(w.astype(jnp.float32))), params)


def angular_update(old_params, new_params):
  r"""Per-tensor angle (radians) between ``w_t`` and ``w_{t+1}``: ``arccos(<w_t, w_{t+1}> / (|w_t| |w_{t+1}|))``.

  The quantity that actually changes the function for scale-invariant weights (D'Angelo et al., 2024;
  Wan et al., 2021, arXiv:2006.08419). Computed with ``arctan2(|w_t x w_{t+1}|, <w_t, w_{t+1}>)`` for
  accuracy at small angles.
  """
  def angle(a, b):
    a, b = a.astype(jnp.float32).ravel(), b.astype(jnp.float32).ravel()
    dot = jnp.vdot(a, b)
    # |a|^2 |b|^2 - <a,b>^2 = |a|^2 |b - proj_a b|^2, stable for nearly parallel vectors.
    perp = b - dot / jnp.maximum(jnp.vdot(a, a), 1e-30) * a
    return jnp.arctan2(jnp.linalg.norm(a) * jnp.linalg.norm(perp), dot)

  return jax.tree.map(angle, old_params, new_params)


def equilibrium_angular_update(learning_rate: chex.Numeric, weight_decay: chex.Numeric) -> jax.Array:
  r"""Steady-state angular update ``sqrt(2 eta lambda)`` of SGD with weight decay on scale-invariant weights.

  With the gradient orthogonal to ``w`` and ``||g|| ||w||`` constant, the norm settles where decay and gradient
  growth balance, ``||w||^2 = eta ||g||^2 / (2 lambda)`` (to first order in ``eta lambda``), giving an angle per
  step of ``eta ||g|| / ||w|| = sqrt(2 eta lambda)`` independent of the loss (the "rotational equilibrium";
  Wan et al., 2021; used by D'Angelo et al., 2024 to explain why ``eta lambda`` is what matters).
  """
  check_non_negative("learning_rate", learning_rate)
  check_non_negative("weight_decay", weight_decay)
  return jnp.sqrt(2.0 * jnp.asarray(learning_rate, jnp.float32) * weight_decay)
