"""Gradient-free structured pruning with unlabeled data: neuron / head scores from activations, a FLOP-budget mask
search, and folding the pruned neurons into the next layer (convex combinations or least squares).

Nova, Dai & Schuurmans, "Gradient-Free Structured Pruning with Unlabeled Data", ICML 2023, arXiv:2303.04185.
The framework prunes FFN neurons and attention heads of a pre-trained model from the weights and a few unlabeled
inputs, with no gradient and no retraining:

1. **Representative ranking (R2)**: a structure (neuron, head) whose activation pattern is well represented by the
   others is redundant. With the Gaussian kernel ``K_ij = exp(-||f_i - f_j||^2 / sigma^2)`` over the structures'
   feature vectors ``f_i`` (their activations over the unlabeled samples), the convex self-representation
   ``min_{C >= 0} ||Phi - Phi C||^2 = tr(K - 2 K C + C^T K C)`` is approached from the uniform ``C = 1/n`` by the
   multiplicative update ``C <- C * sqrt(K / (K C))`` (the convex-NMF update of Ding, Li & Jordan, TPAMI 2010);
   the score is ``diag(C)``: how much a structure must represent itself. The paper multiplies it with a
   data-driven magnitude score (D2, the activation norm ``||a_i||_2``), :func:`activation_norm_scores`.
2. **Mask search** under a FLOP target: structures sorted globally by score and kept while the FLOP budget allows
   (the search of Kwon et al., "A Fast Post-Training Pruning Framework for Transformers", arXiv:2204.09656,
   Alg. 1, which this paper builds on), :func:`flop_budget_masks`.
3. **Kernelized Convex Masking (KCM)**: instead of dropping a pruned neuron, its activation is approximated by a
   convex combination of kept ones and its outgoing weights are folded into theirs, :func:`fold_pruned_neurons`
   (``method="convex"``); ``method="mask"`` is Kwon et al.'s least-squares mask tuning (one scale per kept neuron)
   and ``method="lstsq"`` the unrestricted least-squares refit of the next layer.

The exact kernel width and solver settings are not published (no official code); the defaults here (``sigma`` =
median pairwise distance, 100 multiplicative / 200 projected-gradient iterations) are ours. Everything is jittable
with the kept counts static.
"""

from __future__ import annotations

import itertools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from paperlab import _checks

__all__ = ["FOLD_METHODS", "rbf_kernel", "representative_scores", "activation_norm_scores", "weight_norm_scores",
           "select_top", "flop_budget_masks", "project_simplex", "convex_coefficients", "fold_pruned_neurons",
           "structured_prune_mlp"]

FOLD_METHODS = ("convex", "lstsq", "mask", "drop")


def _features(acts: jax.Array) -> jax.Array:
  """``(samples, n)`` or ``(samples, n, d)`` (heads) -> one feature row per structure, ``(n, samples * d)``."""
  acts = jnp.asarray(acts)
  if acts.ndim not in (2, 3):
    raise ValueError(f"acts must have shape (samples, structures) or (samples, structures, dim), got {acts.shape}.")
  return jnp.moveaxis(acts, 1, 0).reshape(acts.shape[1], -1).astype(jnp.float32)


def _sq_dists(f: jax.Array) -> jax.Array:
  sq = jnp.sum(f * f, axis=1)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)


def rbf_kernel(acts: jax.Array, sigma=None) -> jax.Array:
  """Gaussian kernel ``exp(-||f_i - f_j||^2 / sigma^2)`` between the structures of ``acts`` (``(samples, n)`` or
  ``(samples, n, dim)``), shape ``(n, n)``, float32.

  Args:
    acts: activations on unlabeled samples.
    sigma: kernel width; ``None`` = the median of the off-diagonal pairwise distances (a positive floor keeps
      identical features from dividing by zero).

  Raises:
    ValueError: bad ``acts`` rank or ``sigma <= 0``.
  """
  f = _features(acts)
  d2 = _sq_dists(f)
  if sigma is None:
    n = f.shape[0]
    off = jnp.where(jnp.eye(n, dtype=bool), jnp.nan, jnp.sqrt(d2))
    sigma = jnp.maximum(jnp.nanmedian(off), 1e-6) if n > 1 else jnp.float32(1.0)
  else:
    _checks.check_positive("sigma", sigma)
  return jnp.exp(-d2 / jnp.square(jnp.asarray(sigma, jnp.float32)))


