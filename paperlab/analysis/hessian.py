"""Hessian spectrum of a loss over parameter pytrees: products, top eigenvalues, trace and spectral density.

Everything works from Hessian-vector products ``H v`` (forward-over-reverse, ``jax.jvp`` of ``jax.grad``), so the
Hessian is never formed. The estimators follow PyHessian (Yao et al., "PyHessian: Neural Networks Through the Lens
of the Hessian", arXiv:1912.07145): power iteration with deflation for the top eigenvalues, Hutchinson's
Rademacher estimator for the trace, and stochastic Lanczos quadrature (SLQ) for the spectral density (Ghorbani et
al., "An Investigation into Neural Net Optimization via Hessian Eigenvalue Density", arXiv:1901.10159). Lanczos
with full reorthogonalisation is the default for the top eigenvalues.

Every function is pure, takes an explicit PRNG key where it draws probes, and compiles under ``jax.jit`` when the
loss is closed over (``jax.jit(lambda p, b, k: hessian_top_eigs(loss_fn, p, b, k, k=2))``): the iteration counts
are static Python ints. Vectors live as one flat array (``jax.flatten_util.ravel_pytree``) inside the iterations
and come back as pytrees shaped like ``params``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from paperlab._tree import path_str

__all__ = ["hvp", "lanczos", "hessian_top_eigs", "hutchinson_samples", "hessian_trace", "hessian_density",
           "density_on_grid", "rademacher_like", "HessianEigs"]

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


class HessianEigs(NamedTuple):
  """Top eigenpairs: ``values`` (k,) in decreasing order and ``vectors``, a pytree shaped like ``params`` with a
  leading axis of size k (unit norm over the whole pytree)."""

  values: jax.Array
  vectors: PyTree


def _check_params(params: PyTree) -> None:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  if not leaves:
    raise ValueError("params must hold at least one array leaf, got an empty pytree.")
  for path, leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(f"params: every leaf must be a floating-point array to differentiate, got "
                      f"{jnp.result_type(leaf)} at {path_str(path)!r}.")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be a Python int (a static count), got {value!r}.")
  if value < low or (high is not None and value > high):
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name} must be {bound}, got {value}.")
  return value


def hvp(loss_fn: LossFn, params: PyTree, batch: Any, vector: PyTree) -> PyTree:
  """Hessian-vector product ``H v`` with ``H = d^2 loss_fn(params, batch) / d params^2``.

  Forward-over-reverse (``jax.jvp`` of ``jax.grad``, Pearlmutter 1994): one gradient evaluation's cost times a
  small constant, no Hessian in memory; the form PyHessian computes with double backward.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the point, a pytree of floating arrays.
    batch: the data passed to ``loss_fn`` (held fixed).
    vector: a pytree with the structure and shapes of ``params``.

  Returns:
    ``H v``, shaped like ``params``.
  """
  _check_params(params)
  if jax.tree.structure(vector) != jax.tree.structure(params):
    raise ValueError(f"vector must have the structure of params, got {jax.tree.structure(vector)} vs "
                     f"{jax.tree.structure(params)}.")
  return jax.jvp(lambda p: jax.grad(loss_fn)(p, batch), (params,), (vector,))[1]


def _flat_matvec(loss_fn: LossFn, params: PyTree, batch: Any, precond: PyTree | None = None):
  _check_params(params)
  flat, unravel = ravel_pytree(params)
  if precond is None:
    def matvec(v: jax.Array) -> jax.Array:
      return ravel_pytree(hvp(loss_fn, params, batch, unravel(v.astype(flat.dtype))))[0]
    return matvec, flat, unravel
  if jax.tree.structure(precond) != jax.tree.structure(params):
    raise ValueError(f"precond must have the structure of params, got {jax.tree.structure(precond)} vs "
                     f"{jax.tree.structure(params)}.")
  scale = jax.lax.rsqrt(ravel_pytree(precond)[0].astype(flat.dtype))  # P^{-1/2}; P > 0 (NaN otherwise)
  if scale.shape != flat.shape:
    raise ValueError(f"precond must have the shapes of params, got {scale.shape[0]} entries for {flat.shape[0]}.")

  def matvec(v: jax.Array) -> jax.Array:
    return scale * ravel_pytree(hvp(loss_fn, params, batch, unravel((scale * v).astype(flat.dtype))))[0]

  return matvec, flat, unravel


def _orthogonalize(w: jax.Array, basis: jax.Array) -> jax.Array:
  # Classical Gram-Schmidt done twice ("twice is enough", Parlett): rows of basis are orthonormal or zero.
  for _ in range(2):
    w = w - basis.T @ (basis @ w)
  return w


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, num_iters: int, key: jax.Array
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Lanczos tridiagonalisation of a symmetric operator with full reorthogonalisation.

  After ``m = num_iters`` steps, ``V A V^T ~ T`` with ``T = tridiag(betas, alphas, betas)`` and the rows of ``V``
  orthonormal (Lanczos 1950; Golub & Van Loan, Alg. 10.1.1, with every new vector re-orthogonalised against all
  previous ones as in PyHessian's SLQ). When the Krylov space is exhausted (``beta ~ 0``) the next vector is a fresh
  random one orthogonal to ``V`` and that ``beta`` is 0, so ``T`` stays exact.

  Args:
    matvec: ``v -> A v`` on flat vectors (jittable).
    v0: the start vector (any nonzero scale).
    num_iters: the number of steps ``m`` (static), ``1 <= m <= v0.size``.
    key: PRNG key for restarts.

  Returns:
    ``(alphas (m,), betas (m-1,), V (m, n))``.
  """
  n = v0.shape[0]
  _check_int("num_iters", num_iters, 1, n)
  dtype = v0.dtype
  tiny = jnp.asarray(100 * jnp.finfo(dtype).eps, dtype)
  v = v0 / jnp.linalg.norm(v0)
  basis = jnp.zeros((num_iters, n), dtype)
  alphas = jnp.zeros((num_iters,), dtype)
  betas = jnp.zeros((num_iters,), dtype)

  def body(i, carry):
    v, basis, alphas, betas = carry
    basis = basis.at[i].set(v)
    av = matvec(v)
    alpha = jnp.vdot(v, av)
    w = _orthogonalize(av, basis)
    beta = jnp.linalg.norm(w)
    fresh = _orthogonalize(jax.random.normal(jax.random.fold_in(key, i), (n,), dtype), basis)
    fresh = fresh / jnp.linalg.norm(fresh)
    broke = beta <= tiny * (jnp.linalg.norm(av) + tiny)
    v_next = jnp.where(broke, fresh, w / jnp.where(broke, 1, beta))
    return v_next, basis, alphas.at[i].set(alpha), betas.at[i].set(jnp.where(broke, 0, beta))

  _, basis, alphas, betas = jax.lax.fori_loop(0, num_iters, body, (v, basis, alphas, betas))
  return alphas, betas[:-1], basis


