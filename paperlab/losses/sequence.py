"""Token-level losses and reweighting for sequence models: TLDR, power-law decay weights, number-token losses."""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab import _checks
from paperlab.losses.classification import _low_precision_in_float32, _mask

__all__ = [
    "tldr_weights",
    "tldr_weighted_loss",
    "power_law_token_weights",
    "number_token_loss",
    "cross_entropy_plus_number_token_loss",
]


@_low_precision_in_float32
def tldr_weights(token_losses: chex.Array) -> jax.Array:
  """TLDR token weights ``w_t = cos(pi exp(-l_t)) + 1`` under ``stop_gradient``.

  Jiang et al., "TLDR: Token Loss Dynamic Reweighting for Reducing Repetitive Utterance Generation"
  (arXiv:2003.11963), Sec. 3: with ``p_t = exp(-l_t)`` the probability of the target token, hard tokens
  (``p -> 0``) get weight 2, ``p = 0.5`` weight 1 and easy tokens (``p -> 1``) weight 0, so training concentrates on
  the tokens the model has not learnt instead of the frequent, repetitive ones.
  """
  losses = jnp.asarray(token_losses)
  return jax.lax.stop_gradient(jnp.cos(jnp.pi * jnp.exp(-losses)) + 1.0)


@_low_precision_in_float32
def tldr_weighted_loss(token_losses: chex.Array, *, where: chex.Array | None = None) -> jax.Array:
  """Per-token TLDR loss ``w_t l_t`` (0 where masked). The paper's objective is
  ``sum_t w_t l_t / sum_t mask_t``, i.e. ``paperlab.losses.apply_weights(l, tldr_weights(l), where=m,
  normalize="mask")`` or ``tldr_weighted_loss(l, where=m).sum() / m.sum()``."""
  losses = jnp.asarray(token_losses)
  return jnp.where(_mask(where, losses.shape), tldr_weights(losses) * losses, 0.0)


def power_law_token_weights(token_counts: chex.Array, *, alpha: float = 1.0, eps: float = 1.0) -> jax.Array:
  """Power-law decay token weights ``w(t) = 1 / (freq(t) + eps)^alpha``.

  Shao et al., "Power-Law Decay Loss for Large Language Model Finetuning" (arXiv:2505.16900), Sec. 3: frequent,
  low-information tokens are down-weighted and rare ones up-weighted; ``alpha=0`` gives equal weights (plain CE).
  The paper gives no default for ``alpha`` and ``eps``; ``eps`` smooths unseen tokens. Use the weights with
  :func:`paperlab.losses.weighted_softmax_cross_entropy_with_integer_labels` (``normalize=True`` divides by
  ``sum_i w(y_i)``, the PDL normaliser).

  Args:
    token_counts: ``[V]`` corpus counts (or frequencies) per token, ``>= 0``.
    alpha: decay exponent >= 0.
    eps: smoothing > 0.
  """
  counts = jnp.asarray(token_counts, jnp.float32)
  if counts.ndim != 1:
    raise ValueError(f"token_counts must be a [vocab_size] vector, got shape {counts.shape}.")
  _checks.check_non_negative("alpha", alpha)
  _checks.check_positive("eps", eps)
  if not isinstance(counts, jax.core.Tracer) and bool(np.any(np.asarray(counts) < 0)):
    raise ValueError("token_counts must be non-negative.")
  return (counts + eps) ** (-alpha)


def _number_lookup(vocab_size: int, number_token_ids: jax.Array, number_values: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  is_number = jnp.zeros((vocab_size,), bool).at[number_token_ids].set(True)
  value = jnp.zeros((vocab_size,), number_values.dtype).at[number_token_ids].set(number_values)
  return is_number, value


@_low_precision_in_float32
def number_token_loss(logits: chex.Array, labels: chex.Array, number_token_ids: chex.Array,
                      number_values: chex.Array, *, kind: Literal["was", "mse"] = "was",
                      where: chex.Array | None = None) -> jax.Array:
  """Number token loss (NTL) per position: a regression loss on the value of number tokens.

  Implements Zausinger et al., "Regress, Don't Guess -- A Regression-like Loss on Number Tokens for Language
  Models" (ICML 2025, arXiv:2411.02083), Sec. 3. The softmax is restricted to the number tokens and renormalised,
  ``p^ = softmax(logits[number_token_ids])``; then

  * ``kind="mse"``: NTL-MSE ``(y - sum_i p^_i v_i)^2``;
  * ``kind="was"``: NTL-WAS, the Wasserstein-1 distance between ``p^`` on the values and the target,
    ``sum_i p^_i |v_i - y|`` (0 iff all mass is on the target value).

  Positions whose label is not a number token (and masked positions) give 0. Add it to CE with weight ``lam``
  (:func:`cross_entropy_plus_number_token_loss`).

  Args:
    logits: ``[..., V]``.
    labels: integer token ids ``[...]``.
    number_token_ids: ``[N]`` distinct ids of the number tokens.
    number_values: ``[N]`` their numeric values.
    kind: ``"was"`` (the paper's recommended variant) or ``"mse"``.
    where: optional mask ``[...]``.
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  ids, values = jnp.asarray(number_token_ids), jnp.asarray(number_values, jnp.float32)
  _checks.check_choice("kind", kind, ("was", "mse"))
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be integer token ids, got dtype {labels.dtype}.")
  if labels.shape != logits.shape[:-1]:
    raise ValueError(f"labels shape {labels.shape} must equal logits shape without the vocab axis "
                     f"{logits.shape[:-1]}.")
  if ids.ndim != 1 or ids.shape != values.shape or ids.shape[0] < 1:
    raise ValueError(f"number_token_ids and number_values must be equal-length non-empty vectors, got shapes "
                     f"{ids.shape} and {values.shape}.")
  if not isinstance(ids, jax.core.Tracer):
    ids_np = np.asarray(ids)  # numpy, so the check also works on constants inside jit
    if ids_np.min() < 0 or ids_np.max() >= logits.shape[-1]:
      raise ValueError(f"number_token_ids must lie in [0, {logits.shape[-1] - 1}], got {ids_np.tolist()}.")
    if len(set(ids_np.tolist())) != ids_np.shape[0]:
      raise ValueError(f"number_token_ids must be distinct, got {ids_np.tolist()}.")
  is_number, value = _number_lookup(logits.shape[-1], ids, values)
  p = jax.nn.softmax(jnp.take(logits, ids, axis=-1).astype(jnp.float32), axis=-1)
  y = value[labels]
  if kind == "mse":
    loss = (y - jnp.sum(p * values, axis=-1)) ** 2
  else:
    loss = jnp.sum(p * jnp.abs(values - y[..., None]), axis=-1)
  return jnp.where(is_number[labels] & _mask(where, labels.shape), loss, 0.0)


@_low_precision_in_float32
def cross_entropy_plus_number_token_loss(logits: chex.Array, labels: chex.Array, number_token_ids: chex.Array,
                                         number_values: chex.Array, *, lam: float = 0.3,
                                         kind: Literal["was", "mse"] = "was", where: chex.Array | None = None
                                         ) -> jax.Array:
  """``CE + lam * NTL`` per position (Zausinger et al., Eq. 5). ``lam`` is tuned per task in the paper; 0.3 is a
  typical value, not a verified default. Masked positions give 0."""
  _checks.check_non_negative("lam", lam)
  ntl = number_token_loss(logits, labels, number_token_ids, number_values, kind=kind, where=where)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), jnp.asarray(labels))
  return jnp.where(_mask(where, ce.shape), ce + lam * ntl, 0.0)
