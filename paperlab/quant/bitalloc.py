"""Mixed-precision bit allocation: which layer gets how many bits.

Two papers:

* Hubara et al., "Improving Post Training Neural Quantization: Layer-wise Calibration and Integer Programming",
  arXiv:2006.10518, Sec. 4: measure, for every layer ``l`` and candidate precision ``b``, the loss increase
  ``dL[l, b]`` when only that layer is quantized to ``b`` bits (:func:`measure_sensitivities`); assume the
  increases add up and solve the integer program (Eq. 5-7)

  ``min_x sum_{l,b} dL[l,b] x[l,b]  s.t.  sum_b x[l,b] = 1 (every l),  sum_{l,b} cost[l,b] x[l,b] <= budget,
  x binary``

  with ``cost`` a memory or compute figure (parameters x bits, or MACs x bits), :func:`bit_allocation_ip`. The
  official code (github:papers-submission/CalibTIP, ``mpip_compression_pytorch_multi.py``) solves it with PuLP;
  here it is :func:`scipy.optimize.milp` (HiGHS), on the host.

* Schaefer et al., "Augmenting Hessians with Inter-Layer Dependencies for Mixed-Precision Post-Training
  Quantization", arXiv:2306.04879: order layers by a Hessian sensitivity (HAWQ's ``Tr(H_l) / n_l *
  ||Q(W_l) - W_l||^2``, :func:`hessian_trace` by Hutchinson's estimator and :func:`hessian_sensitivity`),
  augmented with a measured inter-layer term (:func:`interlayer_sensitivity`: the loss recovered by keeping layer
  ``l`` in high precision while every other layer is already low, :func:`augmented_sensitivity`), then a bisection
  over the number ``k`` of most sensitive layers kept in high precision finds the smallest ``k`` that meets an
  accuracy tolerance (:func:`bisect_mixed_precision`).

The measurement loops (:func:`measure_sensitivities`, :func:`interlayer_sensitivity`, the bisection) and the IP
run on the host: each step calls a user ``evaluate`` that may itself run a jitted forward pass.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["bit_allocation_ip", "allocation_cost", "measure_sensitivities", "hessian_trace", "hessian_sensitivity",
           "interlayer_sensitivity", "augmented_sensitivity", "bisect_mixed_precision"]


# ----------------------------------------------------------------------------------------------------------------
# Hubara et al. (arXiv:2006.10518): the integer program


def _table(name: str, x: Any) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
    raise ValueError(f"{name} must be a 2-D table (layers, choices), got shape {a.shape}.")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{name} must be finite, but it holds NaN or Inf values.")
  return a


def bit_allocation_ip(delta: Any, cost: Any, budget: float, *, bits: Sequence[int] | None = None) -> np.ndarray:
  """Per-layer precision by the integer program of Hubara et al. (arXiv:2006.10518, Sec. 4, Eq. 5-7).

  Minimizes the summed predicted degradation ``sum_l delta[l, j_l]`` over one choice ``j_l`` per layer subject to
  ``sum_l cost[l, j_l] <= budget``, as a binary program in ``x[l, j]`` with ``sum_j x[l, j] = 1``. Solved by
  :func:`scipy.optimize.milp` (HiGHS branch and bound; exact), on the host -- not jittable, and it need not be: the
  tables are ``layers x choices`` numbers.

  Args:
    delta: ``(layers, choices)`` predicted loss increase (or accuracy drop) of each layer at each choice, the others
      in high precision (:func:`measure_sensitivities`).
    cost: ``(layers, choices)`` cost of each choice (e.g. parameters x bits; :func:`allocation_cost`).
    budget: the largest total cost allowed.
    bits: optional labels of the choices (length ``choices``, e.g. ``(2, 4, 8)``).

  Returns:
    ``int64`` array ``(layers,)``: the chosen column per layer, or ``bits[column]`` when ``bits`` is given.

  Raises:
    ValueError: tables of different or non-2-D shapes, non-finite entries, ``bits`` of the wrong length, a
      non-finite budget, or a budget below the cheapest allocation (the program is infeasible).
  """
  from scipy import optimize, sparse  # pylint: disable=g-import-not-at-top

  d = _table("delta", delta)
  c = _table("cost", cost)
  if c.shape != d.shape:
    raise ValueError(f"cost must have delta's shape {d.shape}, got {c.shape}.")
  if isinstance(budget, bool) or not np.isfinite(float(budget)):
    raise ValueError(f"budget must be a finite number, got {budget!r}.")
  if bits is not None and len(bits) != d.shape[1]:
    raise ValueError(f"bits must label each of the {d.shape[1]} choices, got {list(bits)!r}.")
  layers, choices = d.shape
  cheapest = float(c.min(axis=1).sum())
  if float(budget) < cheapest:
    raise ValueError(f"budget={budget!r} is below the cheapest allocation's cost {cheapest!r}: the integer program "
                     f"is infeasible; accepted: budget >= {cheapest!r}.")
  one_per_layer = sparse.kron(sparse.eye(layers), np.ones((1, choices)))
  constraints = [optimize.LinearConstraint(one_per_layer, 1.0, 1.0),
                 optimize.LinearConstraint(c.reshape(1, -1), -np.inf, float(budget))]
  res = optimize.milp(d.reshape(-1), constraints=constraints, integrality=np.ones(d.size),
                      bounds=optimize.Bounds(0.0, 1.0))
  if not res.success:
    raise ValueError(f"bit_allocation_ip: scipy.optimize.milp found no solution ({res.message}).")
  choice = np.argmax(res.x.reshape(layers, choices), axis=1).astype(np.int64)
  return np.asarray(bits, dtype=np.int64)[choice] if bits is not None else choice


def allocation_cost(sizes: Sequence[int], bits: Sequence[int]) -> np.ndarray:
  """The memory cost table ``cost[l, j] = sizes[l] * bits[j]`` (bits of layer ``l``'s weights at ``bits[j]``), the
  official code's ``'Parameters Size'`` metric. float64 ``(layers, choices)``."""
  s = np.asarray(sizes, dtype=np.float64)
  b = np.asarray(bits, dtype=np.float64)
  if s.ndim != 1 or b.ndim != 1 or np.any(s <= 0) or np.any(b <= 0):
    raise ValueError(f"sizes and bits must be 1-D sequences of positive numbers, got {list(s)!r} and {list(b)!r}.")
  return np.outer(s, b)


def measure_sensitivities(evaluate: Callable[[Mapping[str, int]], float], layers: Sequence[str],
                          bits: Sequence[int]) -> np.ndarray:
  """``delta[l, j] = evaluate({layers[l]: bits[j]}) - evaluate({})``: the degradation when only one layer is
  quantized (arXiv:2006.10518, Sec. 4: "each layer is quantized separately while the rest stay in high
  precision"). Host loop of ``1 + layers x bits`` calls.

  Args:
    evaluate: ``assignment -> loss`` (lower is better; pass ``-accuracy`` for accuracy) of the network with the
      layers named in ``assignment`` quantized to the given bits and all others in high precision.
    layers: layer names. bits: candidate precisions.

  Returns:
    float64 ``(layers, bits)``.
  """
  if not layers or not bits:
    raise ValueError(f"layers and bits must be non-empty, got {list(layers)!r} and {list(bits)!r}.")
  base = float(evaluate({}))
  return np.asarray([[float(evaluate({l: int(b)})) - base for b in bits] for l in layers], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# Schaefer et al. (arXiv:2306.04879): Hessian sensitivity, inter-layer augmentation, bisection


def hessian_trace(loss_fn: Callable[[Any], jax.Array], params: Any, key: jax.Array, *, n_probe: int = 32) -> Any:
  """Per-leaf Hessian traces ``Tr(H_ll)`` of ``loss_fn`` at ``params`` by Hutchinson's estimator.

  ``Tr(H_ll) ~ mean_i v_i,l^T (H v_i)_l`` with Rademacher probes ``v_i`` over *all* leaves jointly (one
  Hessian-vector product per probe by forward-over-reverse differentiation gives every leaf's block trace; the
  cross-block terms vanish in expectation). The estimator of HAWQ-V2 / PyHessian used for the layer sensitivities
  of Schaefer et al. (arXiv:2306.04879). Jittable (``loss_fn`` closed over, ``n_probe`` static).

  Args:
    loss_fn: ``params -> scalar loss`` (the calibration batch closed over).
    params: a pytree of floating arrays.
    key: PRNG key of the probes.
    n_probe: number of probes (32; the error falls as ``1 / sqrt(n_probe)``).

  Returns:
    a pytree like ``params`` with one float32 scalar per leaf.
  """
  if isinstance(n_probe, bool) or not isinstance(n_probe, int) or n_probe < 1:
    raise ValueError(f"n_probe must be a positive int, got {n_probe!r}.")
  leaves, treedef = jax.tree.flatten(params)
  grad_fn = jax.grad(loss_fn)

  def one(total, k):
    keys = jax.random.split(k, len(leaves))
    v = treedef.unflatten([jax.random.rademacher(kk, x.shape, jnp.float32).astype(x.dtype)
                           for kk, x in zip(keys, leaves)])
    hv = jax.jvp(grad_fn, (params,), (v,))[1]
    per_leaf = jax.tree.map(lambda a, b: jnp.sum(a.astype(jnp.float32) * b.astype(jnp.float32)), v, hv)
    return jax.tree.map(jnp.add, total, per_leaf), None

  zero = jax.tree.map(lambda _: jnp.float32(0.0), params)
  total, _ = jax.lax.scan(one, zero, jax.random.split(key, n_probe))
  return jax.tree.map(lambda t: t / n_probe, total)


def hessian_sensitivity(traces: Any, params: Any, quantized: Any) -> Any:
  """HAWQ's layer sensitivity ``Omega_l = Tr(H_l) / n_l * ||Q(W_l) - W_l||^2`` per leaf (Dong et al., HAWQ-V2,
  arXiv:1911.03852, Eq. 3; the base score of Schaefer et al., arXiv:2306.04879), from :func:`hessian_trace`'s
  ``traces``, the float ``params`` and their quantized versions ``quantized`` (same structure). float32 scalars."""
  return jax.tree.map(lambda t, w, q: t / w.size * jnp.sum(jnp.square(q.astype(jnp.float32) - w.astype(jnp.float32))),
                      traces, params, quantized)


def interlayer_sensitivity(evaluate: Callable[[Mapping[str, int]], float], layers: Sequence[str], *, low_bits: int,
                           high_bits: int) -> np.ndarray:
  """The inter-layer term of Schaefer et al. (arXiv:2306.04879): for each layer, the loss recovered by raising it
  to ``high_bits`` while every other layer is already at ``low_bits`` (a leave-one-out measurement in the context
  of the quantized network, which a per-layer Hessian block cannot see):

  ``g_l = evaluate(all low) - evaluate(all low, layer l high)``.

  Host loop of ``1 + layers`` calls; ``evaluate(assignment) -> loss`` (lower is better) takes a full
  ``{layer: bits}`` assignment. float64 ``(layers,)``.
  """
  if not layers:
    raise ValueError("layers must be non-empty.")
  low = {l: int(low_bits) for l in layers}
  base = float(evaluate(low))
  return np.asarray([base - float(evaluate({**low, l: int(high_bits)})) for l in layers], dtype=np.float64)


def augmented_sensitivity(hessian_scores: Any, interlayer_scores: Any, *, weight: float = 1.0) -> np.ndarray:
  """Augmented layer score ``Omega_l / sum|Omega| + weight * g_l / sum|g|`` (each term normalized to unit total
  so that neither unit dominates). Schaefer et al. (arXiv:2306.04879) combine the Hessian score with the measured
  inter-layer dependency; their exact combination is not reproduced here (this normalized sum is paperlab's
  choice). float64 ``(layers,)``; larger is more sensitive."""
  h = np.asarray(hessian_scores, dtype=np.float64).reshape(-1)
  g = np.asarray(interlayer_scores, dtype=np.float64).reshape(-1)
  if h.shape != g.shape or not (np.all(np.isfinite(h)) and np.all(np.isfinite(g))):
    raise ValueError(f"hessian_scores and interlayer_scores must be finite and of equal length, got {h.shape} and "
                     f"{g.shape}.")
  norm = lambda a: a / max(float(np.abs(a).sum()), 1e-30)
  return norm(h) + float(weight) * norm(g)


def bisect_mixed_precision(order: Sequence[int], accept: Callable[[int], bool], *, high_bits: int = 8,
                           low_bits: int = 4) -> tuple[int, np.ndarray]:
  """The smallest number ``k`` of most sensitive layers kept at ``high_bits`` whose network ``accept``\\ s (e.g.
  accuracy within a tolerance of full precision), by bisection over ``k in [0, L]`` (Schaefer et al.,
  arXiv:2306.04879; their sensitivity-guided search). Assumes ``accept`` is monotone in ``k`` (then the answer is
  the linear scan's), and calls it ``O(log L)`` times on the host.

  Args:
    order: layer indices, most sensitive first (a permutation of ``range(L)``).
    accept: ``k -> bool`` for the network with layers ``order[:k]`` at ``high_bits`` and the rest at ``low_bits``.
    high_bits, low_bits: the two precisions.

  Returns:
    ``(k, bits)`` with ``bits`` the ``int64`` precision of each layer in index order.

  Raises:
    ValueError: ``order`` not a permutation, or ``accept(L)`` false (no ``k`` meets the tolerance).
  """
  order = [int(i) for i in order]
  n = len(order)
  if sorted(order) != list(range(n)):
    raise ValueError(f"order must be a permutation of range({n}), got {order!r}.")
  if not accept(n):
    raise ValueError(f"accept({n}) is false: the tolerance is not met even with every layer at {high_bits} bits.")
  lo, hi = 0, n  # accept(hi) holds; the answer lies in [lo, hi]
  while lo < hi:
    mid = (lo + hi) // 2
    if accept(mid):
      hi = mid
    else:
      lo = mid + 1
  bits = np.full(n, int(low_bits), dtype=np.int64)
  bits[order[:lo]] = int(high_bits)
  return lo, bits
