"""Stateful multi-task balancers, sample/class reweighting and the auxiliary-loss-free MoE load balancer.

Stateful balancers are ``Balancer(init, update)`` pairs in the optax style: ``state = init()`` is a small
``NamedTuple`` of arrays (so it jits, vmaps over trials and checkpoints with the optimizer state), and
``weights, state = update(observed, state)`` is a pure function of what was observed this step. Weights are
returned under ``stop_gradient``; combine them with :func:`paperlab.losses.weighted_sum`.

Plugging a balancer into a train step (``paperlab.train.make_train_step`` style)::

  balancer = coba(num_tasks=3)
  ...
  def loss_fn(model, batch, rng):                     # task weights come in with the batch/state
    losses = jnp.stack([task_loss(model, batch, k) for k in names])
    return weighted_sum(losses, batch["task_weights"]), {"task_losses": losses}

  # outside the gradient, after each step (or each validation pass, for CoBa):
  weights, bal_state = balancer.update(observed_losses, bal_state)

Keep ``bal_state`` next to the ``TrainState`` (it is a pytree) and thread it through ``lax.scan`` like the
optimizer state.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab import _checks
from paperlab.losses.classification import _class_where, _low_precision_in_float32, _mask

__all__ = [
    "Balancer",
    "CoBaState",
    "coba",
    "GapBalancingState",
    "improvable_gap_balancing",
    "loss_based_weights",
    "apply_weights",
    "class_balanced_weights",
    "weighted_softmax_cross_entropy_with_integer_labels",
    "logit_adjusted_softmax_cross_entropy_with_integer_labels",
    "posthoc_logit_adjustment",
    "LossFreeBalancerState",
    "loss_free_balancer",
    "biased_topk_route",
    "expert_load",
    "max_violation",
    "switch_aux_loss",
]


class Balancer(NamedTuple):
  """A stateful balancer: ``init() -> state`` and ``update(observed, state) -> (output, state)``, both pure."""

  init: Callable[[], NamedTuple]
  update: Callable[[jax.Array, NamedTuple], tuple[jax.Array, NamedTuple]]


def _check_int(name: str, value, low: int) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
  return value


def _check_task_vector(losses: jax.Array, num_tasks: int, name: str = "losses") -> jax.Array:
  losses = jnp.asarray(losses)
  if losses.shape != (num_tasks,):
    raise ValueError(f"{name} must be a vector of {num_tasks} task losses, got shape {losses.shape}.")
  return losses


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


# --------------------------------------------------------------------------------------------------- CoBa [118]


class CoBaState(NamedTuple):
  """CoBa's history. Windows are chronological (last row newest); ``count`` is the number of updates seen."""

  count: jax.Array             # int32 []
  initial_losses: jax.Array    # [K], the first observed losses (normaliser)
  loss_history: jax.Array      # [N, K] normalised losses
  slope_history: jax.Array     # [N, K] per-task convergence slopes
  max_slope_history: jax.Array  # [M_max] slope of the max-over-tasks normalised loss
  num_slopes: jax.Array        # int32 [], valid rows of slope_history
  num_max_slopes: jax.Array    # int32 [], valid entries of max_slope_history
  weights: jax.Array           # [K] last weights


def _push(window: jax.Array, row: jax.Array) -> jax.Array:
  return jnp.concatenate([window[1:], row[None]], axis=0)


def _valid_tail(n: int, num_valid: jax.Array) -> jax.Array:
  return jnp.arange(n) >= n - num_valid


def _window_slope(y: jax.Array, valid: jax.Array) -> jax.Array:
  """Least-squares slope of ``y`` ([N] or [N, K]) against the step index over the valid rows."""
  t = jnp.arange(y.shape[0], dtype=y.dtype)
  m = valid.astype(y.dtype)
  if y.ndim == 2:
    m = m[:, None]
    t = t[:, None]
  cnt = jnp.maximum(jnp.sum(m, axis=0), 1.0)
  t_mean = jnp.sum(m * t, axis=0) / cnt
  y_mean = jnp.sum(m * y, axis=0) / cnt
  cov = jnp.sum(m * (t - t_mean) * (y - y_mean), axis=0)
  var = jnp.sum(m * (t - t_mean) ** 2, axis=0)
  return jnp.where(var > 0, cov / jnp.where(var > 0, var, 1.0), 0.0)


