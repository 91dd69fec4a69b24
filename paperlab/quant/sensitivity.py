"""Post-quantization integral (PQI) sensitivity and ReQuant's dense-and-sparse detach (Hu et al., "Identifying
Sensitive Weights via Post-quantization Integral", arXiv:2503.01901).

A local Taylor expansion ``dL ~ g^T dw + 1/2 dw^T H dw`` of the loss change caused by quantization ``dw = w_hat -
w`` can be far off, because quantization moves the weights beyond the expansion's radius of convergence. PQI
integrates the gradient along the straight path from ``w`` to ``w_hat`` instead (the fundamental theorem of
calculus, exact for any smooth loss):

``L(w_hat) - L(w) = integral_0^1 grad L(w + t dw) . dw dt = sum_i dw_i integral_0^1 dL/dw_i(w + t dw) dt``,

and the per-weight term ``PQI_i = dw_i * mean_t dL/dw_i(w + t_k dw)`` is the weight's share of the loss change
(the paper's sensitivity is its magnitude). The integral is approximated by the midpoint rule with ``N`` points
``t_k = (k + 1/2) / N`` (Sec. 3.2; ``N`` small, 16 by default here -- the paper's exact ``N`` is not given in the
catalogue): exact for a quadratic loss already at ``N = 1``.

ReQuant (Sec. 4) keeps the most sensitive weights out of the quantizer: ``W = Q(W_dense) + S``, with ``S`` a sparse
residual in float that restores the detached weights exactly; the detach is step-wise (a fraction per step, the
sensitivity recomputed on the current quantized model when a function is given). The paper's self-adaptive
*outlier* selection (a per-layer fraction of large-magnitude weights kept in float) is not implemented here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from paperlab import _checks

__all__ = ["pqi", "taylor_sensitivity", "requant"]


def _is_float(x: Any) -> bool:
  return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _delta(params: Any, params_q: Any) -> Any:
  """``params_q - params`` on floating leaves (float32), zeros elsewhere; structures and shapes checked."""
  s1, s2 = jax.tree.structure(params), jax.tree.structure(params_q)
  if s1 != s2:
    raise ValueError(f"params_q must have the structure of params, got {s2} and {s1}.")

  def one(a, b):
    if jnp.shape(a) != jnp.shape(b):
      raise ValueError(f"params_q leaves must have the shapes of params, got {jnp.shape(b)} and {jnp.shape(a)}.")
    if _is_float(a):
      return jnp.asarray(b, jnp.float32) - jnp.asarray(a, jnp.float32)
    return jnp.zeros(jnp.shape(a), jnp.float32)
  return jax.tree.map(one, params, params_q)


def _along(params: Any, delta: Any, t: jax.Array) -> Any:
  """``params + t * delta`` on floating leaves, in each leaf's dtype."""
  return jax.tree.map(lambda p, d: (p + t * d).astype(p.dtype) if _is_float(p) else p, params, delta)


def _float_grad(loss_fn, batch):
  """``params -> grad`` of ``loss_fn(params, batch)`` over the floating leaves (zeros on the others)."""
  def grad(params):
    leaves, treedef = jax.tree.flatten(params)
    is_f = [_is_float(x) for x in leaves]

    def f(floats):
      it = iter(floats)
      return loss_fn(jax.tree.unflatten(treedef, [next(it) if b else x for x, b in zip(leaves, is_f)]), batch)
    g = iter(jax.grad(f)([x for x, b in zip(leaves, is_f) if b]))
    return jax.tree.unflatten(treedef, [next(g).astype(jnp.float32) if b else jnp.zeros(jnp.shape(x), jnp.float32)
                                        for x, b in zip(leaves, is_f)])
  return grad


@functools.partial(jax.jit, static_argnames=("loss_fn", "n_steps"))
def _pqi(loss_fn, params, delta, batch, n_steps):
  grad = _float_grad(loss_fn, batch)

  def body(k, acc):
    t = (k.astype(jnp.float32) + 0.5) / n_steps
    return jax.tree.map(jnp.add, acc, grad(_along(params, delta, t)))

  zeros = jax.tree.map(jnp.zeros_like, delta)
  total = jax.lax.fori_loop(0, n_steps, body, zeros)
  return jax.tree.map(lambda s, d: s * d / n_steps, total, delta)


