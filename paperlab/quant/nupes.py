"""Power-exponent non-uniform quantization: PowerQuant / NUPES (Yvinec, Dapogny, Cord & Bailly, "NUPES: Non-Uniform
Post-Training Quantization via Power Exponent Search", arXiv:2308.05600; the data-free search is their PowerQuant,
"PowerQuant: Automorphism Search for Non-Uniform Quantization", ICLR 2023, arXiv:2301.09858).

The automorphisms of ``(R, x)`` are the power functions ``phi_a(x) = sign(x) |x|^a``. A weight is quantized
uniformly *in the power domain*: ``q = round(phi_a(w) / s)`` with a symmetric per-channel (or per-group) scale
``s = max|phi_a(w)| / (2^(b-1) - 1)``, and dequantized by the inverse automorphism ``w_hat = phi_a^-1(s q) =
sign(q) |s q|^(1/a)`` (NUPES Sec. 3, Eq. 2-3). Since ``phi_a(x y) = phi_a(x) phi_a(y)``, products survive the
change of domain. ``a = 1`` is uniform symmetric RTN; ``a < 1`` puts more levels near zero, where bell-shaped
weights are dense.

* Data-free (PowerQuant): ``a`` is the point of a grid (default ``linspace(0.25, 1, 16)``, which contains 1) with
  the smallest weight reconstruction error ``||w - w_hat||^2`` (:func:`search_power_exponent`).
* Data-driven (NUPES): ``a`` *and* the power-domain codes are learned by gradient descent on the layer's output
  reconstruction ``||x w - x w_hat||^2``: a continuous latent ``u`` (initialized at ``phi_a(w) / s``) is rounded
  with a straight-through estimator and may cross any number of grid points (not only up or down, unlike
  AdaRound); ``a`` is a free scalar (:func:`nupes_layer`). The paper stabilizes the gradient with respect to
  ``a`` near ``|x| -> 0``; its exact tricks are not given in the catalogue, so here ``|s q|^(1/a)`` is computed as
  ``exp(log|s q| / a)`` on a safe argument with zero codes masked (no ``0 * inf`` in the derivative), ``a`` is
  clipped to ``[0.05, 4]``, and the best iterate (lowest calibration loss, the start included) is returned, so the
  data-driven result never reconstructs the calibration output worse than the data-free start.

Layout: a Flax kernel ``(in, out)``; a scale per output column (``group_size=None``) or per group of input rows,
as :func:`paperlab.quant.quantize_rtn`.
"""

from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab import _checks
from paperlab.quant.rtn import check_bits, check_group_size, check_kernel

__all__ = ["PowerQuantWeight", "power_quant", "search_power_exponent", "nupes_layer", "nupes_model"]

_A_RANGE = (0.05, 4.0)


class PowerQuantWeight(NamedTuple):
  """A kernel ``(in, out)`` quantized uniformly in the power domain ``phi_a``.

  Attributes:
    w_hat: the dequantized kernel ``sign(q) |s q|^(1/a)``, in the input's dtype.
    codes: ``int8`` signed codes in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, shape ``(in, out)``.
    scale: ``float32`` power-domain scales, shape ``(in // group_size, out)``.
    a: ``float32`` scalar exponent.
  """

  w_hat: jax.Array
  codes: jax.Array
  scale: jax.Array
  a: jax.Array


def _phi(x: jax.Array, a: jax.Array) -> jax.Array:
  return jnp.sign(x) * jnp.abs(x) ** a


def _phi_inv(y: jax.Array, a: jax.Array) -> jax.Array:
  """``sign(y) |y|^(1/a)`` with a derivative that is finite at ``y = 0`` (masked safe logarithm)."""
  mag = jnp.abs(y)
  safe = jnp.where(mag > 0, mag, 1.0)
  return jnp.where(mag > 0, jnp.sign(y) * jnp.exp(jnp.log(safe) / a), 0.0)