def _safe_div(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
  return a / jnp.maximum(b, eps)


def coba(num_tasks: int, *, warmup_steps: int = 100, history_length: int = 200, tau: float = 5.0,
         divergence_history_length: int = 4096) -> Balancer:
  """CoBa: convergence balancer for multi-task finetuning.

  Implements Gong et al., "CoBa: Convergence Balancer for Multitask Finetuning of Large Language Models"
  (EMNLP 2024, arXiv:2410.06741), Sec. 3, with the defaults of the official MFTCoder ``CoBaStatus``
  (warm-up 100 updates with equal weights, history window N=200, tau=5). From validation losses normalised by
  their first value, each update fits the least-squares slope ``alpha_i`` of every task over the window and ::

    RCS = softmax_i(K alpha_i / sum_k |alpha_k|)                     relative convergence score
    ACS = softmax_i(-M alpha_i / sum_s |alpha_i(s)|)                 absolute convergence score
    DF  = min(M softmax_s(-tau M alpha_max(s) / sum_s |alpha_max(s)|)[now], 1)   divergence factor
    w   = softmax_i(K (DF RCS + (1 - DF) ACS))

  where ``alpha_max`` is the slope of the max-over-tasks loss and ``M`` the number of slopes in the window. If any
  weight falls below ``1/(5K)`` the weights are mixed with the uniform floor, ``w <- 0.8 w + 1/(5K)``, as in the
  official code. Deviation: so that the state has a fixed size and jits, ACS uses the last ``history_length``
  slopes and DF the last ``divergence_history_length`` max-slopes (the official code keeps DF's history
  unbounded; it matters, because DF compares the current max-slope with the whole run's).

  Feed ``update`` the per-task *validation* losses (shape ``[K]``) once per step; it returns the weights for the
  next training step (summing to 1).

  Args:
    num_tasks: K >= 1.
    warmup_steps: updates with equal weights before slopes are used (>= 1).
    history_length: window N of losses and slopes (>= 2).
    tau: divergence-factor temperature (> 0).
    divergence_history_length: how many max-over-tasks slopes the divergence factor compares (>= 2).

  Returns:
    ``Balancer(init, update)`` with ``update(val_losses[K], state) -> (weights[K], state)``.
  """
  k = _check_int("num_tasks", num_tasks, 1)
  _check_int("warmup_steps", warmup_steps, 1)
  n = _check_int("history_length", history_length, 2)
  _checks.check_positive("tau", tau)
  n_max = _check_int("divergence_history_length", divergence_history_length, 2)

  def init() -> CoBaState:
    zeros_nk = jnp.zeros((n, k), jnp.float32)
    zero = jnp.zeros((), jnp.int32)
    return CoBaState(zero, jnp.ones((k,), jnp.float32), zeros_nk, zeros_nk, jnp.zeros((n_max,), jnp.float32), zero,
                     zero, jnp.full((k,), 1.0 / k, jnp.float32))

  def update(val_losses: jax.Array, state: CoBaState) -> tuple[jax.Array, CoBaState]:
    val_losses = jax.lax.stop_gradient(_check_task_vector(val_losses, k)).astype(jnp.float32)
    initial = jnp.where(state.count == 0, val_losses, state.initial_losses)
    history = _push(state.loss_history, _safe_div(val_losses, initial))
    count = state.count + 1
    loss_valid = _valid_tail(n, jnp.minimum(count, n))
    active = count > warmup_steps

    slopes = _window_slope(history, loss_valid)
    max_slope = _window_slope(jnp.max(history, axis=1), loss_valid)
    slope_hist = jnp.where(active, _push(state.slope_history, slopes), state.slope_history)
    max_hist = jnp.where(active, _push(state.max_slope_history, max_slope), state.max_slope_history)
    num_slopes = jnp.where(active, jnp.minimum(state.num_slopes + 1, n), state.num_slopes)
    num_max = jnp.where(active, jnp.minimum(state.num_max_slopes + 1, n_max), state.num_max_slopes)
    m = jnp.maximum(num_slopes, 1).astype(jnp.float32)
    m_max = jnp.maximum(num_max, 1).astype(jnp.float32)
    sv, mv = _valid_tail(n, num_slopes), _valid_tail(n_max, num_max)

    rcs = jax.nn.softmax(k * _safe_div(slopes, jnp.sum(jnp.abs(slopes))))
    hist_abs = jnp.sum(jnp.where(sv[:, None], jnp.abs(slope_hist), 0.0), axis=0)
    acs = jax.nn.softmax(-m * _safe_div(slopes, hist_abs))
    max_norm = -m_max * _safe_div(max_hist, jnp.sum(jnp.where(mv, jnp.abs(max_hist), 0.0)))
    df_logits = jnp.where(mv, tau * max_norm, -jnp.inf)
    df = jnp.minimum(m_max * jax.nn.softmax(df_logits)[-1], 1.0)
    w = jax.nn.softmax(k * (df * rcs + (1.0 - df) * acs))
    floor = 1.0 / (5 * k)
    w = jnp.where(jnp.any(w < floor), w * (1.0 - floor * k) + floor, w)
    w = jnp.where(active, w, jnp.full((k,), 1.0 / k, jnp.float32))
    return w, CoBaState(count, initial, history, slope_hist, max_hist, num_slopes, num_max, w)

  return Balancer(init, update)


# --------------------------------------------------------------------------------- improvable gap balancing [180]


class GapBalancingState(NamedTuple):
  count: jax.Array           # int32 []
  reference_sum: jax.Array   # [K] sum of the first `reference_steps` loss vectors
  weights: jax.Array         # [K]


def improvable_gap_balancing(num_tasks: int, *, temperature: float = 1.0, reference_steps: int = 1) -> Balancer:
  """IGB v1: weight tasks by their improvable gap, ``w = K softmax((L_i(t) / L_i(0)) / temperature)``.

  Implements the heuristic loss-balancing method (IGBv1) of Dai et al., "Improvable Gap Balancing for Multi-Task
  Learning" (UAI 2023, arXiv:2307.15429), Sec. 4.1: the remaining (improvable) training progress of a task is
  estimated by its loss relative to its initial loss, and a softmax over tasks turns the gaps into weights that
  sum to K, so tasks that are further from converged are trained harder. The reference ``L_i(0)`` is the mean of
  the first ``reference_steps`` observed loss vectors (the official code uses the first epoch's average); weights
  are 1 until it is complete. IGBv2 (a SAC agent) is out of scope.

  Args:
    num_tasks: K >= 1.
    temperature: softmax temperature (> 0).
    reference_steps: number of initial updates averaged into the reference losses (>= 1).

  Returns:
    ``Balancer(init, update)`` with ``update(losses[K], state) -> (weights[K], state)``.
  """
  k = _check_int("num_tasks", num_tasks, 1)
  _checks.check_positive("temperature", temperature)
  r = _check_int("reference_steps", reference_steps, 1)

  def init() -> GapBalancingState:
    return GapBalancingState(jnp.zeros((), jnp.int32), jnp.zeros((k,), jnp.float32), jnp.ones((k,), jnp.float32))

  def update(losses: jax.Array, state: GapBalancingState) -> tuple[jax.Array, GapBalancingState]:
    losses = jax.lax.stop_gradient(_check_task_vector(losses, k)).astype(jnp.float32)
    ref_sum = jnp.where(state.count < r, state.reference_sum + losses, state.reference_sum)
    count = state.count + 1
    gaps = _safe_div(losses, ref_sum / r)
    w = jnp.where(count > r, k * jax.nn.softmax(gaps / temperature), jnp.ones((k,), jnp.float32))
    return w, GapBalancingState(count, ref_sum, w)

  return Balancer(init, update)


# ------------------------------------------------------------------------- dynamic loss-based reweighting [132]

Strategy = Literal["linupper", "uniform", "quadratic", "extremes"]


@_low_precision_in_float32
def loss_based_weights(per_example_losses: chex.Array, *, strategy: Strategy = "linupper", delta: float = 1.0,
                       temperature: float = 1.0, where: chex.Array | None = None, axis_name: str | None = None,
                       eps: float = 1e-8) -> jax.Array:
  """Instance weights from the current per-sample losses (stop-gradient; they sum to 1 over the batch).

  Implements Sow et al., "Dynamic Loss-Based Sample Reweighting for Improved Large Language Model Pretraining"
  (ICLR 2025, arXiv:2502.06733), Sec. 3: losses are mapped to ``[-delta, delta]`` by
  ``l~ = delta (2 l - l_max - l_min) / (l_max - l_min)``, a strategy ``g`` scores them and
  ``w = softmax(g / temperature)`` over the batch:

    linupper   ``min(l~ + delta, delta)``   down-weights low-loss (redundant) samples, the recommended default
    uniform    ``l~``                        monotone in the loss
    quadratic  ``1 - l~^2 / delta^2``        favours medium losses
    extremes   ``|l~|``                      favours both ends

  Pair it with :func:`apply_weights` (``normalize="none"``) to get ``sum_i w_i l_i``. Under ``pmap``/``shard_map``
  pass ``axis_name`` so min, max and the softmax normaliser span the global batch.

  Args:
    per_example_losses: ``[B]`` (any shape; all entries form one batch).
    strategy: one of the four above.
    delta: half-width of the normalised range (> 0).
    temperature: softmax temperature r (> 0).
    where: optional mask of included examples (excluded ones get weight 0).
    axis_name: optional mapped axis to reduce over.
    eps: guards ``l_max == l_min`` (then the weights are uniform).

  Returns:
    Weights with the shape of ``per_example_losses``.
  """
  _checks.check_choice("strategy", strategy, ("linupper", "uniform", "quadratic", "extremes"))
  _checks.check_positive("delta", delta)
  _checks.check_positive("temperature", temperature)
  losses = jax.lax.stop_gradient(jnp.asarray(per_example_losses, jnp.result_type(per_example_losses, jnp.float32)))
  mask = jnp.ones(losses.shape, bool) if where is None else jnp.broadcast_to(jnp.asarray(where, bool), losses.shape)
  l_max = jnp.max(jnp.where(mask, losses, -jnp.inf))
  l_min = jnp.min(jnp.where(mask, losses, jnp.inf))
  if axis_name is not None:
    l_max, l_min = jax.lax.pmax(l_max, axis_name), jax.lax.pmin(l_min, axis_name)
  span = l_max - l_min
  norm = jnp.where(span > eps, delta * (2 * losses - l_max - l_min) / jnp.maximum(span, eps), 0.0)
  if strategy == "linupper":
    g = jnp.minimum(norm + delta, delta)
  elif strategy == "uniform":
    g = norm
  elif strategy == "quadratic":
    g = 1.0 - norm ** 2 / delta ** 2
  else:
    g = jnp.abs(norm)
  logits = jnp.where(mask, g / temperature, -jnp.inf)
  z_max = jnp.max(logits)
  if axis_name is not None:
    z_max = jax.lax.pmax(z_max, axis_name)
  e = jnp.where(mask, jnp.exp(logits - z_max), 0.0)
  total = jnp.sum(e)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return jax.lax.stop_gradient(e / total)


@_low_precision_in_float32
def apply_weights(per_example_losses: chex.Array, weights: chex.Array, *, where: chex.Array | None = None,
                  normalize: Literal["none", "weights", "mask"] = "none") -> jax.Array:
  """Reduce per-example losses with (stop-gradient) weights to a scalar.

  ``normalize="none"``: ``sum_i w_i l_i`` (weights that already sum to 1, e.g. :func:`loss_based_weights`);
  ``"weights"``: ``sum_i w_i l_i / sum_i w_i`` (a weighted mean); ``"mask"``: ``sum_i w_i l_i / #included``
  (TLDR's token normalisation). Excluded entries (``where`` False) contribute nothing.
  """
  _checks.check_choice("normalize", normalize, ("none", "weights", "mask"))
  losses = jnp.asarray(per_example_losses)
  weights = jnp.broadcast_to(jnp.asarray(weights), losses.shape)
  mask = jnp.ones(losses.shape, bool) if where is None else jnp.broadcast_to(jnp.asarray(where, bool), losses.shape)
  total = jnp.sum(jnp.where(mask, weights * losses, 0.0))
  if normalize == "weights":
    denom = jnp.sum(jnp.where(mask, weights, 0.0))
    return total / jnp.where(denom != 0, denom, 1.0)
  if normalize == "mask":
    return total / jnp.maximum(jnp.sum(mask), 1)
  return total


# ------------------------------------------------------------------------------ long-tail class weighting [141]


def class_balanced_weights(class_counts: chex.Array, *, beta: float | None = 0.999, power: float = 1.0
                           ) -> jax.Array:
  """Per-class loss weights from training-set class counts, normalised to sum to the number of classes.

  ``beta=None``: inverse frequency ``w_k ∝ n_k^(-power)`` (the class-balanced CE of weight balancing's second
  stage, Hasegawa et al., "Exploring Weight Balancing on Long-Tailed Recognition Problem", ICLR 2024,
  arXiv:2305.16573). ``beta in [0, 1)``: the effective number of samples of Cui et al., "Class-Balanced Loss Based
  on Effective Number of Samples" (CVPR 2019, arXiv:1901.05555), Eq. 8, ``w_k ∝ ((1 - beta)/(1 - beta^n_k))^power``;
  ``beta=0`` gives uniform weights and ``beta -> 1`` inverse frequency. Feed the result to
  :func:`weighted_softmax_cross_entropy_with_integer_labels`.
  """
  counts = jnp.asarray(class_counts, jnp.float32)
  if counts.ndim != 1 or counts.shape[0] < 1:
    raise ValueError(f"class_counts must be a non-empty vector, got shape {counts.shape}.")
  if _is_concrete(counts) and bool(np.any(np.asarray(counts) <= 0)):
    raise ValueError(f"class_counts must all be positive, got {np.asarray(counts).tolist()}.")
  _checks.check_non_negative("power", power)
  if beta is None:
    w = counts ** (-power)
  else:
    _checks.check_range("beta", beta, 0.0, 1.0, high_inclusive=False)
    w = ((1.0 - beta) / (1.0 - beta ** counts)) ** power
  return w * counts.shape[0] / jnp.sum(w)


def _check_int_labels(logits: jax.Array, labels: jax.Array) -> None:
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels shape {labels.shape} must equal logits shape without the class axis "
                     f"{logits.shape[:-1]}.")
  if _is_concrete(labels) and labels.size:
    lab = np.asarray(labels)  # numpy, so the check also works on constants inside jit
    if lab.min() < 0 or lab.max() >= logits.shape[-1]:
      raise ValueError(f"labels must lie in [0, {logits.shape[-1] - 1}], got values in [{lab.min()}, {lab.max()}].")