def pqi(loss_fn: Callable[[Any, Any], jax.Array], params: Any, params_q: Any, batch: Any, *,
        n_steps: int = 16) -> Any:
  """Post-quantization integral: each weight's share of the loss change ``L(params_q) - L(params)`` (Hu et al.,
  arXiv:2503.01901, Eq. 5-6).

  ``PQI_i = dw_i * (1/N) sum_k dL/dw_i(w + t_k dw)`` with ``dw = params_q - params`` and midpoints ``t_k = (k +
  1/2) / N``; the sum over all weights approximates ``L(params_q) - L(params)`` (exactly for a quadratic loss).
  The paper's sensitivity of weight ``i`` is ``|PQI_i|``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, differentiable in the floating leaves of ``params``; hashable
      (a function), it is a static argument of the compiled program.
    params: the full-precision parameter pytree.
    params_q: the quantized (dequantized) pytree, same structure and shapes.
    batch: anything ``loss_fn`` takes.
    n_steps: midpoint-rule points ``N`` (a positive int, default 16).

  Returns:
    a pytree like ``params`` of signed ``float32`` contributions (zeros on non-floating leaves). Jittable: the
    ``N`` gradients run in a ``jax.lax.fori_loop``.

  Raises:
    ValueError: mismatched pytrees or shapes, ``n_steps`` not a positive int.
  """
  if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
    raise ValueError(f"n_steps must be a positive int, got {n_steps!r}.")
  return _pqi(loss_fn, params, _delta(params, params_q), batch, n_steps)


@functools.partial(jax.jit, static_argnames=("loss_fn", "order"))
def _taylor(loss_fn, params, delta, batch, order):
  grad = _float_grad(loss_fn, batch)
  g = grad(params)
  first = jax.tree.map(jnp.multiply, g, delta)
  if order == 1:
    return first
  # H dw by one forward-over-reverse Hessian-vector product along the floating leaves
  _, hd = jax.jvp(lambda t: grad(_along(params, delta, t)), (jnp.float32(0.0),), (jnp.float32(1.0),))
  return jax.tree.map(lambda fi, h, d: fi + 0.5 * d * h, first, hd, delta)


def taylor_sensitivity(loss_fn: Callable[[Any, Any], jax.Array], params: Any, params_q: Any, batch: Any, *,
                       order: int = 2) -> Any:
  """The local Taylor estimate of each weight's share of the loss change, the baseline PQI replaces (Hu et al.,
  arXiv:2503.01901, Sec. 3.1, Eq. 2).

  ``order=1``: ``g_i dw_i``; ``order=2``: ``g_i dw_i + 1/2 dw_i (H dw)_i``, whose sum is ``g^T dw + 1/2 dw^T H dw``
  (``g`` and ``H`` at ``params``; ``H dw`` by one forward-over-reverse Hessian-vector product).

  Args:
    loss_fn, params, params_q, batch: as :func:`pqi`.
    order: 1 or 2.

  Returns:
    a pytree like ``params`` of ``float32`` terms. Jittable.

  Raises:
    ValueError: mismatched pytrees or shapes, ``order`` not 1 or 2.
  """
  if order not in (1, 2) or isinstance(order, bool):
    raise ValueError(f"order must be 1 or 2, got {order!r}.")
  return _taylor(loss_fn, params, _delta(params, params_q), batch, order)


def _top_mask(scores: Any, eligible: Any, k: int) -> Any:
  """Boolean pytree: the ``k`` largest ``scores`` among ``eligible`` positions, over the whole tree."""
  leaves, treedef = jax.tree.flatten(scores)
  elig = jax.tree.leaves(eligible)
  flat = jnp.concatenate([jnp.where(e, s, -jnp.inf).ravel() for s, e in zip(leaves, elig)])
  if k <= 0:
    return jax.tree.unflatten(treedef, [jnp.zeros(s.shape, bool) for s in leaves])
  _, idx = jax.lax.top_k(flat, k)
  chosen = jnp.zeros(flat.shape, bool).at[idx].set(True)
  out, start = [], 0
  for s in leaves:
    out.append(chosen[start:start + s.size].reshape(s.shape))
    start += s.size
  return jax.tree.unflatten(treedef, out)


