"""Generalization error against training-set size: the power law plus floor, its regions, and collecting the curve.

Hestness et al., "Deep Learning Scaling is Predictable, Empirically", arXiv:1712.00409, Sec. 2 and Fig. 1: the
generalization error of a model trained on ``m`` examples follows ``eps(m) = alpha m**beta_g + gamma`` (``beta_g <
0``, ``gamma`` the irreducible error) in the power-law region, after a small-data region where the error stays near
a best-guess plateau. :func:`learning_curve` is that three-region curve, ``min(plateau, alpha m**beta + gamma)``;
:func:`fit_learning_curve` fits it (``fit_power_law``'s backend: Huber on log error, L-BFGS-B from a grid), optionally
choosing the small-data breakpoint; :func:`data_scaling` collects the curve by training on nested random subsets
(the first ``m`` of one shuffle of the training pool per seed, as ``sklearn.model_selection.learning_curve`` takes
the first ``m`` of each training split).

:func:`learning_curve` is pure ``jax.numpy``; the fit and the driver are host-side (scipy, and whatever ``train_fn``
does).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.scaling import fit as _fl
from paperlab.scaling import laws

__all__ = ["learning_curve", "fit_learning_curve", "nested_subsets", "data_scaling"]


def learning_curve(m: Any, params: _fl.Fit | Mapping[str, float]) -> jax.Array:
  """``eps(m) = min(plateau, alpha m**beta + gamma)``: the three-region learning curve of Hestness et al.
  (arXiv:1712.00409, Sec. 2 / Fig. 1: small-data plateau, power law ``alpha m**beta_g``, irreducible ``gamma``).

  ``params`` is a :func:`fit_learning_curve` fit or a mapping with ``alpha, beta, gamma`` (and optionally
  ``plateau``; missing or ``inf``: no small-data region). Pure jnp, elementwise, in ``m``'s floating dtype
  (integers promote), jits with ``params`` closed over.

  Raises:
    ValueError: concrete ``m`` not finite and > 0.
    TypeError: ``params`` without ``alpha, beta, gamma``.
  """
  p = params.params if isinstance(params, _fl.Fit) else params
  if not isinstance(p, Mapping) or not {"alpha", "beta", "gamma"} <= set(p):
    raise TypeError(f"params must be a fit_learning_curve Fit or a mapping with alpha, beta, gamma, got "
                    f"{params!r:.80}.")
  m = laws._positive("m", m)  # pylint: disable=protected-access
  curve = p["alpha"] * m ** p["beta"] + p["gamma"]
  plateau = float(p.get("plateau", np.inf))
  return curve if not np.isfinite(plateau) else jnp.minimum(curve, plateau)


def _bic(rss: float, n: int, k: int) -> float:
  return n * np.log(max(rss, 1e-12 * n) / n) + k * np.log(n)


def fit_learning_curve(m: Any, err: Any, *, regions: bool = True, delta: float = 1e-3, init_grid: Any | None = None,
                       bootstrap: int = 0, confidence: float = 0.95, seed: int = 0) -> _fl.Fit:
  """Fit ``eps(m) = alpha m**beta + gamma`` to generalization error against training-set size (Hestness et al.,
  "Deep Learning Scaling is Predictable, Empirically", arXiv:1712.00409, Sec. 2: ``beta`` is their ``beta_g < 0``,
  ``gamma`` the irreducible error), with optional small-data region.

  The power law is :func:`paperlab.scaling.fit_power_law` (``y = c + a x**-b``; ``alpha = a``, ``beta = -b``,
  ``gamma = c``): Huber ``delta`` on log error, L-BFGS-B from a grid of starts. With ``regions``, the first ``k``
  points may instead form the small-data plateau (their geometric-mean error, the paper's "best guess" region): every
  ``k in {0, 2, ..., n - 4}`` is fitted (a plateau needs two points, the power law three plus one) and the one with the
  lowest Bayesian information criterion ``n log(RSS / n) + p log n`` on log error wins (``p = 3`` without a plateau,
  5 with one: its level and the breakpoint), so a plateau is only kept when it explains the data better than the
  power law extended to small ``m``. Host-side.

  Args:
    m: training-set sizes, 1-D, > 0 (distinct; any order).
    err: generalization errors (or losses) at those sizes, same length, > 0; at least 3 points.
    regions: look for the small-data plateau (as above); ``False`` fits the power law to every point.
    delta, init_grid, bootstrap, confidence, seed: as in :func:`paperlab.scaling.fit_power_law` (the bootstrap
      resamples the power-law region's points).

  Returns:
    :class:`~paperlab.scaling.Fit` (law ``"learning_curve"``) with params ``alpha, beta, gamma``, ``plateau`` (the
    small-data error level, ``inf`` when there is none), ``breakpoint`` (the smallest ``m`` of the power-law
    region) and ``num_plateau`` (how many points the plateau took); ``ci`` / ``samples`` of ``alpha, beta, gamma``
    when bootstrapped.

  Raises:
    ValueError: non-positive or non-finite values, mismatched lengths, repeated sizes, too few points.
  """
  if regions not in (True, False):
    raise TypeError(f"regions must be a bool, got {regions!r}.")
  m, err = _fl._points(("m", "err"), (m, err), 3)  # pylint: disable=protected-access
  if len(np.unique(m)) != len(m):
    raise ValueError(f"m must hold distinct training-set sizes (average repeats first), got {np.sort(m).tolist()}.")
  order = np.argsort(m)
  m, err = m[order], err[order]
  n = len(m)
  candidates = [0] + (list(range(2, n - 3)) if regions else [])
  best = None
  for k in candidates:
    f = _fl.fit_power_law(m[k:], err[k:], delta=delta, init_grid=init_grid)
    plateau = float(np.exp(np.mean(np.log(err[:k])))) if k else np.inf
    pred = np.minimum(f["c"] + f["a"] * m ** -f["b"], plateau)
    rss = float(np.sum((np.log(pred) - np.log(err)) ** 2))
    score = _bic(rss, n, 5 if k else 3)
    if best is None or score < best[0]:
      best = (score, k, f, plateau)
  _, k, f, plateau = best
  if bootstrap:  # intervals for the chosen regions only
    f = _fl.fit_power_law(m[k:], err[k:], delta=delta, init_grid=init_grid, bootstrap=bootstrap,
                          confidence=confidence, seed=seed)
  params = {"alpha": f["a"], "beta": -f["b"], "gamma": f["c"], "plateau": plateau, "breakpoint": float(m[k]),
            "num_plateau": float(k)}
  ci = samples = None
  if f.ci is not None:
    ci = {"alpha": f.ci["a"], "beta": (-f.ci["b"][1], -f.ci["b"][0]), "gamma": f.ci["c"]}
    samples = {"alpha": f.samples["a"], "beta": -f.samples["b"], "gamma": f.samples["c"]}
  return _fl.Fit("learning_curve", params, f.objective, n, ci, samples, f.confidence)


def nested_subsets(num_examples: int, seeds: Sequence[int]) -> np.ndarray:
  """One shuffle of the training pool per seed, ``(len(seeds), num_examples)`` int64: the size-``m`` training set of
  seed ``s`` is ``out[s, :m]``, so the sets of one seed are nested (Hestness et al., arXiv:1712.00409, Sec. 3: each
  training set a random subset of the next larger one). Row ``s`` is ``numpy.random.default_rng(seeds[s])
  .permutation(num_examples)``."""
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(f"num_examples must be a positive int (the training pool's size), got {num_examples!r}.")
  seeds = list(seeds)
  if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
    raise ValueError(f"seeds must be a non-empty sequence of ints >= 0, got {seeds!r}.")
  return np.stack([np.random.default_rng(int(s)).permutation(int(num_examples)) for s in seeds])


def data_scaling(train_fn: Callable[..., Any], sizes: Sequence[int], *, num_examples: int,
                 seeds: Sequence[int] = (0, 1, 2), batched: bool = False) -> np.ndarray | dict[str, np.ndarray]:
  """Collect a learning curve: train on nested random subsets of ``sizes`` examples per seed and gather the metric.

  The data-collection protocol of Hestness et al. (arXiv:1712.00409, Sec. 3): for each seed one shuffle of the
  training pool (:func:`nested_subsets`); the size-``m`` training set is its first ``m`` indices.

  - ``batched=False``: ``train_fn(indices, seed)`` trains on the pool's ``indices`` (int array of length ``m``) and
    returns a scalar metric (e.g. test error) or a mapping of scalar metrics; called once per seed and size.
  - ``batched=True``: ``train_fn(orders, sizes, seeds)`` gets every shuffle ``(num_seeds, num_examples)``, the sizes
    ``(num_sizes,)`` and the seeds at once (for one ``jit(vmap(...))`` program over seeds and sizes) and returns
    ``(num_seeds, num_sizes)`` metrics (an array or a mapping of arrays).

  Host-side orchestration (``train_fn`` may jit).

  Args:
    train_fn: as above.
    sizes: training-set sizes, ints, strictly increasing, in ``[1, num_examples]``.
    num_examples: size of the training pool.
    seeds: one shuffle (and whatever else ``train_fn`` seeds) per seed.
    batched: the calling convention of ``train_fn``.

  Returns:
    ``(num_seeds, num_sizes)`` float64 array, or a dict metric -> such an array when ``train_fn`` returns mappings.

  Raises:
    ValueError: bad sizes or seeds, or ``train_fn`` results of the wrong shape or not finite.
  """
  if not callable(train_fn):
    raise TypeError(f"train_fn must be callable, got {type(train_fn).__name__}.")
  orders = nested_subsets(num_examples, seeds)
  sizes_arr = np.asarray(sizes)
  if (sizes_arr.ndim != 1 or sizes_arr.size == 0 or not np.issubdtype(sizes_arr.dtype, np.integer)
      or np.any(np.diff(sizes_arr) <= 0) or sizes_arr[0] < 1 or sizes_arr[-1] > num_examples):
    raise ValueError(f"sizes must be a non-empty, strictly increasing 1-D sequence of ints in [1, num_examples="
                     f"{num_examples}], got {list(np.ravel(sizes))!r}.")
  seeds = [int(s) for s in seeds]
  shape = (len(seeds), len(sizes_arr))
  if batched:
    out = train_fn(orders, sizes_arr.astype(np.int64), np.asarray(seeds))
  else:
    rows = [[train_fn(orders[i, :m].copy(), s) for m in sizes_arr] for i, s in enumerate(seeds)]
    if isinstance(rows[0][0], Mapping):
      out = {k: [[r[k] for r in row] for row in rows] for k in rows[0][0]}
    else:
      out = rows

  def check(name, values):
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != shape or not np.all(np.isfinite(arr)):
      raise ValueError(f"train_fn must give a finite metric {name} per seed and size, shape {shape}, got shape "
                       f"{arr.shape} (finite: {bool(np.all(np.isfinite(arr)))}).")
    return arr

  if isinstance(out, Mapping):
    return {k: check(repr(k), v) for k, v in out.items()}
  return check("", out)