@_low_precision_in_float32
def weighted_softmax_cross_entropy_with_integer_labels(logits: chex.Array, labels: chex.Array,
                                                        class_weights: chex.Array, *, where: chex.Array | None = None,
                                                        normalize: bool = True) -> jax.Array:
  """Class-weighted softmax cross-entropy per example: ``w[y_i] * CE_i``.

  With ``normalize=True`` every value is additionally scaled by ``n / sum_i w[y_i]`` over the included examples,
  so that ``mean`` over the included examples equals ``sum_i w[y_i] CE_i / sum_i w[y_i]``, the weighted mean of
  ``torch.nn.functional.cross_entropy(weight=w)``. This is the loss of the power-law decay loss (Cui et al.,
  arXiv:2505.16900, token weights from :func:`paperlab.losses.power_law_token_weights`) and of class-balanced
  training (:func:`class_balanced_weights`). Excluded examples (``where`` False) give 0.

  Args:
    logits: ``[..., C]``.
    labels: integer ``[...]`` in ``[0, C)``.
    class_weights: ``[C]`` non-negative weights.
    where: optional per-example mask ``[...]``.
    normalize: rescale so the mean over included examples is the weighted mean.
  """
  logits, labels, class_weights = jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(class_weights)
  _check_int_labels(logits, labels)
  if class_weights.shape != logits.shape[-1:]:
    raise ValueError(f"class_weights must have shape {logits.shape[-1:]}, got {class_weights.shape}.")
  class_mask, where = _class_where(logits, where)  # a logits-shaped where masks classes, as in optax
  mask = _mask(where, labels.shape)
  w = jnp.where(mask, class_weights[labels], 0.0)
  loss = w * optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels, where=class_mask)
  if normalize:
    total = jnp.sum(w)
    loss = loss * jnp.sum(mask) / jnp.where(total > 0, total, 1.0)
  return jnp.where(mask, loss, 0.0)