def representative_scores(acts: jax.Array, *, sigma=None, num_iters: int = 100) -> jax.Array:
  """R2 scores (Nova et al., arXiv:2303.04185, Sec. 3): ``diag(C)`` after ``num_iters`` multiplicative updates
  ``C <- C * sqrt(K / (K C))`` from ``C = 1/n``, with ``K`` = :func:`rbf_kernel`. A structure represented by
  others (a redundant neuron or head) gets a small score; a unique one a large score. Shape ``(n,)``, float32.

  Raises:
    ValueError: ``num_iters < 0`` or bad ``acts`` / ``sigma``.
  """
  if not isinstance(num_iters, int) or num_iters < 0:
    raise ValueError(f"num_iters must be a non-negative int, got {num_iters!r}.")
  k = rbf_kernel(acts, sigma)
  n = k.shape[0]
  c0 = jnp.full((n, n), 1.0 / n, jnp.float32)
  c = jax.lax.fori_loop(0, num_iters, lambda _, c: c * jnp.sqrt(k / jnp.maximum(k @ c, 1e-30)), c0)
  return jnp.diagonal(c)


def activation_norm_scores(acts: jax.Array) -> jax.Array:
  """D2 scores: the L2 norm of each structure's activations over the unlabeled samples, shape ``(n,)``."""
  return jnp.linalg.norm(_features(acts), axis=1)


def weight_norm_scores(kernel: jax.Array, ord: int = 2) -> jax.Array:
  """Magnitude-norm neuron scores: the ``ord``-norm of each output neuron's incoming weights (column of a Flax
  ``(in, out)`` kernel), the criterion of ``torch.nn.utils.prune.ln_structured(..., n=ord, dim=0)``."""
  if kernel.ndim != 2:
    raise ValueError(f"kernel must be 2-D (in, out), got shape {kernel.shape}.")
  return jnp.linalg.norm(kernel.astype(jnp.float32), ord=ord, axis=0)


def select_top(scores: jax.Array, keep: int) -> jax.Array:
  """Indices of the ``keep`` largest scores (ties by position), in ascending index order: the kept structures.

  Raises:
    ValueError: ``keep`` outside ``[1, n]``.
  """
  n = scores.shape[0]
  if not isinstance(keep, int) or not 1 <= keep <= n:
    raise ValueError(f"keep must be an int in [1, {n}], got {keep!r}.")
  order = jnp.argsort(-scores.astype(jnp.float32), stable=True)
  return jnp.sort(order[:keep])


def flop_budget_masks(scores: Sequence[jax.Array], flops_per_structure: Sequence[float], flop_fraction) -> list:
  """Global mask search under a FLOP budget (Kwon et al., arXiv:2204.09656, Alg. 1, as used by Nova et al.):
  sort every structure of every layer by score (largest first) and keep the longest prefix whose FLOPs stay within
  ``flop_fraction`` of the dense total. Scores of different layers must be comparable (normalize them first).

  Args:
    scores: one ``(n_l,)`` score vector per layer.
    flops_per_structure: FLOPs that one structure of layer ``l`` costs.
    flop_fraction: budget as a fraction of the dense FLOPs, in ``[0, 1]``.

  Returns:
    One bool keep-mask ``(n_l,)`` per layer.
  """
  if len(scores) != len(flops_per_structure) or not scores:
    raise ValueError(f"scores and flops_per_structure need one entry per layer (>= 1), got {len(scores)} and "
                     f"{len(flops_per_structure)}.")
  _checks.check_range("flop_fraction", flop_fraction, 0.0, 1.0)
  sizes = [s.shape[0] for s in scores]
  flat = jnp.concatenate([jnp.asarray(s, jnp.float32) for s in scores])
  cost = jnp.concatenate([jnp.full((n,), float(c), jnp.float32) for n, c in zip(sizes, flops_per_structure)])
  order = jnp.argsort(-flat, stable=True)
  keep_sorted = jnp.cumsum(cost[order]) <= flop_fraction * jnp.sum(cost) * (1 + 1e-6)
  keep = jnp.zeros(flat.shape, bool).at[order].set(keep_sorted)
  return list(jnp.split(keep, list(itertools.accumulate(sizes))[:-1]))