def _scale(wg: jax.Array, a: jax.Array, qmax: float) -> jax.Array:
  """Per-group power-domain scale ``max|phi_a(w)| / qmax`` of ``wg`` ``(G, g, out)``; 1 for all-zero groups."""
  m = jnp.max(jnp.abs(wg), axis=1) ** a
  return jnp.where(m > 0, m / qmax, 1.0)


@functools.partial(jax.jit, static_argnames=("bits", "group_size"))
def _power_quant(w: jax.Array, a: jax.Array, bits: int, group_size: int) -> PowerQuantWeight:
  qmax = 2.0 ** (bits - 1) - 1.0
  a = jnp.asarray(a, jnp.float32)
  wg = w.astype(jnp.float32).reshape(w.shape[0] // group_size, group_size, w.shape[1])
  one = a == 1.0  # XLA's pow / exp-log are not exact at a = 1: take the identity there, so a = 1 *is* RTN
  s = jnp.where(one, jnp.max(jnp.abs(wg), axis=1) / qmax, _scale(wg, a, qmax))
  s = jnp.where(s > 0, s, 1.0)
  q = jnp.clip(jnp.round(jnp.where(one, wg, _phi(wg, a)) / s[:, None]), -qmax, qmax)
  w_hat = jnp.where(one, q * s[:, None], _phi_inv(q * s[:, None], a)).reshape(w.shape).astype(w.dtype)
  return PowerQuantWeight(w_hat, q.reshape(w.shape).astype(jnp.int8), s, a)


def _check_a(name: str, a: Any) -> None:
  _checks.check_range(name, a, 0.0, None, low_inclusive=False)
  if not isinstance(a, jax.core.Tracer) and hasattr(a, "shape") and tuple(a.shape) != ():
    raise ValueError(f"{name} must be a scalar, got shape {tuple(a.shape)}.")


def power_quant(w: jax.Array, a: float | jax.Array, *, bits: int = 3,
                group_size: int | None = None) -> PowerQuantWeight:
  """Quantize a kernel uniformly in the power domain ``phi_a(x) = sign(x)|x|^a`` (NUPES, arXiv:2308.05600, Eq. 2-3).

  ``q = clip(round(phi_a(w) / s), -qmax, qmax)`` with ``s = max|phi_a(w)| / qmax`` per output channel or group,
  ``qmax = 2^(bits-1) - 1``; ``w_hat = sign(q) |s q|^(1/a)``. ``a = 1`` is symmetric uniform RTN (the int formats
  of :func:`paperlab.quant.quantize`).

  Args:
    w: kernel ``(in, out)``, floating, finite.
    a: the exponent, a positive scalar (may be traced).
    bits: 2..8 (paper: 3, 4, 8 for weights).
    group_size: input rows per scale; ``None`` for one scale per output channel (the paper's per-channel setting).

  Returns:
    :class:`PowerQuantWeight`. Jittable with ``bits`` and ``group_size`` static.

  Raises:
    ValueError: unsupported ``bits``, non-positive or non-scalar ``a``, a ``group_size`` that does not divide
      ``in``, non-finite or non-2-D ``w``.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  _check_a("a", a)
  g = check_group_size(group_size, w.shape[0])
  return _power_quant(w, a, bits, g)


def _default_grid() -> jax.Array:
  return jnp.linspace(0.25, 1.0, 16, dtype=jnp.float32)


@functools.partial(jax.jit, static_argnames=("bits", "group_size"))
def _search(w: jax.Array, grid: jax.Array, bits: int, group_size: int) -> jax.Array:
  def err(a):
    return jnp.sum(jnp.square(_power_quant(w, a, bits, group_size).w_hat.astype(jnp.float32) - w))
  errors = jax.vmap(err)(grid)
  return grid[jnp.argmin(errors)]  # the first grid point on ties


def search_power_exponent(w: jax.Array, *, bits: int = 3, group_size: int | None = None,
                          grid: jax.Array | None = None) -> jax.Array:
  """The data-free exponent: ``argmin_a ||w - power_quant(w, a).w_hat||^2`` over a grid (PowerQuant, arXiv:2301.09858;
  NUPES, arXiv:2308.05600, Sec. 3.1).

  Args:
    w: kernel ``(in, out)``, floating, finite.
    bits: 2..8.
    group_size: as :func:`power_quant`.
    grid: 1-D positive exponents to try; default ``linspace(0.25, 1, 16)`` (contains ``a = 1``, uniform RTN, so the
      searched error is never above the uniform one).

  Returns:
    ``float32`` scalar, the first grid point of smallest error. Jittable with ``bits`` and ``group_size`` static.

  Raises:
    ValueError: ``grid`` not 1-D, empty or not positive; the errors of :func:`power_quant`.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  g = check_group_size(group_size, w.shape[0])
  grid = _default_grid() if grid is None else jnp.asarray(grid, jnp.float32)
  if grid.ndim != 1 or grid.shape[0] == 0:
    raise ValueError(f"grid must be a non-empty 1-D array of exponents, got shape {tuple(grid.shape)}.")
  if not isinstance(grid, jax.core.Tracer) and not bool(jnp.all(grid > 0)):
    raise ValueError(f"grid must hold positive exponents, got {np.asarray(grid).tolist()}.")
  return _search(w.astype(jnp.float32), grid, bits, g)


@functools.partial(jax.jit, static_argnames=("bits", "group_size", "steps"))
def _nupes(w, x, a0, bits, group_size, steps, lr, lr_a):
  qmax = 2.0 ** (bits - 1) - 1.0
  w = w.astype(jnp.float32)
  x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  y = x @ w
  norm = jnp.maximum(jnp.mean(jnp.square(y)), 1e-30)
  wg = w.reshape(w.shape[0] // group_size, group_size, w.shape[1])

  def dequant(params):
    a = jnp.clip(params["a"], *_A_RANGE)
    s = _scale(wg, a, qmax)
    u = jnp.clip(params["u"], -qmax, qmax)
    q = u + jax.lax.stop_gradient(jnp.round(u) - u)  # straight-through rounding over the whole grid
    return _phi_inv(q * s[:, None], a).reshape(w.shape), q, s, a

  def loss(params):
    return jnp.mean(jnp.square(y - x @ dequant(params)[0])) / norm

  a0 = jnp.asarray(a0, jnp.float32)
  params = {"u": _phi(wg, a0) / _scale(wg, a0, qmax)[:, None], "a": a0}
  # cosine-decayed learning rates: the straight-through codes settle instead of oscillating across boundaries
  sched = lambda base: optax.cosine_decay_schedule(base, steps)
  tx = optax.multi_transform({"u": optax.adam(sched(lr)), "a": optax.adam(sched(lr_a))}, {"u": "u", "a": "a"})
  grad_fn = jax.value_and_grad(loss)

  def step(carry, _):
    params, opt_state, best, best_loss = carry
    value, grads = grad_fn(params)
    better = value < best_loss  # the loss of ``params``, before this update
    best = jax.tree.map(lambda b, p: jnp.where(better, p, b), best, params)
    best_loss = jnp.where(better, value, best_loss)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, best, best_loss), value

  carry = (params, tx.init(params), params, jnp.asarray(jnp.inf, jnp.float32))
  (last, _, best, best_loss), losses = jax.lax.scan(step, carry, None, length=steps)
  final = loss(last)
  best = jax.tree.map(lambda b, p: jnp.where(final < best_loss, p, b), best, last)
  w_hat, q, s, a = dequant(best)
  return PowerQuantWeight(w_hat, q.reshape(w.shape).astype(jnp.int8), s, a), losses


def nupes_layer(w: jax.Array, x: jax.Array, *, bits: int = 3, group_size: int | None = None,
                a_init: float | jax.Array | None = None, steps: int = 500, lr: float = 5e-4,
                lr_a: float = 1e-3, return_losses: bool = False):
  """Data-driven NUPES for one layer: learn the exponent ``a`` and the power-domain codes on the layer output
  (NUPES, arXiv:2308.05600, Sec. 3.2; see the module docstring for the straight-through rounding and the
  stabilization used here).

  Minimizes ``mean((x w - x w_hat)^2) / mean((x w)^2)`` with Adam over a continuous code latent ``u`` (rounded
  with a straight-through estimator, so a weight may move across several grid points) and ``a``; the scale
  follows ``a`` (``s = max|phi_a(w)| / qmax``). Starts from the data-free solution: ``a_init`` (default: the
  :func:`search_power_exponent` result) and ``u = phi_a(w) / s``, and returns the best iterate.

  Args:
    w: kernel ``(in, out)``, floating, finite.
    x: calibration inputs ``(..., in)`` of the layer.
    bits: 2..8. group_size: as :func:`power_quant`.
    a_init: starting exponent (positive); ``None`` runs the data-free search first.
    steps: Adam steps (a positive int). lr: peak learning rate of the codes (in grid steps). lr_a: peak learning
      rate of ``a``. Both decay to 0 on a cosine schedule. The paper's values are not given in the catalogue; these
      were chosen on a random layer.
    return_losses: also return the ``(steps,)`` loss curve.

  Returns:
    :class:`PowerQuantWeight` (``w_hat`` float32), and the loss curve if ``return_losses``. Jittable with
    ``bits``, ``group_size``, ``steps`` static.

  Raises:
    ValueError: ``x`` whose last axis is not ``in``, non-positive ``steps``, ``lr`` or ``lr_a``, and the errors of
      :func:`power_quant`.
  """
  w = check_kernel("w", w)
  bits = check_bits(bits)
  g = check_group_size(group_size, w.shape[0])
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"x must have shape (..., {w.shape[0]}) to feed w of shape {tuple(w.shape)}, got "
                     f"{tuple(x.shape)}.")
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive int, got {steps!r}.")
  _checks.check_positive("lr", lr)
  _checks.check_positive("lr_a", lr_a)
  if a_init is None:
    a_init = _search(w.astype(jnp.float32), _default_grid(), bits, g)
  else:
    _check_a("a_init", a_init)
  qw, losses = _nupes(w, x, a_init, bits, g, steps, lr, lr_a)
  return (qw, losses) if return_losses else qw