@_low_precision_in_float32
def logit_adjusted_softmax_cross_entropy_with_integer_labels(logits: chex.Array, labels: chex.Array,
                                                              log_priors: chex.Array, *, tau: float = 1.0,
                                                              where: chex.Array | None = None) -> jax.Array:
  """Logit-adjusted cross-entropy ``CE(f + tau log pi, y)`` per example.

  Menon et al., "Long-tail learning via logit adjustment" (ICLR 2021, arXiv:2007.07314), Eq. 10; the implicit
  effect of weight balancing's second stage according to Hasegawa et al. (arXiv:2305.16573, Sec. 5). A uniform
  prior makes it plain CE. For the post-hoc form apply :func:`posthoc_logit_adjustment` at test time instead.
  """
  logits, labels, log_priors = jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(log_priors)
  _check_int_labels(logits, labels)
  if log_priors.shape != logits.shape[-1:]:
    raise ValueError(f"log_priors must have shape {logits.shape[-1:]}, got {log_priors.shape}.")
  _checks.check_non_negative("tau", tau)
  class_mask, where = _class_where(logits, where)  # a logits-shaped where masks classes, as in optax
  loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits + tau * log_priors, labels, where=class_mask)
  return jnp.where(_mask(where, labels.shape), loss, 0.0)