def _tridiag(alphas: jax.Array, betas: jax.Array) -> jax.Array:
  return jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)


def _power_iteration(matvec, flat, key, k, num_iters, tol):
  """PyHessian's ``hessian.eigenvalues``: power iteration per eigenvalue, deflated by orthogonalising against the
  ones found, stopped when the Rayleigh quotient changes by less than ``tol`` relative (or after num_iters)."""
  n = flat.shape[0]
  found = jnp.zeros((k, n), flat.dtype)
  values = []
  for j in range(k):
    v = jax.random.normal(jax.random.fold_in(key, j), (n,), flat.dtype)
    v = v / jnp.linalg.norm(v)

    def cond(c):
      i, _, lam, prev = c
      rel = jnp.abs(lam - prev) / (jnp.abs(prev) + 1e-6)
      return (i < num_iters) & ((i < 2) | (rel >= tol))

    def body(c, found=found):
      i, v, lam, _ = c
      v = _orthogonalize(v, found)
      v = v / jnp.linalg.norm(v)
      hv = matvec(v)
      return i + 1, hv / jnp.linalg.norm(hv), jnp.vdot(hv, v), lam

    zero = jnp.zeros((), flat.dtype)
    _, v, lam, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), v, zero, zero))
    values.append(lam)
    found = found.at[j].set(v)
  return jnp.stack(values), found