def requant(params: Any, quantize_fn: Callable[[Any], Any], sens: Any | Callable[[Any], Any], *,
            sparse_frac: float = 0.005, steps: int = 4) -> tuple[Any, Any]:
  """ReQuant's step-wise significant-weight detach (Hu et al., arXiv:2503.01901, Sec. 4): ``W = Q(W_dense) + S``.

  Over ``steps`` steps, the ``sparse_frac / steps`` most sensitive (largest ``|sens|``) not yet detached weights
  of the whole pytree move to a sparse float residual ``S``, and the rest is re-quantized: ``W_dense`` is ``W``
  with the detached weights set to 0, ``S = (W - Q(W_dense))`` on the detached positions and 0 elsewhere, so the
  returned ``Q(W_dense) + S`` equals ``W`` exactly where detached. With ``sparse_frac = 0`` the result is
  ``quantize_fn(params)``.

  Args:
    params: the full-precision pytree.
    quantize_fn: ``params -> dequantized params`` (e.g. RTN on the kernels); zero must quantize to zero (true of
      the min-max and symmetric grids).
    sens: a pytree like ``params`` of sensitivities (e.g. :func:`pqi`), ``None`` leaves never detached, or a
      function ``params_hat -> sensitivities`` recomputed before every step on the current quantized pytree.
    sparse_frac: fraction of the scored weights kept in float, in ``[0, 1)`` (paper: about 0.5%).
    steps: detach steps (a positive int).

  Returns:
    ``(params_hat, sparse_residual)``: ``params_hat = Q(W_dense) + S`` and ``S`` (zeros off the detached
    positions), pytrees like ``params``. Host loop over steps; each step calls ``quantize_fn`` (and ``sens``).

  Raises:
    ValueError: ``sparse_frac`` outside ``[0, 1)``, ``steps`` not a positive int, ``sens`` not shaped like
      ``params``.
  """
  _checks.check_range("sparse_frac", sparse_frac, 0.0, 1.0, high_inclusive=False)
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive int, got {steps!r}.")
  sens_fn = sens if callable(sens) else (lambda _: sens)

  def score(si, p):
    if si is None or not _is_float(p):
      return jnp.full(jnp.shape(p), -jnp.inf, jnp.float32)
    if jnp.shape(si) != jnp.shape(p):
      raise ValueError(f"sens leaves must have the shapes of params, got {jnp.shape(si)} and {jnp.shape(p)}.")
    return jnp.abs(jnp.asarray(si, jnp.float32))

  def scores_of(s):
    try:
      return jax.tree.map(score, s, params, is_leaf=lambda x: x is None)
    except ValueError as e:
      raise ValueError(f"sens must be a pytree like params (None leaves allowed): {e}") from None

  total = sum(int(jnp.size(p)) for p in jax.tree.leaves(params) if _is_float(p))
  mask = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), bool), params)
  params_hat = quantize_fn(params)
  for i in range(steps):
    target = int(round(sparse_frac * total * (i + 1) / steps))
    have = sum(int(m.sum()) for m in jax.tree.leaves(mask))
    scores = scores_of(sens_fn(params_hat))
    eligible = jax.tree.map(lambda s, m: jnp.isfinite(s) & ~m, scores, mask)
    new = _top_mask(scores, eligible, target - have)
    mask = jax.tree.map(jnp.logical_or, mask, new)
    dense = jax.tree.map(lambda p, m: jnp.where(m, jnp.zeros_like(p), p) if _is_float(p) else p, params, mask)
    q = quantize_fn(dense)
    params_hat = jax.tree.map(lambda p, qi, m: jnp.where(m, p, qi) if _is_float(p) else qi, params, q, mask)
    residual = jax.tree.map(lambda p, qi, m: jnp.where(m, p - qi, jnp.zeros_like(p)) if _is_float(p) else
                            jnp.zeros_like(p), params, q, mask)
  return params_hat, residual
