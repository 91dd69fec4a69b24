"""The power-law random features (PLRF) model: one-pass SGD with the exact population loss, and its capacity limit.

Paquette, Paquette, Xiao, Pennington, "4+3 Phases of Compute-Optimal Neural Scaling Laws", arXiv:2405.15074: the model
as the catalogue describes it (no section or equation numbers are cited: the paper's text was not checked offline).
Data ``x ~ N(0, D)`` in ``R^v`` with ``D = diag(j^-2alpha)``, target ``<x, b>`` with ``b_j = j^-beta`` (j = 1..v),
random features ``W^T x`` with ``W`` in ``R^{v x d}`` of i.i.d. ``N(0, 1/d)`` entries, a linear model
``<W^T x, theta>`` trained by one-pass SGD (a fresh batch every step, no data reuse) from ``theta = 0``.

Loss convention: the population loss is half the mean squared error,
``P(theta) = 1/2 E_x[(<W^T x, theta> - <x, b>)^2] = 1/2 (W theta - b)^T D (W theta - b)`` (a quadratic form, exact, no
Monte Carlo); SGD steps ``theta <- theta - lr / batch * sum_i W^T x_i (<W^T x_i, theta> - <x_i, b>)``, i.e. the
batch-mean stochastic gradient of ``P``. The factor 1/2 and the batch mean (rather than a sum) are this module's
choices: whether the paper uses them was not verified; they rescale the loss by 2 and ``lr`` by ``batch``, and
change no exponent.

The capacity limit ``F_0(d)`` is computed here exactly for the drawn ``W``, as the optimum over the d-dimensional
feature span: ``min_theta P(theta) = 1/2 (b^T D b - c^T K^-1 c)`` with ``K = W^T D W`` and ``c = W^T D b`` (a d x d
linear solve). The paper states its order, ``F_0(d) ~ d^(-2 alpha + max(0, 1 - 2 beta))`` (the catalogue's reading,
marked "verify"; the constant and the paper's deterministic-equivalent formula for it were not checked against the
text), which :func:`plrf_theory` returns.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PLRFProblem", "PLRFTheory", "plrf_limit_loss", "plrf_population_loss", "plrf_problem", "plrf_simulate",
           "plrf_theory"]


class PLRFProblem(NamedTuple):
  """One draw of the PLRF model.

  Attributes:
    eigs: ``(v,)`` data covariance eigenvalues ``j^-2alpha``.
    b: ``(v,)`` target coefficients ``j^-beta``.
    W: ``(v, d)`` random features, i.i.d. ``N(0, 1/d)``.
  """

  eigs: jax.Array
  b: jax.Array
  W: jax.Array


class PLRFTheory(NamedTuple):
  """What the paper states about the capacity term.

  Attributes:
    f0_exponent: ``-2 alpha + max(0, 1 - 2 beta)``: ``F_0(d) ~ d^f0_exponent``.
    f0_order: ``d ** f0_exponent`` (the order only: no constant).
  """

  f0_exponent: float
  f0_order: jax.Array


def _check_exponents(alpha, beta):
  if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha > 0):
    raise ValueError(f"alpha must be a finite float > 0 (data covariance eigenvalues j^-2alpha), got {alpha!r}.")
  if not (isinstance(beta, (int, float)) and np.isfinite(beta) and beta > 0):
    raise ValueError(f"beta must be a finite float > 0 (target coefficients j^-beta), got {beta!r}.")


def _check_sizes(v, d):
  if not (isinstance(d, (int, np.integer)) and d >= 1):
    raise ValueError(f"d must be an int >= 1 (the number of random features), got {d!r}.")
  if not (isinstance(v, (int, np.integer)) and v > d):
    raise ValueError(f"v must be an int > d = {d} (the data dimension; the PLRF model has v > d), got {v!r}.")


def plrf_problem(key: jax.Array, alpha: float, beta: float, v: int, d: int,
                 dtype: jnp.dtype = jnp.float32) -> PLRFProblem:
  """Draw one PLRF problem: ``D = diag(j^-2alpha)``, ``b_j = j^-beta``, ``W_{jk} ~ N(0, 1/d)``.

  Paquette et al., arXiv:2405.15074 (the model's definition). Pure jnp.
  """
  _check_exponents(alpha, beta)
  _check_sizes(v, d)
  j = jnp.arange(1, v + 1, dtype=dtype)
  W = jax.random.normal(key, (v, d), dtype) / jnp.sqrt(jnp.asarray(d, dtype))
  return PLRFProblem(j ** (-2.0 * alpha), j ** (-beta), W)


def plrf_population_loss(theta: jax.Array, problem: PLRFProblem) -> jax.Array:
  """Exact population loss ``P(theta) = 1/2 (W theta - b)^T D (W theta - b)`` (half the MSE over ``x ~ N(0, D)``).

  ``theta``: ``(..., d)``; returns ``(...)``. Pure jnp.
  """
  r = theta @ problem.W.T - problem.b
  return 0.5 * jnp.sum(problem.eigs * r * r, axis=-1)


def _span_optimum(problem: PLRFProblem):
  WD = problem.W.T * problem.eigs  # (d, v) = W^T D
  K = WD @ problem.W
  c = WD @ problem.b
  theta_star = jnp.linalg.solve(K, c)
  r = problem.W @ theta_star - problem.b  # the residual form: no cancellation of b^T D b against c^T theta*
  return K, theta_star, 0.5 * jnp.sum(problem.eigs * r * r)


def plrf_limit_loss(problem: PLRFProblem) -> jax.Array:
  """The capacity limit ``F_0 = min_theta P(theta) = 1/2 (b^T D b - c^T K^-1 c)``, ``K = W^T D W``, ``c = W^T D b``.

  The loss of the best predictor in the span of the d features: SGD's plateau as steps -> infinity (and lr -> 0).
  Exact for the drawn ``W`` (a d x d solve); pure jnp. Computed in the problem's dtype (float64 under
  ``jax_enable_x64`` for large d, where ``K``'s condition number ~ d^2alpha costs float32 digits).
  """
  return _span_optimum(problem)[2]


def plrf_theory(alpha: float, beta: float, d) -> PLRFTheory:
  """The capacity term's order as the paper states it: ``F_0(d) ~ d^(-2 alpha + max(0, 1 - 2 beta))``.

  Paquette et al., arXiv:2405.15074 (the exponent as the catalogue reads the paper, marked "verify" there: the text
  was not reachable offline; the experiment ``experiments/scaling/plrf_phases.py`` checks it against the exact
  :func:`plrf_limit_loss` and SGD's plateau). No constant is given (``f0_order`` is ``d^exponent``), and the paper's
  r-dependent terms (``F_pp``, ``F_ac``, ``K_pp``) are not implemented: their constants could not be verified.
  """
  _check_exponents(alpha, beta)
  d = jnp.asarray(d, jnp.float32)
  if d.size and not bool(jnp.all(d >= 1)):
    raise ValueError(f"d must be >= 1, got {d!r}.")
  exponent = -2.0 * alpha + max(0.0, 1.0 - 2.0 * beta)
  return PLRFTheory(exponent, d ** exponent)


@functools.partial(jax.jit, static_argnames=("v", "d", "steps", "batch", "log_every", "dtype"))
def _simulate(keys, alpha, beta, lr, *, v, d, steps, batch, log_every, dtype):
  j = jnp.arange(1, v + 1, dtype=dtype)
  eigs, b = j ** (-2.0 * alpha), j ** (-beta)

  def one_seed(key):
    k_w, k_sgd = jax.random.split(key)
    W = jax.random.normal(k_w, (v, d), dtype) / jnp.sqrt(jnp.asarray(d, dtype))  # as plrf_problem(k_w, ...)
    K, theta_star, f0 = _span_optimum(PLRFProblem(eigs, b, W))
    lam, Q = jnp.linalg.eigh(K)
    lam = jnp.maximum(lam, 0.0)
    u_star = Q.T @ theta_star  # the optimum in K's eigenbasis; SGD starts at theta = 0
    sd = jnp.sqrt(lam)
    noise_sd = jnp.sqrt(2.0 * f0)

    def step(u, zn):
      # (W^T x, <x, b>) for x ~ N(0, D) in K's eigenbasis: W^T x = Q diag(sqrt(lam)) z and
      # <x, b> = <W^T x, theta*> + n with n ~ N(0, 2 F_0) independent of W^T x (Cov = c - K theta* = 0).
      z, n = zn
      f = z * sd
      resid = f @ (u - u_star) - n * noise_sd
      return u - lr / batch * (resid @ f), None

    def block(u, k):
      kz, kn = jax.random.split(k)  # one draw per block of log_every steps: vectorized sampling
      z = jax.random.normal(kz, (log_every, batch, d), dtype)
      n = jax.random.normal(kn, (log_every, batch), dtype)
      u, _ = jax.lax.scan(step, u, (z, n))
      return u, f0 + 0.5 * jnp.sum(lam * (u - u_star) ** 2)

    ks = jax.random.split(k_sgd, steps // log_every)
    _, losses = jax.lax.scan(block, jnp.zeros((d,), dtype), ks)
    return losses, f0

  return jax.vmap(one_seed)(keys)


def plrf_simulate(key: jax.Array, alpha: float, beta: float, v: int, d: int, steps: int, lr: float, batch: int, *,
                  log_every: int = 1, dtype: jnp.dtype = jnp.float32, return_limit: bool = False):
  """One-pass SGD on the PLRF model; the exact population loss after every ``log_every`` steps.

  Paquette et al., arXiv:2405.15074: ``theta <- theta - lr / batch * sum_i W^T x_i (<W^T x_i, theta> - <x_i,
  b>)`` with a fresh Gaussian batch ``x_i ~ N(0, D)`` every step, ``theta_0 = 0``. Defaults of the paper: none given
  here (its learning rate and batch were not verified); pick ``lr`` below the stability limit (``lr * tr K`` small
  compared with ``batch``; ``tr K ~ sum_j j^-2alpha``).

  Exact in law, without drawing ``x`` in ``R^v``: only ``(W^T x, <x, b>)`` enters SGD, a Gaussian in ``R^{d+1}``,
  drawn in the eigenbasis of ``K = W^T D W`` as ``W^T x = Q sqrt(Lambda) z`` and ``<x, b> = <W^T x, theta*> + n``,
  ``n ~ N(0, 2 F_0)`` independent (``theta*`` the span optimum). A step costs ``O(batch d)``; the one-off
  ``O(v d^2)`` builds ``K``. The loss logged is ``P(theta) = F_0 + 1/2 sum_k lambda_k (u_k - u*_k)^2`` (exact).

  Args:
    key: a PRNG key, or a batch of keys ``(seeds, ...)``: one independent ``W`` and SGD path per key (vmapped);
      the ``W`` of ``key`` is ``plrf_problem(jax.random.split(key)[0], alpha, beta, v, d, dtype).W``.
    alpha, beta: data and target exponents (> 0).
    v, d: data dimension and number of features (``v > d``).
    steps: SGD steps (a multiple of ``log_every``).
    lr: learning rate (> 0; traced, so a sweep of ``lr`` reuses one compilation).
    batch: batch size (>= 1).
    log_every: log the loss after every this many steps.
    dtype: float32 or float64 (float64 needs ``jax_enable_x64``).
    return_limit: also return each seed's exact capacity limit ``F_0`` (:func:`plrf_limit_loss` of its ``W``).

  Returns:
    ``losses`` of shape ``(steps // log_every,)`` for one key or ``(seeds, steps // log_every)`` for a batch of
    keys (entry ``i`` after ``(i + 1) * log_every`` steps); with ``return_limit``, ``(losses, f0)``.
  """
  _check_exponents(alpha, beta)
  _check_sizes(v, d)
  for name, val in (("steps", steps), ("batch", batch), ("log_every", log_every)):
    if not (isinstance(val, (int, np.integer)) and val >= 1):
      raise ValueError(f"{name} must be an int >= 1, got {val!r}.")
  if steps % log_every:
    raise ValueError(f"steps must be a multiple of log_every = {log_every}, got {steps}.")
  if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
    raise ValueError(f"lr must be a finite float > 0, got {lr!r}.")
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}.")
  keys = jnp.asarray(key)
  single = keys.ndim == (0 if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) else 1)
  if single:
    keys = keys[None]
  losses, f0 = _simulate(keys, float(alpha), float(beta), float(lr), v=int(v), d=int(d), steps=int(steps),
                         batch=int(batch), log_every=int(log_every), dtype=jnp.dtype(dtype))
  if single:
    losses, f0 = losses[0], f0[0]
  return (losses, f0) if return_limit else losses