def nupes_model(model, batches: Iterable[Any], *, bits: int = 3, group_size: int | None = None, steps: int = 500,
                lr: float = 5e-4, lr_a: float = 1e-3, data_free: bool = False, include: str | None = None,
                exclude: str | None = None):
  """PowerQuant / NUPES over the Dense (``nnx.Linear``) layers of a Flax NNX model, layer by layer in forward order
  (NUPES, arXiv:2308.05600): each layer gets its searched exponent and, unless ``data_free``, is then refined by
  :func:`nupes_layer` on its inputs in the network whose earlier layers are already quantized.

  Args:
    model: an ``nnx.Module`` (not modified). batches: calibration inputs, each accepted by ``model(batch)``.
    bits, group_size, steps, lr, lr_a: as :func:`nupes_layer`.
    data_free: only the exponent search (PowerQuant), no calibration optimization (the batches then only order
      the layers).
    include, exclude: regexes on layer paths.

  Returns:
    ``(quantized_model, {path: PowerQuantWeight})``. Host loop over layers, one jitted program per layer shape.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  def solve(path, kernel, x):
    a = search_power_exponent(kernel, bits=bits, group_size=group_size)
    if data_free:
      return power_quant(kernel, a, bits=bits, group_size=group_size)
    return nupes_layer(kernel, x, bits=bits, group_size=group_size, a_init=a, steps=steps, lr=lr, lr_a=lr_a)

  return calibration.sequential(model, batches, solve, statistic="inputs", include=include, exclude=exclude)
