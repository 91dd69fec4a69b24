"""Scaling-law forms as pure ``jax.numpy`` functions: Kaplan et al. (2020) and Chinchilla (Hoffmann et al., 2022).

Every function here is elementwise over broadcastable arrays, jits and vmaps, and computes in the floating dtype of
its inputs (float32 by default, float64 under ``jax.enable_x64``); integer counts are promoted to float. Concrete
(non-traced) inputs are validated: parameter counts, token counts, compute and losses must be finite and positive.

References:
  Kaplan et al., "Scaling Laws for Neural Language Models", arXiv:2001.08361 (eqs. 1.1-1.6, Table 2).
  Hoffmann et al., "Training Compute-Optimal Large Language Models", arXiv:2203.15556 (eq. 2, Sec. 3.3, App. D.2).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks

__all__ = [
    "KaplanConstants", "KAPLAN", "ChinchillaParams", "CHINCHILLA", "kaplan_loss_n", "kaplan_loss_d",
    "kaplan_loss_c", "kaplan_loss_nd", "kaplan_loss_ns", "kaplan_critical_batch", "kaplan_L", "chinchilla_loss",
    "chinchilla_compute_optimal", "power_law",
]

ArrayLike = Any


class KaplanConstants(NamedTuple):
  """Kaplan et al. (arXiv:2001.08361) fitted constants; N counts non-embedding parameters, D tokens, C PF-days.

  Single-variable laws (eqs. 1.1-1.3): ``alpha_n, n_c``, ``alpha_d, d_c``, ``alpha_c, c_c`` (``C_min``).
  Joint law L(N, D) (eq. 1.5, Table 2): ``nd_alpha_n, nd_alpha_d, nd_n_c, nd_d_c``.
  L(N, S) (eq. 1.6): ``alpha_s, s_c``. Critical batch (eq. 1.4): ``b_star`` tokens, ``alpha_b``.
  """

  alpha_n: float = 0.076
  n_c: float = 8.8e13
  alpha_d: float = 0.095
  d_c: float = 5.4e13
  alpha_c: float = 0.050
  c_c: float = 3.1e8
  nd_alpha_n: float = 0.076
  nd_alpha_d: float = 0.103
  nd_n_c: float = 6.4e13
  nd_d_c: float = 1.8e13
  alpha_s: float = 0.76
  s_c: float = 2.1e3
  b_star: float = 2e8
  alpha_b: float = 0.21


KAPLAN = KaplanConstants()


class ChinchillaParams(NamedTuple):
  """``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al., arXiv:2203.15556, eq. 2)."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float