def hessian_top_eigs(loss_fn: LossFn, params: PyTree, batch: Any, key: jax.Array, *, k: int = 1,
                     num_iters: int = 50, method: str = "lanczos", tol: float = 1e-6,
                     precond: PyTree | None = None) -> HessianEigs:
  """The ``k`` largest (algebraic) eigenvalues of the loss Hessian and their eigenvectors.

  ``method="lanczos"``: ``num_iters`` Lanczos steps with full reorthogonalisation from a Gaussian start, then the
  top ``k`` Ritz pairs of the tridiagonal matrix (exact once ``num_iters`` equals the number of parameters).
  ``method="power"``: PyHessian's power iteration (Yao et al., arXiv:1912.07145, Alg. 1) with deflation,
  ``num_iters`` the cap per eigenvalue (PyHessian's ``maxIter``, default there 100) and ``tol`` its relative stopping
  tolerance (default there 1e-3). Power iteration converges to the eigenvalue of largest *magnitude*.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the point (pytree of floating arrays).
    batch: the data, held fixed.
    key: PRNG key for the start vectors.
    k: number of eigenpairs (static), ``1 <= k <= num_iters`` for Lanczos.
    num_iters: Lanczos steps or power-iteration cap (static), at most the number of parameters for Lanczos.
    method: ``"lanczos"`` or ``"power"``.
    tol: relative tolerance of power iteration (ignored by Lanczos).
    precond: optional positive diagonal preconditioner ``P`` shaped like ``params`` (e.g. Adam's
      ``sqrt(nu) + eps`` divided by per-parameter learning-rate multipliers); the spectrum is then that of
      ``P^{-1/2} H P^{-1/2}``, the preconditioned sharpness of adaptive optimizers (Cohen et al., "Adaptive
      Gradient Methods at the Edge of Stability", arXiv:2207.14484; Noci et al., arXiv:2402.17457). The
      eigenvectors are in the rescaled coordinates.

  Returns:
    :class:`HessianEigs` ``(values (k,), vectors)``.
  """
  if method not in ("lanczos", "power"):
    raise ValueError(f"method must be one of ['lanczos', 'power'], got {method!r}.")
  _check_int("k", k, 1)
  matvec, flat, unravel = _flat_matvec(loss_fn, params, batch, precond)
  n = flat.shape[0]
  if method == "lanczos":
    _check_int("num_iters", num_iters, k, n)
    start_key, restart_key = jax.random.split(key)
    alphas, betas, basis = lanczos(matvec, jax.random.normal(start_key, (n,), flat.dtype), num_iters, restart_key)
    evals, evecs = jnp.linalg.eigh(_tridiag(alphas, betas))
    values, vecs = evals[::-1][:k], (evecs[:, ::-1][:, :k].T @ basis)
  else:
    _check_int("k", k, 1, n)
    _check_int("num_iters", num_iters, 1)
    values, vecs = _power_iteration(matvec, flat, key, k, num_iters, tol)
  return HessianEigs(values, jax.vmap(unravel)(vecs))


def rademacher_like(key: jax.Array, params: PyTree, num: int) -> PyTree:
  """``num`` Rademacher (+-1) probes shaped like ``params``, stacked on a leading axis, in each leaf's dtype."""
  _check_int("num", num, 1)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.rademacher(kk, (num,) + jnp.shape(x), jnp.result_type(x))
                                      for kk, x in zip(keys, leaves)])


def hutchinson_samples(loss_fn: LossFn, params: PyTree, batch: Any, probes: PyTree, *,
                       batch_size: int | None = None) -> jax.Array:
  """``v_i^T H v_i`` for each probe ``v_i`` (Hutchinson 1990): with Rademacher probes each is an unbiased estimate
  of ``tr(H)``; their mean is :func:`hessian_trace`.

  Args:
    loss_fn, params, batch: as in :func:`hvp`.
    probes: a pytree shaped like ``params`` with a leading probe axis (e.g. :func:`rademacher_like`).
    batch_size: probes per vectorised HVP (``jax.lax.map``'s ``batch_size``); ``None`` maps one at a time.

  Returns:
    ``(num_probes,)`` array.
  """
  _check_params(params)
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(probes)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f"probes must carry one leading probe axis of the same size on every leaf, got sizes {sizes}.")

  def one(v):
    hv = hvp(loss_fn, params, batch, v)
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hv)))

  return jax.lax.map(one, probes, batch_size=batch_size)


def hessian_trace(loss_fn: LossFn, params: PyTree, batch: Any, key: jax.Array, *, num_samples: int = 100,
                  batch_size: int | None = None) -> jax.Array:
  """Hutchinson's estimate of ``tr(H)``: the mean of ``v^T H v`` over ``num_samples`` Rademacher probes
  (PyHessian's ``hessian.trace``, Yao et al., arXiv:1912.07145, Alg. 2; ``maxIter=100`` there, without its
  early stop so the count is static). Unbiased; its variance is ``2 sum_{i != j} H_ij^2 / num_samples``."""
  _check_int("num_samples", num_samples, 1)
  probes = rademacher_like(key, params, num_samples)
  return jnp.mean(hutchinson_samples(loss_fn, params, batch, probes, batch_size=batch_size))


