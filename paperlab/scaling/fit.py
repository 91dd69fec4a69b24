"""Fitting scaling laws the papers' way: Huber loss on log loss, L-BFGS from a grid of starts, bootstrap intervals.

Host-side: the fits run ``scipy.optimize.minimize(method="L-BFGS-B")`` in NumPy float64 (an optimizer loop over a
few hundred points with data-dependent restarts, not an array program worth jitting; float64 because the Huber
threshold 1e-3 on log loss sits close to float32 resolution of the objective). Each law supplies its residuals
``r(theta) = log prediction - log observed`` and their Jacobian; the objective is ``sum_i huber_delta(r_i)`` and its
exact gradient ``J^T clip(r, -delta, delta)``.

Bootstrap confidence intervals resample the points with replacement, refit each resample from the full-data
optimum (one L-BFGS run, as Besiroglu et al., arXiv:2404.10102, do for theirs) and report percentile intervals.

References:
  Hoffmann et al., "Training Compute-Optimal Large Language Models", arXiv:2203.15556, Sec. 3.3 and App. D.2.
  Kaplan et al., "Scaling Laws for Neural Language Models", arXiv:2001.08361, eqs. 1.1, 1.2, 1.5.
  Besiroglu et al., "Chinchilla Scaling: A replication attempt", arXiv:2404.10102.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.optimize
import scipy.special

from paperlab import _checks
from paperlab.scaling import laws

try:  # scipy's L-BFGS-B makes tiny BLAS calls: OpenBLAS worker threads spinning on them made a 5-parameter fit
  # 34x slower on a busy 2-core machine (measured). threadpoolctl comes with scikit-learn, a core dependency.
  from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover
  def _threadpool_limits(limits=None):
    del limits
    return contextlib.nullcontext()

__all__ = [
    "Fit", "CHINCHILLA_INIT_GRID", "LBFGS_OPTIONS", "huber", "fit_chinchilla", "fit_kaplan", "fit_power_law",
    "compute_optimal", "bootstrap_intervals", "kaplan_compute_optimal", "reducible", "compute_frontier",
]


def _paper_grid() -> np.ndarray:
  # Hoffmann et al., App. D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}.
  alpha = beta = np.arange(0.0, 2.5, 0.5)
  e = np.arange(-1.0, 1.5, 0.5)
  a = b = np.arange(0.0, 30.0, 5.0)
  return np.array([(ai, bi, ei, al, be) for al, be, ei, ai, bi in itertools.product(alpha, beta, e, a, b)])


CHINCHILLA_INIT_GRID = _paper_grid()
"""The 4500 starts ``(a, b, e, alpha, beta)`` of Hoffmann et al., App. D.2 (a = log A, b = log B, e = log E)."""


@dataclasses.dataclass(frozen=True)
class Fit:
  """A fitted law: ``params`` by name, the minimized ``objective``, the number of points, and (when bootstrapped)
  ``ci`` (name -> (low, high) percentile interval at ``confidence``) and ``samples`` (name -> the resample fits)."""

  law: str
  params: Mapping[str, float]
  objective: float
  num_points: int
  ci: Mapping[str, tuple[float, float]] | None = None
  samples: Mapping[str, np.ndarray] | None = None
  confidence: float | None = None

  def __getitem__(self, name: str) -> float:
    return self.params[name]


def huber(r: Any, delta: float = 1e-3) -> np.ndarray:
  """Huber loss ``0.5 r**2`` for ``|r| <= delta``, else ``delta (|r| - delta / 2)`` (``scipy.special.huber``).

  The robust loss of Hoffmann et al., arXiv:2203.15556, eq. 3 (delta = 1e-3 on log loss).
  """
  _checks.check_positive("delta", delta)
  return scipy.special.huber(delta, np.asarray(r, dtype=np.float64))


# ------------------------------------------------------------------------------------------------------------------
# validation


def _points(names: Sequence[str], arrays: Sequence[Any], num_params: int) -> list[np.ndarray]:
  out = []
  for name, x in zip(names, arrays):
    arr = np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
      raise TypeError(f"{name} must be a real array, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64)
    if arr.ndim != 1:
      raise ValueError(f"{name} must be 1-D (one value per run), got shape {arr.shape}.")
    bad = ~(np.isfinite(arr) & (arr > 0))
    if np.any(bad):
      raise ValueError(f"{name} must be finite and > 0 (the fit is in log space), got {arr[bad][:5].tolist()} "
                       f"at indices {np.flatnonzero(bad)[:5].tolist()}.")
    out.append(arr)
  lengths = {name: len(a) for name, a in zip(names, out)}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"{', '.join(names)} must have the same length, got lengths {lengths}.")
  n = len(out[0])
  if n < num_params:
    raise ValueError(f"too few points to fit {num_params} parameters: got {n}; need at least {num_params} "
                     f"(more for a meaningful fit).")
  return out


def _positive_np(name: str, x: Any) -> np.ndarray:
  """``x`` as float64 (host-side); ValueError naming ``name`` unless finite and > 0 everywhere."""
  arr = np.asarray(x, dtype=np.float64)
  bad = ~(np.isfinite(arr) & (arr > 0))
  if np.any(bad):
    raise ValueError(f"{name} must be finite and > 0 everywhere, got {arr[bad].ravel()[:5].tolist()} "
                     f"(first offending values).")
  return arr


def _check_bootstrap(bootstrap: int, confidence: float) -> None:
  if not isinstance(bootstrap, (int, np.integer)) or isinstance(bootstrap, bool) or bootstrap < 0:
    raise ValueError(f"bootstrap must be an int >= 0 (number of resamples; 0 = no intervals), got {bootstrap!r}.")
  _checks.check_range("confidence", confidence, 0.0, 1.0, low_inclusive=False, high_inclusive=False)


def _check_grid(init_grid: Any, num_params: int, order: str) -> np.ndarray:
  grid = np.asarray(init_grid, dtype=np.float64)
  if grid.ndim == 1:
    grid = grid[None]
  if grid.ndim != 2 or grid.shape[1] != num_params or grid.shape[0] == 0 or not np.all(np.isfinite(grid)):
    raise ValueError(f"init_grid must be a finite array of shape (num_starts, {num_params}) with columns {order}, "
                     f"got shape {np.shape(init_grid)}.")
  return grid


# ------------------------------------------------------------------------------------------------------------------
# the shared backend


LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000, "maxls": 50}
# scipy's default stopping rule (relative decrease 2.2e-9) halts on the nearly piecewise-linear Huber(1e-3)
# objective before the minimum: refits from the true constants stopped at alpha 0.3392 with objective 4.20e-4
# where the minimum is 4.05e-4, and bootstrap intervals came out one-sided (too narrow). Besiroglu et al.
# (arXiv:2404.10102, Sec. 3) trace Hoffmann et al.'s implausibly narrow intervals to the same early stop.

ResidualFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _huber_objective(residual_fn: ResidualFn, delta: float) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
  def objective(theta):
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
      r, jac = residual_fn(theta)
      abs_r = np.abs(r)
      value = float(np.sum(np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))))
      grad = np.clip(r, -delta, delta) @ jac
    if not np.isfinite(value) or not np.all(np.isfinite(grad)):
      return np.inf, np.zeros_like(theta)
    return value, grad
  return objective


def _lse(*u: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
  """Elementwise log-sum-exp of same-shape arrays and its softmax weights (the gradient), stable."""
  m = np.maximum.reduce(u) if len(u) > 1 else u[0]
  ex = [np.exp(x - m) for x in u]
  total = sum(ex)
  return m + np.log(total), [x / total for x in ex]


def _minimize_from(objective, starts: np.ndarray, bounds=None) -> tuple[np.ndarray, float]:
  """L-BFGS-B from every start; the best converged result (any finite one if none converged)."""
  best, best_fun, best_ok = None, np.inf, False
  with _threadpool_limits(limits=1):
    for x0 in starts:
      res = scipy.optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                    options=LBFGS_OPTIONS)
      if not np.isfinite(res.fun):
        continue
      ok = bool(res.success)
      if (ok and not best_ok) or (ok == best_ok and res.fun < best_fun):
        best, best_fun, best_ok = res.x, float(res.fun), ok
  if best is None:
    raise ValueError("every start of the fit diverged (non-finite objective); check the data or pass init_grid.")
  return best, best_fun


def bootstrap_intervals(refit: Callable[[np.ndarray], Mapping[str, float]], num_points: int, bootstrap: int, *,
                        confidence: float = 0.95, seed: int = 0) -> tuple[dict, dict]:
  """Percentile bootstrap: ``refit(indices)`` on ``bootstrap`` resamples of the points (with replacement).

  Returns ``(ci, samples)``: name -> ``(low, high)`` at ``confidence``, and name -> array of the resample fits.
  Host-side (NumPy ``default_rng(seed)``).
  """
  _check_bootstrap(bootstrap, confidence)
  rng = np.random.default_rng(seed)
  fits = [refit(rng.integers(0, num_points, num_points)) for _ in range(bootstrap)]
  samples = {k: np.array([f[k] for f in fits]) for k in fits[0]}
  q = 100 * (1 - confidence) / 2
  ci = {k: (float(np.nanpercentile(v, q)), float(np.nanpercentile(v, 100 - q))) for k, v in samples.items()}
  return ci, samples


def _fit(law: str, residuals: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]], num_points: int,
         starts: np.ndarray, named: Callable[[np.ndarray], dict], *, delta: float, bootstrap: int,
         confidence: float, seed: int, bounds=None) -> Fit:
  """Fit ``theta`` on all points from ``starts``; bootstrap refits start from the full-data optimum."""
  _checks.check_positive("delta", delta)
  _check_bootstrap(bootstrap, confidence)
  everything = np.arange(num_points)
  theta, value = _minimize_from(_huber_objective(lambda t: residuals(t, everything), delta), starts, bounds)
  ci = samples = None
  if bootstrap:
    def refit(idx):
      try:
        t, _ = _minimize_from(_huber_objective(lambda u: residuals(u, idx), delta), theta[None], bounds)
      except ValueError:
        return {k: np.nan for k in named(theta)}
      return named(t)
    ci, samples = bootstrap_intervals(refit, num_points, bootstrap, confidence=confidence, seed=seed)
  return Fit(law, named(theta), value, num_points, ci, samples, confidence if bootstrap else None)


# ------------------------------------------------------------------------------------------------------------------
# Chinchilla


def _chinchilla_residuals(log_n, log_d, log_l):
  def residuals(theta, idx):
    a, b, e, alpha, beta = theta
    ln, ld = log_n[idx], log_d[idx]
    lse, (w0, w1, w2) = _lse(a - alpha * ln, b - beta * ld, np.full(len(idx), e))
    return lse - log_l[idx], np.stack([w0, w1, w2, -w0 * ln, -w1 * ld], axis=1)
  return residuals


def _chinchilla_named(theta) -> dict:
  a, b, e, alpha, beta = (float(v) for v in theta)
  return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta,
          "a": a, "b": b, "e": e}


def fit_chinchilla(N: Any, D: Any, L: Any, *, delta: float = 1e-3, init_grid: Any | None = None,
                   bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> Fit:
  """Fit ``L(N, D) = E + A / N**alpha + B / D**beta`` by Hoffmann et al.'s approach 3.

  Hoffmann et al., "Training Compute-Optimal Large Language Models", arXiv:2203.15556, eq. 3 and App. D.2:
  minimize ``sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i)`` over
  ``(a, b, e, alpha, beta)`` with ``A = exp(a), B = exp(b), E = exp(e)``, delta = 1e-3, by L-BFGS from each start
  of the paper's grid (:data:`CHINCHILLA_INIT_GRID`, 4500 starts; about a minute on one CPU core), keeping the
  best. Host-side scipy ``L-BFGS-B`` without bounds, float64, exact gradient, tight tolerances
  (:data:`LBFGS_OPTIONS`: scipy's defaults stop early on this objective).

  Args:
    N: parameter counts, 1-D, > 0.
    D: training tokens, 1-D, > 0, same length.
    L: final losses, 1-D, > 0, same length (at least 5 points).
    delta: Huber threshold on log loss (paper: 1e-3).
    init_grid: starts ``(num_starts, 5)`` with columns ``(a, b, e, alpha, beta)``; default the paper's grid.
    bootstrap: number of point resamples for percentile intervals (0: none).
    confidence: interval level.
    seed: resampling seed.

  Returns:
    :class:`Fit` with params ``E, A, B, alpha, beta`` (and their log-space ``a, b, e``).

  Raises:
    ValueError: non-positive or non-finite N/D/L, mismatched lengths, fewer than 5 points, bad options.
  """
  N, D, L = _points(("N", "D", "L"), (N, D, L), 5)
  grid = CHINCHILLA_INIT_GRID if init_grid is None else _check_grid(init_grid, 5, "(a, b, e, alpha, beta)")
  return _fit("chinchilla", _chinchilla_residuals(np.log(N), np.log(D), np.log(L)), len(N), grid,
              _chinchilla_named, delta=delta, bootstrap=bootstrap, confidence=confidence, seed=seed)


def compute_optimal(fit: Fit | laws.ChinchillaParams, C: Any) -> tuple[np.ndarray, np.ndarray]:
  """``(N_opt(C), D_opt(C))`` minimizing a fitted Chinchilla law under ``C = 6 N D``.

  Hoffmann et al., arXiv:2203.15556, eq. 4: ``N_opt = G (C/6)**(beta/(alpha+beta))``,
  ``D_opt = G**-1 (C/6)**(alpha/(alpha+beta))``, ``G = (alpha A / (beta B))**(1/(alpha+beta))``
  (:func:`paperlab.scaling.chinchilla_compute_optimal` on the fitted constants).

  Raises:
    TypeError: ``fit`` is not a Chinchilla fit or :class:`~paperlab.scaling.ChinchillaParams`.
  """
  if isinstance(fit, Fit):
    if fit.law != "chinchilla":
      raise TypeError(f"compute_optimal needs a Chinchilla fit (law 'chinchilla'), got law {fit.law!r}.")
    fit = laws.ChinchillaParams(*(fit.params[k] for k in ("E", "A", "B", "alpha", "beta")))
  if not isinstance(fit, laws.ChinchillaParams):
    raise TypeError(f"fit must be a Fit from fit_chinchilla or a ChinchillaParams, got {type(fit).__name__}.")
  C = _positive_np("C", C)
  p = fit
  s = p.alpha + p.beta
  G = (p.alpha * p.A / (p.beta * p.B)) ** (1.0 / s)
  return G * (C / 6.0) ** (p.beta / s), (C / 6.0) ** (p.alpha / s) / G


# ------------------------------------------------------------------------------------------------------------------
# Kaplan and power laws


def _kaplan_nd_residuals(log_n, log_d, log_l):
  def residuals(theta, idx):
    log_nc, log_dc, alpha_n, alpha_d = theta
    u0 = alpha_n / alpha_d * (log_nc - log_n[idx])
    lse, (w0, w1) = _lse(u0, log_dc - log_d[idx])
    jac = np.stack([alpha_n * w0, alpha_d * w1, w0 * (log_nc - log_n[idx]), lse - w0 * u0], axis=1)
    return alpha_d * lse - log_l[idx], jac
  return residuals


def _single_residuals(log_x, log_l):
  def residuals(theta, idx):
    log_xc, alpha = theta
    return alpha * (log_xc - log_x[idx]) - log_l[idx], np.stack(
        [np.full(len(idx), alpha), log_xc - log_x[idx]], axis=1)
  return residuals


def fit_kaplan(N: Any | None = None, D: Any | None = None, L: Any = None, *, delta: float = 1e-3,
               init_grid: Any | None = None, bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> Fit:
  """Fit Kaplan et al.'s laws (arXiv:2001.08361) by Huber loss on log loss with L-BFGS.

  - ``N`` only: ``L(N) = (N_c / N)**alpha_N`` (eq. 1.1); params ``N_c, alpha_N``;
  - ``D`` only: ``L(D) = (D_c / D)**alpha_D`` (eq. 1.2); params ``D_c, alpha_D``;
  - ``N`` and ``D``: ``L(N, D) = [(N_c / N)**(alpha_N / alpha_D) + D_c / D]**alpha_D`` (eq. 1.5); params
    ``N_c, D_c, alpha_N, alpha_D``.

  Kaplan et al. fit by least squares; here the objective is the Chinchilla-style robust one (Huber, delta 1e-3, on
  log loss), which equals least squares in log space while residuals are below delta. Single-variable fits start
  from the log-space least-squares solution (the closed form); the joint fit starts from a grid over
  ``alpha_N, alpha_D in {0.05, 0.1, 0.3}`` and ``log N_c, log D_c in {10, 25, 40}`` (81 starts) unless ``init_grid``
  ``(num_starts, 4)`` with columns ``(log N_c, log D_c, alpha_N, alpha_D)`` is given. Host-side scipy L-BFGS-B.

  Raises:
    ValueError: neither N nor D, non-positive or non-finite values, mismatched lengths, too few points.
  """
  if L is None or (N is None and D is None):
    raise ValueError("fit_kaplan needs L and at least one of N, D.")
  if N is not None and D is not None:
    N, D, L = _points(("N", "D", "L"), (N, D, L), 4)
    grid = (np.array(list(itertools.product((10.0, 25.0, 40.0), (10.0, 25.0, 40.0), (0.05, 0.1, 0.3),
                                            (0.05, 0.1, 0.3))))
            if init_grid is None else _check_grid(init_grid, 4, "(log N_c, log D_c, alpha_N, alpha_D)"))
    bounds = [(None, None), (None, None), (1e-6, None), (1e-6, None)]

    def named(t):
      return {"N_c": float(np.exp(t[0])), "D_c": float(np.exp(t[1])), "alpha_N": float(t[2]),
              "alpha_D": float(t[3])}
    return _fit("kaplan_nd", _kaplan_nd_residuals(np.log(N), np.log(D), np.log(L)), len(N), grid, named,
                delta=delta, bootstrap=bootstrap, confidence=confidence, seed=seed, bounds=bounds)
  var = "N" if N is not None else "D"
  x, L = _points((var, "L"), (N if N is not None else D, L), 2)
  log_x, log_l = np.log(x), np.log(L)
  slope, intercept = np.polyfit(log_x, log_l, 1)  # log L = alpha log X_c - alpha log X
  start = np.array([intercept / -slope if slope != 0 else 0.0, -slope])
  grid = start[None] if init_grid is None else _check_grid(init_grid, 2, f"(log {var}_c, alpha_{var})")

  def named_single(t):
    return {f"{var}_c": float(np.exp(t[0])), f"alpha_{var}": float(t[1])}
  return _fit(f"kaplan_{var.lower()}", _single_residuals(log_x, log_l), len(x), grid, named_single, delta=delta,
              bootstrap=bootstrap, confidence=confidence, seed=seed)


def _power_residuals(log_x, log_y):
  def residuals(theta, idx):
    log_a, b, log_c = theta
    lse, (w0, w1) = _lse(log_a - b * log_x[idx], np.full(len(idx), log_c))
    return lse - log_y[idx], np.stack([w0, -w0 * log_x[idx], w1], axis=1)
  return residuals


def fit_power_law(x: Any, y: Any, *, with_offset: bool = True, delta: float = 1e-3, init_grid: Any | None = None,
                  bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> Fit:
  """Fit ``y = c + a x**(-b)`` (``c = 0`` when ``with_offset=False``) by Huber loss on log y with L-BFGS.

  The power law plus constant of Henighan et al., arXiv:2010.14701, eq. 1.1, fitted the Chinchilla way (Hoffmann
  et al., arXiv:2203.15556: ``log y ~ LSE(log a - b log x, log c)``, Huber delta 1e-3, grid of starts). Default
  starts: ``b in {0.1, 0.3, 0.6, 1, 2}``, ``log c in {log min(y) - 3, log min(y) - 0.1}``, ``log a`` so that the
  first point is matched. Without offset it starts from the log-space least-squares line. Host-side scipy.

  Returns:
    :class:`Fit` with params ``a, b, c``.
  """
  if with_offset not in (True, False):
    raise TypeError(f"with_offset must be a bool, got {with_offset!r}.")
  x, y = _points(("x", "y"), (x, y), 3 if with_offset else 2)
  log_x, log_y = np.log(x), np.log(y)
  if not with_offset:
    slope, intercept = np.polyfit(log_x, log_y, 1)
    grid = np.array([[intercept, -slope]]) if init_grid is None else _check_grid(init_grid, 2, "(log a, b)")

    def residuals2(theta, idx):  # log y = log a - b log x
      log_a, b = theta
      return log_a - b * log_x[idx] - log_y[idx], np.stack([np.ones(len(idx)), -log_x[idx]], axis=1)

    return _fit("power_law", residuals2, len(x), grid,
                lambda t: {"a": float(np.exp(t[0])), "b": float(t[1]), "c": 0.0}, delta=delta,
                bootstrap=bootstrap, confidence=confidence, seed=seed)
  if init_grid is None:
    i0 = int(np.argmin(log_x))
    lc = (float(log_y.min()) - 3.0, float(log_y.min()) - 0.1)
    grid = np.array([[log_y[i0] + b * log_x[i0], b, c] for b in (0.1, 0.3, 0.6, 1.0, 2.0) for c in lc])
  else:
    grid = _check_grid(init_grid, 3, "(log a, b, log c)")
  return _fit("power_law", _power_residuals(log_x, log_y), len(x), grid,
              lambda t: {"a": float(np.exp(t[0])), "b": float(t[1]), "c": float(np.exp(t[2]))}, delta=delta,
              bootstrap=bootstrap, confidence=confidence, seed=seed)


def kaplan_compute_optimal(C_min: Any, consts: laws.KaplanConstants = laws.KAPLAN) -> tuple[np.ndarray, np.ndarray]:
  """Compute-efficient model size ``N_opt(C_min)`` and its loss under Kaplan et al.'s L(N, S_min) law.

  Kaplan et al., arXiv:2001.08361, Sec. 6 and App. B: training at the critical batch size spends
  ``C_min = 6 N B_crit(L) S_min`` FLOPs (eqs. 1.4, 5.4-5.5), with ``L = (N_c/N)**alpha_N + (S_c/S_min)**alpha_S``
  (eq. 1.6) and ``B_crit(L) = B_* / L**(1/alpha_B)``. For each ``N`` the loss is the root of that fixed point
  (``scipy.optimize.brentq``) and ``N_opt`` minimizes it (bounded ``minimize_scalar`` over log N). The paper's
  closed form gives ``N_opt ~ C_min**(alpha_C/alpha_N)`` with ``alpha_C = 1/(1/alpha_S + 1/alpha_B + 1/alpha_N)``
  (0.684 with the published exponents; the paper quotes 0.73 from its Figure 14 fit). Host-side.

  Args:
    C_min: compute in FLOPs (B in tokens, S in steps), scalar or 1-D, > 0.
    consts: :class:`~paperlab.scaling.KaplanConstants` (``n_c, alpha_n, s_c, alpha_s, b_star, alpha_b`` used).

  Returns:
    ``(N_opt, L_opt)`` arrays shaped like ``C_min``.

  Raises:
    ValueError: non-positive budgets, or an optimum outside ``N in [1e2, 1e16]``.
  """
  C = np.atleast_1d(_positive_np("C_min", C_min))
  k = consts

  def loss_at(log_n, c):
    n = np.exp(log_n)
    f = lambda L: ((k.n_c / n) ** k.alpha_n + (k.s_c * 6.0 * n * k.b_star / (c * L ** (1.0 / k.alpha_b)))
                   ** k.alpha_s - L)
    lo = (k.n_c / n) ** k.alpha_n  # the loss can never be below the N term, and f(lo) > 0, f(large) < 0
    hi = lo + 1.0
    while f(hi) > 0:
      hi = lo + 2.0 * (hi - lo)
    return scipy.optimize.brentq(f, lo, hi, xtol=1e-14, rtol=1e-13)

  n_opt, l_opt = [], []
  lo, hi = np.log(1e2), np.log(1e16)
  for c in C:
    res = scipy.optimize.minimize_scalar(lambda z, c=c: loss_at(z, c), bounds=(lo, hi), method="bounded",
                                         options={"xatol": 1e-9})
    if min(res.x - lo, hi - res.x) < 1e-3:
      raise ValueError(f"C_min={c:g}: the compute-optimal N lies at the search bound [1e2, 1e16] parameters; "
                       f"use budgets inside the law's range.")
    n_opt.append(np.exp(res.x))
    l_opt.append(res.fun)
  shape = np.shape(C_min)
  return np.reshape(n_opt, shape), np.reshape(l_opt, shape)


def reducible(fit: Fit, y: Any) -> np.ndarray:
  """Reducible loss ``y - L_inf`` of a power law plus constant (Henighan et al., "Scaling Laws for Autoregressive
  Generative Modeling", arXiv:2010.14701, Sec. 2: L_inf estimates the entropy of the data, the rest the KL
  divergence of the model). ``fit`` is a :func:`fit_power_law` fit (``c`` = L_inf) or a Chinchilla fit (``E``)."""
  if not isinstance(fit, Fit) or fit.law not in ("power_law", "chinchilla"):
    raise TypeError(f"fit must be a power_law or chinchilla Fit, got {fit!r:.80}.")
  return np.asarray(y, dtype=np.float64) - (fit.params["c"] if fit.law == "power_law" else fit.params["E"])


def compute_frontier(C: Sequence[Any], L: Sequence[Any], *, num: int = 200
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lower envelope of the loss-vs-compute curves of several runs (Henighan et al., arXiv:2010.14701, Sec. 2;
  Kaplan et al., arXiv:2001.08361, Sec. 6: the compute-efficient frontier).

  Each run's curve (its ``C[i]``, ``L[i]``, compute increasing) is interpolated linearly in (log C, log L) on a
  common log-spaced grid of ``num`` budgets spanning all runs; outside its own range a run does not count.

  Returns:
    ``(C_grid, L_min, run)``: the budgets, the lowest loss reached at each, and the index of the run reaching it.

  Raises:
    ValueError: no runs, mismatched lengths, non-positive values, compute not increasing within a run.
  """
  if len(C) == 0 or len(C) != len(L):
    raise ValueError(f"C and L must hold the same number (>= 1) of runs, got {len(C)} and {len(L)}.")
  if not isinstance(num, (int, np.integer)) or num < 2:
    raise ValueError(f"num must be an int >= 2, got {num!r}.")
  runs = []
  for i, (c, l) in enumerate(zip(C, L)):
    c, l = _points((f"C[{i}]", f"L[{i}]"), (c, l), 2)
    if np.any(np.diff(c) <= 0):
      raise ValueError(f"C[{i}] must be strictly increasing (a run's compute along training).")
    runs.append((np.log(c), np.log(l)))
  grid = np.linspace(min(r[0][0] for r in runs), max(r[0][-1] for r in runs), num)
  curves = np.stack([np.where((grid >= lc[0]) & (grid <= lc[-1]), np.interp(grid, lc, ll), np.inf)
                     for lc, ll in runs])
  best = np.argmin(curves, axis=0)
  return np.exp(grid), np.exp(curves[best, np.arange(num)]), best
