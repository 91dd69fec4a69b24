"""Laws that carry a scaling law over to other losses, token multipliers and downstream accuracy.

- Loss-to-loss prediction (Brandfonbrener et al., "Loss-to-Loss Prediction: Scaling Laws for All Datasets",
  arXiv:2411.12925, eq. 3): ``L_y = K (L_x - E_x)**kappa + E_y``, a shifted power law between the losses of two
  datasets (train->train, train->test, test->test), ``E_x, E_y`` the irreducible losses of each side's own law.
- Over-training (Gadre et al., "Language models scale reliably with over-training and on downstream tasks",
  arXiv:2403.08540, eq. 4): with ``C = 6 N D`` and token multiplier ``M = D / N``, Chinchilla with
  ``alpha = beta`` becomes ``L(C, M) = E + (a M**eta + b M**-eta) C**-eta`` (``eta = alpha / 2``,
  ``a = A 6**eta``, ``b = B 6**eta``); downstream error ``Err(L) = epsilon - k exp(-gamma L)`` (eq. 5).
- Task ladders (Bhagia et al., "Establishing Task Scaling Laws via Compute-Efficient Model Ladders",
  arXiv:2412.04403, eqs. 1-2): step 1 the task loss ``L(N, D) = A / N**alpha + B / D**beta + E``, step 2 the
  accuracy ``Acc(L) = a / (1 + exp(-k (L - L_0))) + b``.

The law functions (``loss_to_loss``, ``overtrained_loss``, ``loss_to_error``, ``task_sigmoid``, ``predict_task``) are
pure ``jax.numpy``, elementwise, and jit/vmap (parameters are Python floats closed over). The fits are host-side and
reuse :mod:`paperlab.scaling.fit`'s backend: a Huber objective on residuals, L-BFGS-B from a grid of starts
(``scipy``, float64, exact gradients) and percentile bootstrap intervals (:func:`paperlab.scaling.bootstrap_intervals`
through the shared ``_fit``).
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.scaling import fit as _fl
from paperlab.scaling import laws

__all__ = [
    "LossToLossParams", "OvertrainedParams", "LossToErrorParams", "SigmoidParams", "loss_to_loss",
    "fit_loss_to_loss", "overtrained_loss", "overtrained_from_chinchilla", "fit_overtrained", "loss_to_error",
    "fit_loss_to_error", "task_sigmoid", "fit_sigmoid", "fit_task_ladder", "predict_task",
]

_Fit = _fl.Fit


class LossToLossParams(NamedTuple):
  """``L_y = K (L_x - E_x)**kappa + E_y`` (Brandfonbrener et al., arXiv:2411.12925, eq. 3)."""

  K: float
  kappa: float
  Ex: float
  Ey: float


class OvertrainedParams(NamedTuple):
  """``L(C, M) = E + (a M**eta + b M**-eta) C**-eta`` (Gadre et al., arXiv:2403.08540, eq. 4)."""

  E: float
  a: float
  b: float
  eta: float


class LossToErrorParams(NamedTuple):
  """``Err(L) = epsilon - k exp(-gamma L)`` (Gadre et al., arXiv:2403.08540, eq. 5)."""

  epsilon: float
  k: float
  gamma: float


class SigmoidParams(NamedTuple):
  """``Acc(L) = a / (1 + exp(-k (L - L0))) + b`` (Bhagia et al., arXiv:2412.04403, eq. 2)."""

  a: float
  b: float
  k: float
  L0: float


def _params(cls, params, law: str):
  if isinstance(params, _Fit):
    if params.law != law:
      raise TypeError(f"params must be a {law!r} Fit or a {cls.__name__}, got a Fit of law {params.law!r}.")
    return cls(*(params.params[k] for k in cls._fields))
  if isinstance(params, tuple) and len(params) == len(cls._fields):
    return cls(*params)
  raise TypeError(f"params must be a {cls.__name__} {cls._fields} or a {law!r} Fit, got {params!r:.80}.")


def _float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


# ------------------------------------------------------------------------------------------------------------------
# loss-to-loss


def loss_to_loss(Lx: Any, params: LossToLossParams | _Fit) -> jax.Array:
  """``L_y = K (L_x - E_x)**kappa + E_y``: the loss on dataset y predicted from the loss on dataset x.

  Brandfonbrener et al., "Loss-to-Loss Prediction: Scaling Laws for All Datasets", arXiv:2411.12925, eq. 3. Pure
  jnp, elementwise (``L_x <= E_x`` gives NaN: below the irreducible loss the law is undefined).
  """
  p = _params(LossToLossParams, params, "loss_to_loss")
  return p.K * (_float(Lx) - p.Ex) ** p.kappa + p.Ey


def _irreducible(name: str, L: np.ndarray, N, D, init_grid) -> tuple[float, np.ndarray]:
  """E of one side's own law and the law's log-space optimum (the start of its bootstrap refits)."""
  if N is None:
    raise ValueError(f"{name} is None: pass it, or pass N (and D) so that it is taken from each side's own scaling "
                     "law (fit_power_law on (N, L), or fit_chinchilla on (N, D, L)).")
  if D is None:
    f = _fl.fit_power_law(N, L, init_grid=init_grid)
    return f["c"], np.array([np.log(f["a"]), f["b"], np.log(f["c"])])
  f = _fl.fit_chinchilla(N, D, L, init_grid=init_grid)
  return f["E"], np.array([f["a"], f["b"], f["e"], f["alpha"], f["beta"]])


def _shifted_power_fit(Lx, Ly, Ex: float, Ey: float, delta: float) -> _Fit:
  for name, L, E in (("Lx", Lx, Ex), ("Ly", Ly, Ey)):
    if not np.isfinite(E) or E < 0 or np.any(L <= E):
      raise ValueError(f"E{name[1]}={E!r}: must be finite, >= 0 and below every {name} (min {L.min():g}); the law "
                       f"needs {name} - E{name[1]} > 0.")
  log_u, log_v, log_y = np.log(Lx - Ex), np.log(Ly - Ey), np.log(Ly)

  def residuals(theta, idx):
    log_k, kappa = theta
    t = np.exp(log_k + kappa * log_u[idx])  # K (Lx - Ex)**kappa
    pred = t + Ey
    w = t / pred
    return np.log(pred) - log_y[idx], np.stack([w, w * log_u[idx]], axis=1)

  if len(np.unique(log_u)) > 1:
    slope, intercept = np.polyfit(log_u, log_v, 1)
  else:
    slope, intercept = 1.0, float(np.mean(log_v - log_u))
  starts = [[intercept, slope]] + [[float(np.mean(log_v - kp * log_u)), kp] for kp in (0.5, 1.0, 2.0)]
  return _fl._fit("loss_to_loss", residuals, len(Lx), np.asarray(starts),  # pylint: disable=protected-access
                  lambda t: {"K": float(np.exp(t[0])), "kappa": float(t[1]), "Ex": Ex, "Ey": Ey}, delta=delta,
                  bootstrap=0, confidence=0.95, seed=0)


def fit_loss_to_loss(Lx: Any, Ly: Any, Ex: float | None = None, Ey: float | None = None, *, N: Any | None = None,
                     D: Any | None = None, e_init_grid: Any | None = None, delta: float = 1e-3,
                     bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> _Fit:
  """Fit the shifted power law ``L_y = K (L_x - E_x)**kappa + E_y`` between paired losses.

  Brandfonbrener et al., "Loss-to-Loss Prediction: Scaling Laws for All Datasets", arXiv:2411.12925, eq. 3: the
  pairs are the same model on two test sets (train->test, test->test) or models of equal compute trained on two
  datasets (train->train). ``E_x`` and ``E_y`` are fixed beforehand from each side's own scaling law, as in the
  paper; when ``None`` they are taken from :func:`~paperlab.scaling.fit_power_law` on ``(N, L)`` (``D`` not
  given) or :func:`~paperlab.scaling.fit_chinchilla` on ``(N, D, L)``. ``K, kappa`` are then fitted by the
  Chinchilla recipe (Huber ``delta`` 1e-3 on ``log L_y``, L-BFGS-B from ``kappa in {0.5, 1, 2}`` and the
  log-space line). Host-side scipy; the law is :func:`loss_to_loss`.

  When two Chinchilla laws with ``alpha = beta`` share the runs' ``N`` and a fixed ``D / N``, the pairs follow
  this law exactly with ``kappa = alpha_y / alpha_x``.

  Args:
    Lx, Ly: paired losses, 1-D, > 0, same length (at least 2 points; E fits need 3 (power law) or 5 (Chinchilla)).
    Ex, Ey: irreducible losses; ``None`` fits them from ``N`` (and ``D``).
    N, D: the runs' parameter counts (and tokens), used only to fit a missing E.
    e_init_grid: starts of the E fits (``fit_power_law`` / ``fit_chinchilla`` columns); default theirs.
    delta: Huber threshold on log loss.
    bootstrap, confidence, seed: percentile intervals over resampled pairs; a fitted E is refitted on each
      resample (from the full-data optimum), so its uncertainty enters the intervals of ``K`` and ``kappa``.

  Returns:
    :class:`~paperlab.scaling.Fit` (law ``"loss_to_loss"``) with params ``K, kappa, Ex, Ey``.

  Raises:
    ValueError: bad shapes or values, too few points, E missing without N, or losses not above their E.
  """
  Lx, Ly = _fl._points(("Lx", "Ly"), (Lx, Ly), 2)  # pylint: disable=protected-access
  _fl._check_bootstrap(bootstrap, confidence)  # pylint: disable=protected-access
  if N is not None:
    names = ("Lx", "N") if D is None else ("Lx", "N", "D")
    arrays = (Lx, N) if D is None else (Lx, N, D)
    N, *rest = _fl._points(names, arrays, 2)[1:]  # pylint: disable=protected-access
    D = rest[0] if rest else None
  given = {"Ex": Ex, "Ey": Ey}
  starts = {}
  for name, L in (("Ex", Lx), ("Ey", Ly)):
    if given[name] is None:
      given[name], starts[name] = _irreducible(name, L, N, D, e_init_grid)
  fit = _shifted_power_fit(Lx, Ly, float(given["Ex"]), float(given["Ey"]), delta)
  if not bootstrap:
    return fit

  def refit(idx):
    es = {}
    for name, L in (("Ex", Lx), ("Ey", Ly)):
      if name in starts:
        sub_d = None if D is None else D[idx]
        try:
          es[name] = _irreducible(name, L[idx], N[idx], sub_d, starts[name])[0]
        except ValueError:
          return {k: np.nan for k in fit.params}
      else:
        es[name] = float(given[name])
    try:
      return dict(_shifted_power_fit(Lx[idx], Ly[idx], es["Ex"], es["Ey"], delta).params)
    except ValueError:
      return {k: np.nan for k in fit.params}

  ci, samples = _fl.bootstrap_intervals(refit, len(Lx), bootstrap, confidence=confidence, seed=seed)
  return _Fit("loss_to_loss", fit.params, fit.objective, fit.num_points, ci, samples, confidence)


# ------------------------------------------------------------------------------------------------------------------
# over-training


def overtrained_loss(C: Any, M: Any, params: OvertrainedParams | _Fit) -> jax.Array:
  """``L(C, M) = E + (a M**eta + b M**-eta) C**-eta``, compute ``C = 6 N D`` and token multiplier ``M = D / N``.

  Gadre et al., "Language models scale reliably with over-training and on downstream tasks", arXiv:2403.08540,
  eq. 4: the exponent in ``C`` does not depend on ``M``; over-training only shifts the law's offset. Pure jnp.
  """
  p = _params(OvertrainedParams, params, "overtrained")
  C, M = laws._positive("C", C), laws._positive("M", M)  # pylint: disable=protected-access
  return p.E + (p.a * M ** p.eta + p.b * M ** -p.eta) * C ** -p.eta


def overtrained_from_chinchilla(params: laws.ChinchillaParams, *, atol: float = 1e-12) -> OvertrainedParams:
  """Gadre et al.'s reparametrization of a Chinchilla law with ``alpha = beta`` (arXiv:2403.08540, eq. 4):
  ``N = sqrt(C / (6 M))``, ``D = sqrt(C M / 6)`` give ``eta = alpha / 2``, ``a = A 6**eta``, ``b = B 6**eta``.

  Raises:
    ValueError: ``|alpha - beta| > atol`` (the form needs equal exponents).
  """
  p = laws._check_chinchilla(params)  # pylint: disable=protected-access
  if abs(p.alpha - p.beta) > atol:
    raise ValueError(f"params: the over-training law needs alpha == beta, got alpha={p.alpha}, beta={p.beta}.")
  eta = p.alpha / 2.0
  return OvertrainedParams(p.E, p.A * 6.0 ** eta, p.B * 6.0 ** eta, eta)


def _overtrained_grid() -> np.ndarray:
  # Hoffmann et al.'s grid (App. D.2) thinned: log a, log b in {0, 10, 20}, e in {-1, 0, 1}, eta in
  # {0.05, 0.15, 0.3, 0.6} (eta = alpha / 2: the paper's grid of alpha halved) -> 108 starts.
  return np.array([(a, b, e, eta) for a, b, e, eta in itertools.product((0.0, 10.0, 20.0), (0.0, 10.0, 20.0),
                                                                        (-1.0, 0.0, 1.0), (0.05, 0.15, 0.3, 0.6))])


def fit_overtrained(C: Any, M: Any, L: Any, *, delta: float = 1e-3, init_grid: Any | None = None,
                    bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> _Fit:
  """Fit ``L(C, M) = E + (a M**eta + b M**-eta) C**-eta`` (Gadre et al., arXiv:2403.08540, eq. 4).

  The Chinchilla recipe (Hoffmann et al., arXiv:2203.15556, App. D.2) on this form: minimize
  ``sum_i Huber_delta(LSE(log a + eta (log M_i - log C_i), log b - eta (log M_i + log C_i), e) - log L_i)`` over
  ``(log a, log b, e, eta)``, delta 1e-3, by L-BFGS-B from each start of a grid (108 starts, the paper's grid thinned
  with ``eta = alpha / 2``; columns ``(log a, log b, e, eta)``), keeping the best. Host-side scipy, float64.

  Args:
    C: training compute ``6 N D``, 1-D, > 0.
    M: token multipliers ``D / N``, 1-D, > 0 (at least two distinct values to separate ``a`` from ``b``).
    L: losses, 1-D, > 0 (at least 4 points).
    delta, init_grid, bootstrap, confidence, seed: as in :func:`~paperlab.scaling.fit_chinchilla`.

  Returns:
    :class:`~paperlab.scaling.Fit` (law ``"overtrained"``) with params ``E, a, b, eta``.

  Raises:
    ValueError: bad shapes or values, fewer than 4 points, a single value of M.
  """
  C, M, L = _fl._points(("C", "M", "L"), (C, M, L), 4)  # pylint: disable=protected-access
  if len(np.unique(M)) < 2:
    raise ValueError(f"M must hold at least two distinct token multipliers (a and b are not separable at one), got "
                     f"{np.unique(M).tolist()}.")
  grid = _overtrained_grid() if init_grid is None else _fl._check_grid(  # pylint: disable=protected-access
      init_grid, 4, "(log a, log b, e, eta)")
  log_c, log_m, log_l = np.log(C), np.log(M), np.log(L)

  def residuals(theta, idx):
    la, lb, e, eta = theta
    lm, lc = log_m[idx], log_c[idx]
    lse, (w0, w1, w2) = _fl._lse(la + eta * (lm - lc), lb - eta * (lm + lc),  # pylint: disable=protected-access
                                  np.full(len(idx), e))
    return lse - log_l[idx], np.stack([w0, w1, w2, w0 * (lm - lc) - w1 * (lm + lc)], axis=1)

  return _fl._fit("overtrained", residuals, len(C), grid,  # pylint: disable=protected-access
                  lambda t: {"E": float(np.exp(t[2])), "a": float(np.exp(t[0])), "b": float(np.exp(t[1])),
                             "eta": float(t[3])},
                  delta=delta, bootstrap=bootstrap, confidence=confidence, seed=seed)


# ------------------------------------------------------------------------------------------------------------------
# loss -> downstream error


def loss_to_error(L: Any, params: LossToErrorParams | _Fit) -> jax.Array:
  """``Err(L) = epsilon - k exp(-gamma L)``: average top-1 error as a function of loss.

  Gadre et al., arXiv:2403.08540, eq. 5 (``epsilon`` the error of a chance-level model as ``L -> inf``). Pure jnp.
  """
  p = _params(LossToErrorParams, params, "loss_to_error")
  return p.epsilon - p.k * jnp.exp(-p.gamma * _float(L))


def fit_loss_to_error(L: Any, err: Any, *, delta: float = 1e-3, init_grid: Any | None = None, bootstrap: int = 0,
                      confidence: float = 0.95, seed: int = 0) -> _Fit:
  """Fit ``Err(L) = epsilon - k exp(-gamma L)`` (Gadre et al., arXiv:2403.08540, eq. 5).

  The objective is the one of the other fits here: Huber (delta 1e-3) on ``log Err``, L-BFGS-B over
  ``(epsilon, log k, gamma)`` with ``epsilon, gamma > 0``, from starts ``gamma in {0.3, 1, 3, 10}`` and ``epsilon in
  {max err + 0.01, 1}`` (``log k`` matching the lowest-loss point). Host-side scipy.

  Args:
    L: losses, 1-D, > 0. err: errors in (0, 1], same length (at least 3 points).

  Returns:
    :class:`~paperlab.scaling.Fit` (law ``"loss_to_error"``) with params ``epsilon, k, gamma``.
  """
  L, err = _fl._points(("L", "err"), (L, err), 3)  # pylint: disable=protected-access
  log_err = np.log(err)

  def residuals(theta, idx):
    eps, log_k, gamma = theta
    t = np.exp(log_k - gamma * L[idx])
    pred = eps - t
    return np.log(pred) - log_err[idx], np.stack([1.0 / pred, -t / pred, L[idx] * t / pred], axis=1)

  if init_grid is None:
    i0 = int(np.argmin(L))
    grid = np.array([[eps, np.log(eps - err[i0]) + g * L[i0], g]
                     for eps in sorted({float(err.max()) + 0.01, max(1.0, float(err.max()) + 0.01)})
                     for g in (0.3, 1.0, 3.0, 10.0)])
  else:
    grid = _fl._check_grid(init_grid, 3, "(epsilon, log k, gamma)")  # pylint: disable=protected-access
  return _fl._fit("loss_to_error", residuals, len(L), grid,  # pylint: disable=protected-access
                  lambda t: {"epsilon": float(t[0]), "k": float(np.exp(t[1])), "gamma": float(t[2])}, delta=delta,
                  bootstrap=bootstrap, confidence=confidence, seed=seed, bounds=[(1e-9, None), (None, None),
                                                                                  (1e-9, None)])


# ------------------------------------------------------------------------------------------------------------------
# task ladders


def task_sigmoid(L: Any, params: SigmoidParams | _Fit) -> jax.Array:
  """``Acc(L) = a / (1 + exp(-k (L - L0))) + b``: accuracy from task loss (Bhagia et al., arXiv:2412.04403,
  eq. 2; ``k < 0`` when accuracy falls with loss). Pure jnp (``jax.nn.sigmoid``)."""
  p = _params(SigmoidParams, params, "sigmoid")
  return p.a * jax.nn.sigmoid(p.k * (_float(L) - p.L0)) + p.b


def fit_sigmoid(x: Any, y: Any, *, delta: float = 1.0, init_grid: Any | None = None, bootstrap: int = 0,
                confidence: float = 0.95, seed: int = 0) -> _Fit:
  """Fit ``y = a / (1 + exp(-k (x - L0))) + b`` (Bhagia et al., arXiv:2412.04403, eq. 2, step 2: accuracy from
  task loss).

  Residuals are in ``y``'s units (accuracy is not log-scaled); with the default ``delta = 1`` and accuracies in
  [0, 1] the Huber objective is plain least squares. ``a >= 0`` (the form is symmetric under ``(a, k, b) ->
  (-a, -k, a + b)``; the sign of ``k`` gives the direction). L-BFGS-B over ``(a, b, k, L0)`` from starts
  ``a = range(y)``, ``b = min(y)``, ``k in {+-1, +-4, +-16} / range(x)``, ``L0`` at the quartiles of ``x``.
  Host-side scipy.

  Args:
    x: task losses, 1-D, > 0. y: accuracies, 1-D, > 0, same length (at least 4 points).

  Returns:
    :class:`~paperlab.scaling.Fit` (law ``"sigmoid"``) with params ``a, b, k, L0``.
  """
  x, y = _fl._points(("x", "y"), (x, y), 4)  # pylint: disable=protected-access

  def residuals(theta, idx):
    a, b, k, x0 = theta
    u = x[idx] - x0
    s = 0.5 * (1.0 + np.tanh(0.5 * k * u))  # a stable sigmoid
    ds = s * (1.0 - s)
    return a * s + b - y[idx], np.stack([s, np.ones(len(idx)), a * ds * u, -a * ds * k], axis=1)

  if init_grid is None:
    span_x = float(np.ptp(x)) or 1.0
    span_y = float(np.ptp(y)) or 1e-3
    q = np.quantile(x, (0.25, 0.5, 0.75))
    grid = np.array([[span_y, float(y.min()), sk * kk / span_x, x0] for sk in (-1.0, 1.0)
                     for kk in (1.0, 4.0, 16.0) for x0 in q])
  else:
    grid = _fl._check_grid(init_grid, 4, "(a, b, k, L0)")  # pylint: disable=protected-access
  return _fl._fit("sigmoid", residuals, len(x), grid,  # pylint: disable=protected-access
                  lambda t: {"a": float(t[0]), "b": float(t[1]), "k": float(t[2]), "L0": float(t[3])}, delta=delta,
                  bootstrap=bootstrap, confidence=confidence, seed=seed, bounds=[(0.0, None)] + [(None, None)] * 3)


def fit_task_ladder(N: Any, D: Any, task_loss: Any, acc: Any, *, init_grid: Any | None = None,
                    bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> tuple[_Fit, _Fit]:
  """Two-step task scaling law from a model ladder (Bhagia et al., arXiv:2412.04403, Sec. 3).

  Step 1: ``L(N, D) = A / N**alpha + B / D**beta + E`` on the ladder's task losses, by
  :func:`~paperlab.scaling.fit_chinchilla` (Huber 1e-3 on log loss, L-BFGS from ``init_grid``, default Hoffmann
  et al.'s 4500 starts). Step 2: ``Acc(L) = a / (1 + exp(-k (L - L0))) + b`` on the ladder's (task loss, accuracy)
  pairs by :func:`fit_sigmoid`. Predict with :func:`predict_task`.

  Args:
    N, D: parameters and training tokens of each ladder run, 1-D, > 0.
    task_loss: each run's task loss (the paper: bits per byte of the correct answer), 1-D, > 0.
    acc: each run's task accuracy, 1-D, > 0 (at least 5 runs in all).
    init_grid: starts of step 1 (``fit_chinchilla``'s columns ``(a, b, e, alpha, beta)``).
    bootstrap, confidence, seed: bootstrap intervals for both steps.

  Returns:
    ``(loss_fit, sigmoid_fit)``.
  """
  names = ("N", "D", "task_loss", "acc")
  N, D, task_loss, acc = _fl._points(names, (N, D, task_loss, acc), 5)  # pylint: disable=protected-access
  loss_fit = _fl.fit_chinchilla(N, D, task_loss, init_grid=init_grid, bootstrap=bootstrap, confidence=confidence,
                                seed=seed)
  return loss_fit, fit_sigmoid(task_loss, acc, bootstrap=bootstrap, confidence=confidence, seed=seed)


def predict_task(fits: tuple[_Fit, _Fit], N: Any, D: Any) -> jax.Array:
  """Accuracy of a run at ``(N, D)`` by the two-step ladder law: ``Acc(L(N, D))`` (Bhagia et al.,
  arXiv:2412.04403, eqs. 1-2) with ``fits`` from :func:`fit_task_ladder`. Pure jnp (jits with ``fits`` closed
  over)."""
  if not (isinstance(fits, tuple) and len(fits) == 2 and all(isinstance(f, _Fit) for f in fits)
          and fits[0].law == "chinchilla" and fits[1].law == "sigmoid"):
    raise TypeError(f"fits must be the (chinchilla Fit, sigmoid Fit) pair of fit_task_ladder, got {fits!r:.80}.")
  p = laws.ChinchillaParams(*(fits[0].params[k] for k in ("E", "A", "B", "alpha", "beta")))
  return task_sigmoid(laws.chinchilla_loss(N, D, p), fits[1])