def hessian_density(loss_fn: LossFn, params: PyTree, batch: Any, key: jax.Array, *, num_iters: int = 100,
                    num_runs: int = 1, probes: PyTree | None = None) -> tuple[jax.Array, jax.Array]:
  """Stochastic Lanczos quadrature of the Hessian's eigenvalue density (Ghorbani et al., arXiv:1901.10159, Sec. 2;
  PyHessian's ``hessian.density``, defaults ``iter=100``, ``n_v=1``).

  For each run a Rademacher probe ``v`` (normalised) starts ``num_iters`` Lanczos steps; the Gauss quadrature of
  ``v^T f(H) v`` has nodes the eigenvalues ``theta_j`` of the tridiagonal ``T`` and weights ``tau_j = (e_1^T
  u_j)^2`` (its eigenvectors' first components), so ``sum_j tau_j theta_j^p = v^T H^p v / |v|^2`` exactly for
  ``p < 2 num_iters``. The density is ``phi(t) = mean_runs sum_j tau_j g_sigma(t - theta_j)``
  (:func:`density_on_grid`).

  Args:
    loss_fn, params, batch: as in :func:`hvp`.
    key: PRNG key (probes and Lanczos restarts).
    num_iters: Lanczos steps per run (static), at most the number of parameters.
    num_runs: number of probes (static).
    probes: optional probes shaped like ``params`` with a leading axis of size ``num_runs`` (replacing the
      Rademacher draw, e.g. to run the same probes through another implementation).

  Returns:
    ``(nodes, weights)``, each ``(num_runs, num_iters)``; each row of weights sums to 1.
  """
  _check_int("num_runs", num_runs, 1)
  matvec, flat, _ = _flat_matvec(loss_fn, params, batch)
  _check_int("num_iters", num_iters, 1, flat.shape[0])
  probe_key, restart_key = jax.random.split(key)
  probes = rademacher_like(probe_key, params, num_runs) if probes is None else probes
  flat_probes = jax.vmap(lambda p: ravel_pytree(p)[0])(probes)
  if flat_probes.shape != (num_runs, flat.shape[0]):
    raise ValueError(f"probes must be shaped like params with a leading axis of {num_runs}, got flat shape "
                     f"{flat_probes.shape}.")

  def run(args):
    v, k = args
    alphas, betas, _ = lanczos(matvec, v.astype(flat.dtype), num_iters, k)
    evals, evecs = jnp.linalg.eigh(_tridiag(alphas, betas))
    return evals, evecs[0] ** 2

  keys = jax.random.split(restart_key, num_runs)
  return jax.lax.map(run, (flat_probes, keys))


def density_on_grid(nodes: jax.Array, weights: jax.Array, *, num_bins: int = 10000, sigma_squared: float = 1e-5,
                    overhead: float = 0.01) -> tuple[jax.Array, jax.Array]:
  """Gaussian-smoothed SLQ density on a grid, PyHessian's ``density_plot.density_generate`` (the function behind
  its ESD plots; arXiv:1912.07145, Fig. 3): grid from the run-mean smallest node minus ``overhead`` to the run-mean
  largest plus ``overhead``, kernel variance ``sigma_squared * max(1, lambda_max - lambda_min)``, run-averaged,
  normalised to integrate to 1 on the grid.

  Args:
    nodes, weights: ``(num_runs, m)`` from :func:`hessian_density`.
    num_bins: grid size (static). sigma_squared: kernel variance factor (> 0). overhead: grid margin (>= 0).

  Returns:
    ``(grid (num_bins,), density (num_bins,))``.
  """
  nodes, weights = jnp.asarray(nodes), jnp.asarray(weights)
  if nodes.ndim != 2 or nodes.shape != weights.shape:
    raise ValueError(f"nodes and weights must be (num_runs, m) of the same shape, got {nodes.shape} and "
                     f"{weights.shape}.")
  _check_int("num_bins", num_bins, 2)
  if not sigma_squared > 0:
    raise ValueError(f"sigma_squared must be > 0, got {sigma_squared!r}.")
  lam_max = jnp.mean(jnp.max(nodes, axis=1)) + overhead
  lam_min = jnp.mean(jnp.min(nodes, axis=1)) - overhead
  grid = jnp.linspace(lam_min, lam_max, num_bins, dtype=nodes.dtype)
  var = sigma_squared * jnp.maximum(1.0, lam_max - lam_min)
  kernel = jnp.exp(-(grid[None, :, None] - nodes[:, None, :]) ** 2 / (2 * var)) / jnp.sqrt(2 * math.pi * var)
  density = jnp.mean(jnp.sum(kernel * weights[:, None, :], axis=-1), axis=0)
  return grid, density / (jnp.sum(density) * (grid[1] - grid[0]))