CHINCHILLA = ChinchillaParams(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
"""Approach 3 of Hoffmann et al. (Sec. 3.3, eq. 10): E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28."""


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _positive(name: str, x: ArrayLike) -> jax.Array:
  """``x`` as a float array; ValueError naming ``name`` if concrete and not finite-positive."""
  if _is_concrete(x):
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
      raise TypeError(f"{name} must be a real number or array, got {type(x).__name__} {x!r}.")
    if np.iscomplexobj(arr):
      raise TypeError(f"{name} must be real, got dtype {arr.dtype}.")
    bad = ~(np.isfinite(arr) & (arr > 0))
    if np.any(bad):
      raise ValueError(f"{name} must be finite and > 0 everywhere, got {arr[bad].ravel()[:5].tolist()} "
                       f"(first offending values).")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def _param(name: str, value, low: float = 0.0) -> Any:
  _checks.check_range(name, value, low, None, low_inclusive=False)
  return value


def kaplan_loss_n(N: ArrayLike, *, n_c: float = KAPLAN.n_c, alpha_n: float = KAPLAN.alpha_n) -> jax.Array:
  """``L(N) = (N_c / N)**alpha_N``: loss of a model with N non-embedding parameters trained to convergence.

  Kaplan et al., "Scaling Laws for Neural Language Models", arXiv:2001.08361, eq. 1.1 (alpha_N=0.076,
  N_c=8.8e13).
  """
  N = _positive("N", N)
  return (_param("n_c", n_c) / N) ** _param("alpha_n", alpha_n)


def kaplan_loss_d(D: ArrayLike, *, d_c: float = KAPLAN.d_c, alpha_d: float = KAPLAN.alpha_d) -> jax.Array:
  """``L(D) = (D_c / D)**alpha_D``: loss of a large model trained on D tokens with early stopping.

  Kaplan et al., arXiv:2001.08361, eq. 1.2 (alpha_D=0.095, D_c=5.4e13).
  """
  D = _positive("D", D)
  return (_param("d_c", d_c) / D) ** _param("alpha_d", alpha_d)


def kaplan_loss_c(C_min: ArrayLike, *, c_c: float = KAPLAN.c_c, alpha_c: float = KAPLAN.alpha_c) -> jax.Array:
  """``L(C_min) = (C_c / C_min)**alpha_C^min``, compute ``C_min`` in PF-days on the compute-efficient frontier.

  Kaplan et al., arXiv:2001.08361, eq. 1.3 (alpha_C^min=0.050, C_c^min=3.1e8 PF-days).
  """
  C_min = _positive("C_min", C_min)
  return (_param("c_c", c_c) / C_min) ** _param("alpha_c", alpha_c)


def kaplan_loss_nd(N: ArrayLike, D: ArrayLike, *, n_c: float = KAPLAN.nd_n_c, d_c: float = KAPLAN.nd_d_c,
                   alpha_n: float = KAPLAN.nd_alpha_n, alpha_d: float = KAPLAN.nd_alpha_d) -> jax.Array:
  """``L(N, D) = [(N_c / N)**(alpha_N / alpha_D) + D_c / D]**alpha_D``.

  Kaplan et al., arXiv:2001.08361, eq. 1.5 with the Table 2 fit (alpha_N=0.076, alpha_D=0.103, N_c=6.4e13,
  D_c=1.8e13). As D -> inf it reduces to :func:`kaplan_loss_n` with the same ``n_c, alpha_n``.
  """
  N, D = _positive("N", N), _positive("D", D)
  alpha_d = _param("alpha_d", alpha_d)
  return ((_param("n_c", n_c) / N) ** (_param("alpha_n", alpha_n) / alpha_d) + _param("d_c", d_c) / D) ** alpha_d


def kaplan_loss_ns(N: ArrayLike, S_min: ArrayLike, *, n_c: float = KAPLAN.n_c, alpha_n: float = KAPLAN.alpha_n,
                   s_c: float = KAPLAN.s_c, alpha_s: float = KAPLAN.alpha_s) -> jax.Array:
  """``L(N, S_min) = (N_c / N)**alpha_N + (S_c / S_min)**alpha_S``: loss after ``S_min`` steps at large batch.

  Kaplan et al., arXiv:2001.08361, eq. 1.6 (alpha_S=0.76, S_c=2.1e3; alpha_N=0.076, N_c=8.8e13 as in eq. 1.1).
  """
  N, S_min = _positive("N", N), _positive("S_min", S_min)
  return ((_param("n_c", n_c) / N) ** _param("alpha_n", alpha_n)
          + (_param("s_c", s_c) / S_min) ** _param("alpha_s", alpha_s))


def kaplan_critical_batch(L: ArrayLike, *, b_star: float = KAPLAN.b_star, alpha_b: float = KAPLAN.alpha_b
                          ) -> jax.Array:
  """Critical batch size in tokens, ``B_crit(L) = B_* / L**(1 / alpha_B)``.

  Kaplan et al., arXiv:2001.08361, eq. 1.4 (B_* ~ 2e8 tokens, alpha_B ~ 0.21).
  """
  L = _positive("L", L)
  return _param("b_star", b_star) / L ** (1.0 / _param("alpha_b", alpha_b))


def kaplan_L(N: ArrayLike | None = None, D: ArrayLike | None = None, C: ArrayLike | None = None, *,
             consts: KaplanConstants = KAPLAN) -> jax.Array:
  """Kaplan et al.'s loss law chosen by which variables are given (arXiv:2001.08361, eqs. 1.1-1.3, 1.5).

  ``N`` alone -> eq. 1.1, ``D`` alone -> eq. 1.2, ``C`` (= C_min, PF-days) alone -> eq. 1.3, ``N`` and ``D`` ->
  eq. 1.5 with the Table 2 constants. ``consts`` defaults to :data:`KAPLAN`.

  Raises:
    ValueError: for any other combination of arguments.
  """
  given = tuple(name for name, v in (("N", N), ("D", D), ("C", C)) if v is not None)
  if given == ("N",):
    return kaplan_loss_n(N, n_c=consts.n_c, alpha_n=consts.alpha_n)
  if given == ("D",):
    return kaplan_loss_d(D, d_c=consts.d_c, alpha_d=consts.alpha_d)
  if given == ("C",):
    return kaplan_loss_c(C, c_c=consts.c_c, alpha_c=consts.alpha_c)
  if given == ("N", "D"):
    return kaplan_loss_nd(N, D, n_c=consts.nd_n_c, d_c=consts.nd_d_c, alpha_n=consts.nd_alpha_n,
                          alpha_d=consts.nd_alpha_d)
  raise ValueError(f"kaplan_L takes N, D, C alone or N and D together; got {list(given) or 'nothing'}.")


def _check_chinchilla(params) -> ChinchillaParams:
  if not isinstance(params, ChinchillaParams):
    if isinstance(params, tuple) and len(params) == 5:
      params = ChinchillaParams(*params)
    else:
      raise TypeError(f"params must be a ChinchillaParams (E, A, B, alpha, beta), got {params!r}.")
  _checks.check_non_negative("params.E", params.E)
  for name in ("A", "B", "alpha", "beta"):
    _param(f"params.{name}", getattr(params, name))
  return params


def chinchilla_loss(N: ArrayLike, D: ArrayLike, params: ChinchillaParams = CHINCHILLA) -> jax.Array:
  """``L(N, D) = E + A / N**alpha + B / D**beta`` (Hoffmann et al., arXiv:2203.15556, eq. 2).

  ``N`` parameters, ``D`` training tokens; ``params`` defaults to the paper's approach-3 fit :data:`CHINCHILLA`
  (E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28).
  """
  N, D = _positive("N", N), _positive("D", D)
  p = _check_chinchilla(params)
  return p.E + p.A / N ** p.alpha + p.B / D ** p.beta


def chinchilla_compute_optimal(C: ArrayLike, params: ChinchillaParams = CHINCHILLA) -> tuple[jax.Array, jax.Array]:
  """Compute-optimal ``(N_opt(C), D_opt(C))`` of the Chinchilla law under ``C = 6 N D`` FLOPs.

  Hoffmann et al., arXiv:2203.15556, eq. 4 (App. D.2): ``N_opt = G (C/6)**a``, ``D_opt = G**-1 (C/6)**b`` with
  ``G = (alpha A / (beta B))**(1 / (alpha + beta))``, ``a = beta / (alpha + beta)``, ``b = alpha / (alpha + beta)``.
  With :data:`CHINCHILLA`, a = 0.45 (the paper's Table 2 reports 0.46 from its unrounded fit).
  """
  C = _positive("C", C)
  p = _check_chinchilla(params)
  s = p.alpha + p.beta
  G = (p.alpha * p.A / (p.beta * p.B)) ** (1.0 / s)
  return G * (C / 6.0) ** (p.beta / s), (C / 6.0) ** (p.alpha / s) / G


def power_law(x: ArrayLike, a: float, b: float, c: float = 0.0) -> jax.Array:
  """``y = c + a * x**(-b)``: a power law plus constant (irreducible term ``c``).

  The form of Henighan et al., "Scaling Laws for Autoregressive Generative Modeling", arXiv:2010.14701, eq. 1.1
  (``L(x) = L_inf + (x_0 / x)**alpha_x``, i.e. ``a = x_0**alpha_x``) and of the muScaling fits of Yao et al.,
  arXiv:2304.06875 (``L(N) = a N**-b + c``).
  """
  x = _positive("x", x)
  _checks.check_non_negative("c", c)
  return c + _param("a", a) * x ** (-_param("b", b))
