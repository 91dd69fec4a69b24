"""AdaLoRA: SVD-form adapters whose rank budget is reallocated across layers by importance during training.

Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", arXiv:2303.10512: ``W = W0 + P Lambda
Q`` (eq. 3) with ``Lambda`` diagonal; the importance of a weight is the smoothed sensitivity times its uncertainty
(eq. 8-10: ``I = |w g|``, ``I_bar = b1 I_bar + (1 - b1) I``, ``U_bar = b2 U_bar + (1 - b2) |I - I_bar|``, score
``I_bar U_bar``, ``b1 = b2 = 0.85``), a triplet's score is ``s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij)`` (eq. 11),
and the total budget follows a cubic schedule (eq. 12); every ``deltaT`` steps the ``lambda_i`` outside the top
``b(t)`` are zeroed. Conventions follow Hugging Face ``peft``'s ``AdaLoraLayer`` / ``RankAllocator`` (0.21):
``lora_A (r, in)`` = Q, ``lora_E (r, 1)`` = Lambda, ``lora_B (out, r)`` = P, ``delta W = B (A * E) * alpha / (r +
1e-5)`` (torch layout), init ``E = 0``, ``A, B ~ N(0, 0.02^2)``; the orthogonality regularizer is peft's mean of
``||A A^T - I||_F`` and ``||B^T B - I||_F`` (a norm, not its square; weight ``orth_reg_weight = 0.5``).

The importance state is a pytree (jittable update); the budget schedule and the threshold pick are host-side, as
in peft (they decide Python-level control flow: whether to mask at this step).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.peft.adapters import Adapters, adalora_delta, select_kernels  # noqa: F401 (re-exported)

PyTree = Any

__all__ = ["AdaLoraState", "adalora_init", "adalora_budget", "adalora_importance_init",
           "adalora_update_importance", "adalora_mask_to_budget", "adalora_orth_reg"]


def adalora_init(key: jax.Array, params: PyTree, *, include: str, r: int, exclude: str | None = None,
                 dtype=None) -> Adapters:
  """``{path: {"lora_A": (r, in), "lora_B": (out, r), "lora_E": (r, 1)}}``, peft's init (E zero, A and B
  N(0, 0.02^2)).

  Raises:
    ValueError: ``include`` selects no 2-D kernel, or ``r`` outside ``[1, min(in, out)]``.
  """
  out = {}
  for i, (path, w) in enumerate(sorted(select_kernels(params, include, exclude).items())):
    d_in, d_out = w.shape
    if not isinstance(r, int) or not 1 <= r <= min(d_in, d_out):
      raise ValueError(f"r must be an int in [1, min(in, out)={min(d_in, d_out)}] for {path!r}, got {r!r}.")
    dt = dtype or w.dtype
    ka, kb = jax.random.split(jax.random.fold_in(key, i))
    out[path] = {"lora_A": (0.02 * jax.random.normal(ka, (r, d_in))).astype(dt),
                 "lora_B": (0.02 * jax.random.normal(kb, (d_out, r))).astype(dt), "lora_E": jnp.zeros((r, 1), dt)}
  return out


def adalora_budget(step: int, *, init_budget: int, target_budget: int, tinit: int, tfinal: int, total_step: int,
                   delta_t: int) -> tuple[int, bool]:
  """``(budget, mask_now)`` at ``step`` (eq. 12; peft's ``RankAllocator.budget_schedule``): the initial budget up to
  ``tinit``, then a cubic decrease ``int((b0 - bT)(1 - (t - tinit) / (T - tfinal - tinit))^3 + bT)`` with masking
  every ``delta_t`` steps, and the target budget (masking at every step) in the last ``tfinal`` steps. Host-side."""
  for name, v in (("tinit", tinit), ("tfinal", tfinal), ("total_step", total_step), ("delta_t", delta_t)):
    if not isinstance(v, int) or v < 0:
      raise ValueError(f"{name} must be a non-negative int, got {v!r}.")
  if total_step - tfinal - tinit <= 0:
    raise ValueError(f"total_step={total_step} must exceed tinit + tfinal = {tinit + tfinal}.")
  if delta_t < 1:
    raise ValueError(f"delta_t must be a positive int, got {delta_t!r}.")
  if step <= tinit:
    return init_budget, False
  if step > total_step - tfinal:
    return target_budget, True
  mul = 1 - (step - tinit) / (total_step - tfinal - tinit)
  return int((init_budget - target_budget) * mul ** 3 + target_budget), step % delta_t == 0


class AdaLoraState(NamedTuple):
  """Smoothed sensitivity ``I_bar`` and uncertainty ``U_bar`` of every adapter entry (pytrees like the adapters)."""

  exp_avg_ipt: PyTree
  exp_avg_unc: PyTree


def adalora_importance_init(adapters: Adapters) -> AdaLoraState:
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), adapters)
  return AdaLoraState(zeros, zeros)


def adalora_update_importance(state: AdaLoraState, adapters: Adapters, grads: Adapters, *, beta1: float = 0.85,
                              beta2: float = 0.85) -> AdaLoraState:
  """Eq. 8-10 (peft ``update_ipt``): ``I = |p g|``, ``I_bar <- b1 I_bar + (1 - b1) I``,
  ``U_bar <- b2 U_bar + (1 - b2) |I - I_bar|`` (with the new ``I_bar``). Jittable."""
  _checks.check_range("beta1", beta1, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  _checks.check_range("beta2", beta2, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  ipt = jax.tree.map(lambda p, g: jnp.abs(p.astype(jnp.float32) * g.astype(jnp.float32)), adapters, grads)
  avg = jax.tree.map(lambda m, i: beta1 * m + (1 - beta1) * i, state.exp_avg_ipt, ipt)
  unc = jax.tree.map(lambda u, i, m: beta2 * u + (1 - beta2) * jnp.abs(i - m), state.exp_avg_unc, ipt, avg)
  return AdaLoraState(avg, unc)


def _triplet_scores(state: AdaLoraState) -> dict[str, jax.Array]:
  out = {}
  for path in state.exp_avg_ipt:
    s = {n: state.exp_avg_ipt[path][n] * state.exp_avg_unc[path][n] for n in ("lora_A", "lora_B", "lora_E")}
    out[path] = s["lora_E"].reshape(-1) + jnp.mean(s["lora_A"], axis=1) + jnp.mean(s["lora_B"], axis=0)
  return out


def adalora_mask_to_budget(state: AdaLoraState, adapters: Adapters, budget: int
                           ) -> tuple[Adapters, dict[str, jax.Array]]:
  """Zero the ``lora_E`` entries of the triplets outside the top ``budget`` (eq. 11; peft ``mask_to_budget``: the
  threshold is the ``(init_budget - budget)``-th smallest triplet score and scores ``<=`` it are masked).

  Returns:
    ``(adapters with masked lora_E, {path: bool keep-vector (r,)})``.
  """
  scores = _triplet_scores(state)
  paths = sorted(scores)
  init_budget = sum(scores[p].size for p in paths)
  k = init_budget - int(budget)
  if k <= 0:
    return adapters, {p: jnp.ones(scores[p].shape, bool) for p in paths}
  threshold = jnp.sort(jnp.concatenate([scores[p] for p in paths]))[k - 1]
  keep = {p: scores[p] > threshold for p in paths}
  out = {p: {**a, "lora_E": jnp.where(keep[p][:, None], a["lora_E"], 0.0).astype(a["lora_E"].dtype)}
         for p, a in adapters.items()}
  return out, keep


def adalora_orth_reg(adapters: Mapping[str, Mapping[str, jax.Array]]) -> jax.Array:
  """peft's orthogonality regularizer: the mean over all ``lora_A`` and ``lora_B`` of ``||A A^T - I||_F`` and
  ``||B^T B - I||_F`` (arXiv:2303.10512 eq. 4 uses the squared norm; peft, the maintained implementation, the norm)."""
  terms = []
  for a in adapters.values():
    for name, m in (("lora_A", a["lora_A"] @ a["lora_A"].T), ("lora_B", a["lora_B"].T @ a["lora_B"])):
      del name
      terms.append(jnp.linalg.norm(m - jnp.eye(m.shape[0], dtype=m.dtype)))
  return jnp.mean(jnp.stack(terms))