@_low_precision_in_float32
def posthoc_logit_adjustment(logits: chex.Array, log_priors: chex.Array, *, tau: float = 1.0) -> jax.Array:
  """``f_k - tau log pi_k``: post-hoc logit adjustment for balanced-error prediction (Menon et al., Eq. 9; the
  simplified method of Hasegawa et al. applies it after weight-decayed CE training)."""
  _checks.check_non_negative("tau", tau)
  return jnp.asarray(logits) - tau * jnp.asarray(log_priors)


# ------------------------------------------------------------------- auxiliary-loss-free MoE load balancing [154]


class LossFreeBalancerState(NamedTuple):
  """State of :func:`loss_free_balancer` (Wang et al., "Auxiliary-Loss-Free Load Balancing Strategy for
  Mixture-of-Experts", arXiv:2408.15664): the per-expert bias added to routing scores for top-k selection only."""

  bias: jax.Array  # [E] per-expert selection bias (never receives a gradient)


def loss_free_balancer(num_experts: int, *, update_rate: float = 1e-3) -> Balancer:
  """Auxiliary-loss-free load balancing: a per-expert routing bias nudged towards equal load.

  Implements Wang et al., "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"
  (arXiv:2408.15664), Algorithm 1: after each step ``b_i <- b_i + u sign(mean(c) - c_i)`` where ``c_i`` is the
  number of tokens routed to expert i in the step and ``u = 1e-3`` the update rate. The bias only changes which
  experts are selected (:func:`biased_topk_route`), never the gate values, and is outside the gradient, so no
  interfering auxiliary gradient is added to the language-model loss.

  Returns:
    ``Balancer(init, update)`` with ``update(expert_load[E], state) -> (bias[E], state)``.
  """
  e = _check_int("num_experts", num_experts, 1)
  _checks.check_non_negative("update_rate", update_rate)

  def init() -> LossFreeBalancerState:
    return LossFreeBalancerState(jnp.zeros((e,), jnp.float32))

  def update(load: jax.Array, state: LossFreeBalancerState) -> tuple[jax.Array, LossFreeBalancerState]:
    load = jax.lax.stop_gradient(_check_task_vector(load, e, "expert_load")).astype(jnp.float32)
    bias = state.bias + update_rate * jnp.sign(jnp.mean(load) - load)
    return bias, LossFreeBalancerState(bias)

  return Balancer(init, update)