def project_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection of each row (last axis) onto the probability simplex ``{c >= 0, sum c = 1}`` (the
  sort-based algorithm of Duchi et al., ICML 2008)."""
  n = v.shape[-1]
  u = jnp.sort(v, axis=-1)[..., ::-1]
  css = jnp.cumsum(u, axis=-1) - 1.0
  idx = jnp.arange(1, n + 1, dtype=v.dtype)
  rho = jnp.sum(u - css / idx > 0, axis=-1, keepdims=True)
  theta = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def convex_coefficients(targets: jax.Array, basis: jax.Array, *, kernel: str = "linear", sigma=None,
                        num_iters: int = 200) -> jax.Array:
  """Convex combination of the ``basis`` structures that best represents each ``targets`` structure (KCM):
  ``c_i = argmin_{c in simplex} ||phi(t_i) - sum_j c_j phi(b_j)||^2``, i.e. ``c^T G c - 2 c^T h_i`` with the Gram
  matrix ``G`` of the basis and ``h_i`` its kernel with ``t_i``, by projected gradient (step ``1 / (2 lambda_max
  (G))``, :func:`project_simplex`).

  Args:
    targets: ``(samples, p)`` activations of the pruned structures.
    basis: ``(samples, k)`` activations of the kept structures.
    kernel: ``"linear"`` (the activations themselves: what folding into the next layer needs) or ``"rbf"``
      (:func:`rbf_kernel` over targets and basis together).
    sigma: width of the ``"rbf"`` kernel.
    num_iters: projected-gradient iterations.

  Returns:
    ``(p, k)`` coefficients, each row non-negative and summing to 1.
  """
  _checks.check_choice("kernel", kernel, ("linear", "rbf"))
  if targets.ndim != 2 or basis.ndim != 2 or targets.shape[0] != basis.shape[0]:
    raise ValueError(f"targets and basis must be (samples, p) and (samples, k) with the same samples, got "
                     f"{targets.shape} and {basis.shape}.")
  p, k = targets.shape[1], basis.shape[1]
  if kernel == "linear":
    b, t = basis.astype(jnp.float32), targets.astype(jnp.float32)
    g, h = b.T @ b, t.T @ b
  else:
    full = rbf_kernel(jnp.concatenate([basis, targets], axis=1), sigma)
    g, h = full[:k, :k], full[k:, :k]
  step = 1.0 / (2.0 * jnp.maximum(jnp.linalg.eigvalsh(g)[-1], 1e-12))
  c0 = jnp.full((p, k), 1.0 / k, jnp.float32)
  return jax.lax.fori_loop(0, num_iters, lambda _, c: project_simplex(c - step * 2.0 * (c @ g - h)), c0)


def fold_pruned_neurons(w_next: jax.Array, acts: jax.Array, keep_idx: jax.Array, *, method: str = "convex",
                        target: jax.Array | None = None, num_iters: int = 200) -> jax.Array:
  """The next layer's kernel restricted to the kept neurons, compensating the pruned ones.

  With ``A`` the ``(samples, n)`` activations feeding ``w_next`` (``(n, out)``), ``keep`` the kept indices and
  ``P`` the pruned ones:

  * ``"convex"`` (KCM, Nova et al., arXiv:2303.04185): ``W' = W[keep] + C^T W[P]`` with ``C`` the convex
    coefficients (:func:`convex_coefficients`) of each pruned neuron's activations over the kept ones;
  * ``"lstsq"``: ``W' = argmin ||A[:, keep] W' - T||_F`` (``jnp.linalg.lstsq``), ``T = A @ W`` by default;
  * ``"mask"``: Kwon et al.'s least-squares mask tuning (arXiv:2204.09656, Sec. 4.3): ``W' = diag(m) W[keep]``
    with ``m = argmin ||A[:, keep] diag(m) W[keep] - T||_F`` (normal equations
    ``(A_k^T A_k * W_k W_k^T) m = rowsum((A_k^T T) * W_k)``);
  * ``"drop"``: ``W' = W[keep]`` (plain structured pruning).

  Args:
    w_next: ``(n, out)`` kernel of the next layer.
    acts: ``(samples, n)`` activations of the pruned layer on unlabeled data.
    keep_idx: ``(k,)`` int indices of the kept neurons (static length).
    method: one of :data:`FOLD_METHODS`.
    target: ``(samples, out)`` output to match (default ``acts @ w_next``; pass the unpruned network's output when
      earlier layers were pruned already).
    num_iters: iterations of the convex solver.

  Returns:
    ``(k, out)`` kernel, the dtype of ``w_next``.
  """
  _checks.check_choice("method", method, FOLD_METHODS)
  if w_next.ndim != 2 or acts.ndim != 2 or acts.shape[1] != w_next.shape[0]:
    raise ValueError(f"acts (samples, n) must feed w_next (n, out); got acts {acts.shape}, w_next {w_next.shape}.")
  n, k = w_next.shape[0], keep_idx.shape[0]
  w = w_next.astype(jnp.float32)
  a = acts.astype(jnp.float32)
  wk, ak = w[keep_idx], a[:, keep_idx]
  if method == "drop":
    out = wk
  elif method == "convex":
    if k == n:
      out = wk
    else:
      kept = jnp.zeros((n,), bool).at[keep_idx].set(True)
      pruned_idx = jnp.nonzero(~kept, size=n - k)[0]
      c = convex_coefficients(a[:, pruned_idx], ak, num_iters=num_iters)
      out = wk + c.T @ w[pruned_idx]
  else:
    t = a @ w if target is None else target.astype(jnp.float32)
    if method == "lstsq":
      out = jnp.linalg.lstsq(ak, t)[0]
    else:
      gram = (ak.T @ ak) * (wk @ wk.T)
      rhs = jnp.sum((ak.T @ t) * wk, axis=1)
      out = jnp.linalg.lstsq(gram, rhs)[0][:, None] * wk
  return out.astype(w_next.dtype)


def structured_prune_mlp(layers: Sequence[Mapping[str, jax.Array]], x_unlabeled: jax.Array, keep_frac: float, *,
                         activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, score: str = "r2d2",
                         method: str = "convex", sigma=None, num_iters: int = 100) -> tuple[list, list]:
  """Prune every hidden layer of an MLP to ``round(keep_frac * width)`` neurons from unlabeled inputs, layer by
  layer, without gradients or retraining (Nova et al., arXiv:2303.04185, with the paper's per-layer budget).

  For hidden layer ``l`` (in order), the activations of the already-pruned network on ``x_unlabeled`` score the
  neurons, the top ones are kept (:func:`select_top`), the layer's kernel columns and bias are cut and the next
  kernel is folded by :func:`fold_pruned_neurons` (least-squares targets are the unpruned network's pre-activations).

  Args:
    layers: ``[{"kernel": (in, out), "bias": (out,)}, ...]``, hidden layers then the head (not pruned).
    x_unlabeled: ``(samples, in)`` unlabeled inputs.
    keep_frac: fraction of neurons kept per hidden layer, in ``(0, 1]``.
    activation: the hidden activation.
    score: ``"r2d2"`` (R2 x D2, the paper's combination), ``"r2"``, ``"d2"`` (activation norm) or
      ``"weight_norm"`` (magnitude-norm baseline).
    method: how the next layer absorbs the pruned neurons, one of :data:`FOLD_METHODS`.
    sigma: R2 kernel width (``None`` = median distance).
    num_iters: R2 multiplicative iterations.

  Returns:
    ``(pruned_layers, keep_indices)``: the smaller layers (same dicts) and the kept indices of every hidden layer.
  """
  _checks.check_range("keep_frac", keep_frac, 0.0, 1.0, low_inclusive=False)
  _checks.check_choice("score", score, ("r2d2", "r2", "d2", "weight_norm"))
  _checks.check_choice("method", method, FOLD_METHODS)
  if len(layers) < 2:
    raise ValueError(f"layers must hold at least one hidden layer and the head, got {len(layers)} layers.")
  layers = [dict(l) for l in layers]
  x_s = x_t = jnp.asarray(x_unlabeled, jnp.float32)
  kept_all = []
  for i in range(len(layers) - 1):
    cur, nxt = layers[i], layers[i + 1]
    h_s = activation(x_s @ cur["kernel"] + cur["bias"])
    n = h_s.shape[1]
    if score == "weight_norm":
      s = weight_norm_scores(cur["kernel"])
    elif score == "d2":
      s = activation_norm_scores(h_s)
    else:
      s = representative_scores(h_s, sigma=sigma, num_iters=num_iters)
      if score == "r2d2":
        s = s * activation_norm_scores(h_s)
    keep = select_top(s, max(1, round(keep_frac * n)))
    x_t_next = activation(x_t @ cur.get("orig_kernel", cur["kernel"]) + cur.get("orig_bias", cur["bias"]))
    target = x_t_next @ nxt["kernel"]
    new_next = fold_pruned_neurons(nxt["kernel"], h_s, keep, method=method, target=target)
    layers[i] = {"kernel": cur["kernel"][:, keep], "bias": cur["bias"][keep]}
    layers[i + 1] = {"kernel": new_next, "bias": nxt["bias"], "orig_kernel": nxt["kernel"], "orig_bias": nxt["bias"]}
    kept_all.append(keep)
    x_s, x_t = h_s[:, keep], x_t_next
  layers[-1] = {"kernel": layers[-1]["kernel"], "bias": layers[-1]["bias"]}
  return layers, kept_all
