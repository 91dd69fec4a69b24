"""Sparsity schedules: Zhu & Gupta's cubic gradual schedule and GraNet's cosine-decaying death rate.

Both are pure ``jnp`` functions of the step, so they run inside ``jit`` / ``lax.scan``.

References:
  Zhu & Gupta, "To prune, or not to prune", arXiv:1710.01878, eq. 1.
  Liu et al., "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration" (GraNet), arXiv:2106.10404,
    Sec. 4 (and the official code, VITA-Group/GraNet ``CIFAR/sparselearning/core.py``, ``CosineDecay``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from paperlab import _checks

__all__ = ["gmp_sparsity", "cosine_death_rate"]


def gmp_sparsity(step, s_init: float, s_final: float, t0: int, n: int, dt: int) -> jax.Array:
  """Zhu & Gupta's gradual schedule (arXiv:1710.01878, eq. 1):
  ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` for ``t = t0 + k dt``, ``k = 0..n``, held constant between
  pruning steps, ``s_i`` before ``t0`` and ``s_f`` after ``t0 + n dt``.

  Args:
    step: training step (int, possibly traced).
    s_init, s_final: initial and final sparsity, in ``[0, 1)``.
    t0: first pruning step (>= 0).
    n: number of pruning steps after ``t0`` (>= 1).
    dt: steps between pruning steps (>= 1).
  """
  _checks.check_range("s_init", s_init, 0.0, 1.0, high_inclusive=False)
  _checks.check_range("s_final", s_final, 0.0, 1.0, high_inclusive=False)
  _checks.check_non_negative("t0", t0)
  for name, v in (("n", n), ("dt", dt)):
    if not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}.")
  k = jnp.clip(jnp.floor((jnp.asarray(step, jnp.float32) - t0) / dt), 0, n)
  return s_final + (s_init - s_final) * (1.0 - k / n) ** 3


def cosine_death_rate(step, total_steps: int, r0: float = 0.5, eta_min: float = 0.005) -> jax.Array:
  """GraNet's death (prune-and-regrow) rate: cosine-annealed from ``r0`` (default 0.5, ``--prune-rate``) to
  ``eta_min`` (0.005) over ``total_steps``, as the official code's ``CosineDecay`` (torch ``CosineAnnealingLR``):
  ``eta_min + (r0 - eta_min) (1 + cos(pi t / T)) / 2`` (the paper's ``r_t = r0 (1 + cos(pi t / T)) / 2`` when
  ``eta_min = 0``)."""
  _checks.check_range("r0", r0, 0.0, 1.0)
  _checks.check_range("eta_min", eta_min, 0.0, 1.0)
  if not isinstance(total_steps, int) or total_steps < 1:
    raise ValueError(f"total_steps must be a positive int, got {total_steps!r}.")
  t = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps)
  return eta_min + (r0 - eta_min) * (1.0 + jnp.cos(jnp.pi * t / total_steps)) / 2.0