@_low_precision_in_float32
def biased_topk_route(router_logits: chex.Array, bias: chex.Array, k: int, *,
                      gating: Literal["sigmoid", "softmax"] = "sigmoid", normalize_gates: bool = True
                      ) -> tuple[jax.Array, jax.Array]:
  """Top-k expert selection on ``s + b`` with gates from the unbiased scores ``s`` (Wang et al., Eq. 3).

  ``s = sigmoid(router_logits)`` (the paper's gating, as in DeepSeek-V3) or ``softmax(router_logits)``; expert i
  is selected if ``s_i + b_i`` is among the top ``k`` and its gate is ``s_i`` (divided by the sum of the selected
  ``s`` when ``normalize_gates``). ``bias`` is wrapped in ``stop_gradient``.

  Args:
    router_logits: ``[..., E]`` token-to-expert affinities.
    bias: ``[E]`` from :func:`loss_free_balancer`.
    k: experts per token (1 <= k <= E).

  Returns:
    ``(expert_idx [..., k] int32, gates [..., k])``.
  """
  router_logits = jnp.asarray(router_logits)
  e = router_logits.shape[-1]
  if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= e:
    raise ValueError(f"k must be an int in [1, {e}] (the number of experts), got {k!r}.")
  _checks.check_choice("gating", gating, ("sigmoid", "softmax"))
  bias = jnp.asarray(bias)
  if bias.shape != (e,):
    raise ValueError(f"bias must have shape ({e},) (one entry per expert), got {bias.shape}.")
  scores = jax.nn.sigmoid(router_logits) if gating == "sigmoid" else jax.nn.softmax(router_logits, axis=-1)
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(scores) + jax.lax.stop_gradient(bias), k)
  gates = jnp.take_along_axis(scores, idx, axis=-1)
  if normalize_gates:
    gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
  return idx.astype(jnp.int32), gates


def expert_load(expert_idx: chex.Array, num_experts: int, *, where: chex.Array | None = None) -> jax.Array:
  """``c_i``: number of (token, slot) assignments to each expert; ``where`` masks tokens (``[...]``)."""
  expert_idx = jnp.asarray(expert_idx)
  onehot = jax.nn.one_hot(expert_idx, num_experts, dtype=jnp.float32)  # [..., k, E]
  if where is not None:
    onehot = onehot * jnp.asarray(where, jnp.float32)[..., None, None]
  return jnp.sum(onehot.reshape(-1, num_experts), axis=0)


@_low_precision_in_float32
def max_violation(load: chex.Array) -> jax.Array:
  """``MaxVio = (max_i c_i - mean(c)) / mean(c)`` (Wang et al., Eq. 5); 0 for a perfectly balanced load."""
  load = jnp.asarray(load, jnp.float32)
  mean = jnp.mean(load, axis=-1)
  return (jnp.max(load, axis=-1) - mean) / mean


@_low_precision_in_float32
def switch_aux_loss(router_probs: chex.Array, expert_idx: chex.Array, *, where: chex.Array | None = None
                    ) -> jax.Array:
  """The auxiliary load-balancing loss ``sum_i f_i P_i`` that loss-free balancing replaces (Wang et al., Eq. 2).

  ``f_i = E / (k T) * #{tokens routed to i}`` (1 under perfect balance) and ``P_i = (1/T) sum_t s_{i,t}`` the mean
  routing probability; multiply by ``alpha`` (the paper's baseline uses 1e-3). Gradients flow through
  ``router_probs`` only.

  Args:
    router_probs: ``[T, E]`` routing scores (e.g. softmax of the router logits).
    expert_idx: ``[T, k]`` selected experts.
    where: optional ``[T]`` token mask.
  """
  router_probs, expert_idx = jnp.asarray(router_probs), jnp.asarray(expert_idx)
  if router_probs.ndim != 2 or expert_idx.ndim != 2 or router_probs.shape[0] != expert_idx.shape[0]:
    raise ValueError(f"router_probs must be [T, E] and expert_idx [T, k] with the same T, got "
                     f"{router_probs.shape} and {expert_idx.shape}.")
  t, e = router_probs.shape
  k = expert_idx.shape[1]
  mask = _mask(where, (t,)).astype(router_probs.dtype)
  n = jnp.maximum(jnp.sum(mask), 1.0)
  counts = jax.lax.stop_gradient(expert_load(expert_idx, e, where=mask))
  f = e * counts / (k * n)
  p = jnp.sum(router_probs * mask[:, None], axis=0) / n
  return jnp.sum(f * p)
