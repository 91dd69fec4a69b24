"""Low-rank / subspace optimizers: GaLore-style projected state, FRUGAL, Online Subspace Descent, and WeLore's
low-rank extraction of trained weights.

Every matrix leaf ``G`` (shape ``(m, n)``; Flax Dense kernels are ``(in, out)``) is optimized in an
``r``-dimensional subspace spanned by the orthonormal columns of a basis ``B``. As in GaLore's ``std`` convention
the smaller dimension is projected: ``n <= m`` -> right projection ``low = G B`` (``B`` is ``n x r``), otherwise
left projection ``low = Bᵀ G`` (``B`` is ``m x r``). Non-matrix leaves (biases, norms) and leaves in
``full_rank_mask`` get the stateful optimizer on the full tensor.

* GaLore: ``U = back(Opt(low))``, the residual ``G - back(low)`` is dropped.
* FRUGAL: ``U = back(Opt(low)) + StateFree(G - back(low))`` (signSGD or SGD on the residual), state reset when the
  subspace changes.
* Online Subspace Descent: ``B`` moves every step by a gradient step on the online-PCA loss instead of an SVD.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_choice, check_non_negative, check_positive, check_range

__all__ = [
    "subspace_rank",
    "galore_basis",
    "to_subspace",
    "from_subspace",
    "split_gradient",
    "online_pca_loss",
    "online_pca_step",
    "LowRankState",
    "scale_by_galore",
    "galore",
    "scale_by_frugal",
    "frugal",
    "scale_by_online_subspace_descent",
    "online_subspace_descent",
    "stable_rank",
    "welore_ranks",
    "low_rank_factorize",
]

ScalarOrSchedule = float | jax.Array | Callable[[chex.Numeric], chex.Numeric]


# ------------------------------------------------------------------------------------------------ projection algebra


def _right(shape: tuple[int, ...]) -> bool:
  """GaLore ``std``: project the smaller dimension (columns when ``m >= n``)."""
  return shape[0] >= shape[1]


def subspace_rank(shape: tuple[int, int], rank: int | None = None, density: float = 0.25) -> int:
  """``rank`` capped at the projected dimension, or ``max(1, round(density * min(m, n)))`` when ``rank is None``."""
  d = min(shape)
  return min(rank, d) if rank is not None else max(1, int(round(density * d)))


def galore_basis(g: jax.Array, rank: int, method: str = "svd", key: jax.Array | None = None) -> jax.Array:
  """Orthonormal basis ``B`` (``d x r``) of the projected dimension ``d = min(m, n)`` of a matrix gradient.

  ``'svd'``: top-``r`` singular vectors of ``G`` (GaLore, Zhao et al., arXiv:2403.03507, Alg. 2: ``V[:, :r]``
  for right projection, ``U[:, :r]`` for left); ``'random'``: a Haar-random orthonormal basis (QR of a Gaussian);
  ``'columns'``: ``r`` random coordinates (one-hot columns, the blockwise/BAdam-style choice in FRUGAL).
  """
  check_choice("method", method, ("svd", "random", "columns"))
  right = _right(g.shape)
  d = g.shape[1] if right else g.shape[0]
  if method == "svd":
    u, _, vh = jnp.linalg.svd(g.astype(jnp.float32), full_matrices=False)
    basis = vh[:rank].T if right else u[:, :rank]
  else:
    if key is None:
      raise ValueError(f"method={method!r} needs a PRNG key.")
    if method == "random":
      basis, _ = jnp.linalg.qr(jax.random.normal(key, (d, rank), jnp.float32))
    else:
      idx = jax.random.choice(key, d, (rank,), replace=False)
      basis = jax.nn.one_hot(idx, d, dtype=jnp.float32).T
  return basis.astype(g.dtype)


def to_subspace(g: jax.Array, basis: jax.Array) -> jax.Array:
  """Low-rank coordinates: ``G B`` (right projection, ``m >= n``) or ``Bᵀ G`` (left)."""
  return g @ basis if _right(g.shape) else basis.T @ g


def from_subspace(low: jax.Array, basis: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Back to the full space: ``low Bᵀ`` (right) or ``B low`` (left)."""
  return low @ basis.T if _right(shape) else basis @ low


def split_gradient(g: jax.Array, basis: jax.Array) -> tuple[jax.Array, jax.Array]:
  """FRUGAL's split ``G = G_sf + G_free`` with ``G_sf`` the projection onto the subspace (Zmushko et al.,
  arXiv:2411.07837, Alg. 1). For an orthonormal basis ``<G_sf, G_free> = 0``."""
  g_sf = from_subspace(to_subspace(g, basis), basis, g.shape)
  return g_sf, g - g_sf


def online_pca_loss(basis: jax.Array, g: jax.Array) -> jax.Array:
  """``||G - P Pᵀ G||²_F / ||G||²_F`` on the projected side (Liang et al., arXiv:2408.12857, Sec. 3.2)."""
  h = g.T if _right(g.shape) else g  # rows of h live in the projected space
  residual = h - basis @ (basis.T @ h)
  return jnp.sum(jnp.square(residual)) / jnp.maximum(jnp.sum(jnp.square(h)), jnp.finfo(h.dtype).tiny)


def online_pca_step(basis: jax.Array, g: jax.Array, lr: float) -> jax.Array:
  """One gradient step on :func:`online_pca_loss` (Online Subspace Descent's projector update, Liang et al.,
  "Memory-Efficient LLM Training with Online Subspace Descent", arXiv:2408.12857, Alg. 1 with SGD on ``P``)."""
  return basis - lr * jax.grad(online_pca_loss)(basis, g)


# ------------------------------------------------------------------------------------------------ the shared engine


class LowRankState(NamedTuple):
  """State of the subspace optimizers: step count, per-leaf basis (``None`` for full-rank leaves), the stateful
  optimizer's state (on low-rank coordinates) and a PRNG key for random subspaces."""
  count: chex.Array
  basis: Any
  inner_state: Any
  key: jax.Array


def _matrix_leaves(params: Any, full_rank_mask: Any) -> Any:
  """True where a leaf is projected: 2-D and not forced full rank."""
  is_matrix = jax.tree.map(lambda p: jnp.ndim(p) == 2, params)
  if full_rank_mask is None:
    return is_matrix
  mask = full_rank_mask(params) if callable(full_rank_mask) else full_rank_mask
  return jax.tree.map(lambda a, b: bool(a) and not bool(b), is_matrix, mask)


def _low_rank(rank: int | None, density: float, update_proj_gap: int, method: str, inner: optax.GradientTransformation,
              state_free: optax.GradientTransformation | None, reset_on_update: bool, scale: float,
              full_rank_mask: Any, key: jax.Array | int, online_lr: float | None) -> optax.GradientTransformation:
  if isinstance(key, int):
    key = jax.random.key(key)

  def ranks(params):
    projected = _matrix_leaves(params, full_rank_mask)
    return jax.tree.map(lambda p, on: subspace_rank(p.shape, rank, density) if on else None, params, projected)

  def low_shape(p, r):
    return (p.shape[0], r) if _right(p.shape) else (r, p.shape[1])

  def to_low(g, b):
    return g if b is None else to_subspace(g, b)

  def init_fn(params):
    rk = ranks(params)
    is_none = lambda x: x is None
    basis = jax.tree.map(lambda p, r: None if r is None else jnp.zeros(
        ((p.shape[1] if _right(p.shape) else p.shape[0]), r), p.dtype), params, rk, is_leaf=is_none)
    lows = jax.tree.map(lambda p, r: p if r is None else jnp.zeros(low_shape(p, r), p.dtype), params, rk,
                        is_leaf=is_none)
    return LowRankState(count=jnp.zeros([], jnp.int32), basis=basis, inner_state=inner.init(lows), key=key)

  def update_fn(updates, state, params=None):
    del params
    rk = ranks(updates)
    is_none = lambda x: x is None
    refresh = state.count % update_proj_gap == 0
    next_key, sub = jax.random.split(state.key)
    leaf_keys = iter(jax.random.split(sub, max(1, len(jax.tree.leaves(updates)))))

    def new_basis(g, b, r):
      if r is None:
        return None
      k = next(leaf_keys)
      fresh = lambda: galore_basis(g, r, method, k)
      if online_lr is None:
        return jax.lax.cond(refresh, fresh, lambda: b)
      # Online Subspace Descent: an SVD basis at the first step, then one online-PCA step per step.
      return jax.lax.cond(state.count == 0, fresh, lambda: online_pca_step(b, g, online_lr).astype(b.dtype))

    basis = jax.tree.map(new_basis, updates, state.basis, rk, is_leaf=is_none)
    lows = jax.tree.map(to_low, updates, basis, is_leaf=is_none)
    inner_state = state.inner_state
    if reset_on_update:
      fresh_state = inner.init(jax.tree.map(jnp.zeros_like, lows))
      inner_state = jax.tree.map(lambda a, b: jnp.where(refresh, a, b), fresh_state, inner_state)
    low_updates, inner_state = inner.update(lows, inner_state)
    out = jax.tree.map(lambda u, b, g: u if b is None else scale * from_subspace(u, b, g.shape),
                       low_updates, basis, updates, is_leaf=is_none)
    if state_free is not None:
      residual = jax.tree.map(lambda g, b: jnp.zeros_like(g) if b is None else split_gradient(g, b)[1],
                              updates, basis, is_leaf=is_none)
      free, _ = state_free.update(residual, state_free.init(residual))
      out = jax.tree.map(lambda a, f: (a + f).astype(a.dtype), out, free)
    out = jax.tree.map(lambda u, g: u.astype(g.dtype), out, updates)
    return out, LowRankState(count=optax.safe_int32_increment(state.count), basis=basis, inner_state=inner_state,
                             key=next_key)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_common(rank, density, update_proj_gap):
  if rank is not None:
    if not isinstance(rank, int) or isinstance(rank, bool):
      raise TypeError(f"rank must be a positive int or None, got {rank!r}.")
    check_positive("rank", rank)
  check_range("density", density, 0.0, 1.0, low_inclusive=False)
  if not isinstance(update_proj_gap, int) or update_proj_gap < 1:
    raise ValueError(f"update_proj_gap must be a positive int, got {update_proj_gap!r}.")


def _alias(direction, learning_rate, weight_decay, mask):
  if not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  check_non_negative("weight_decay", weight_decay)
  # A concrete zero skips the decay (and its need for params); a traced value (vmapped sweep) always decays.
  no_decay = isinstance(weight_decay, (int, float)) and weight_decay == 0
  decay = [] if no_decay else [optax.add_decayed_weights(weight_decay, mask)]
  return optax.chain(direction, *decay, optax.scale_by_learning_rate(learning_rate))


# ----------------------------------------------------------------------------------------------------------- GaLore


def scale_by_galore(rank: int = 128, update_proj_gap: int = 200, scale: float = 1.0,
                    base: optax.GradientTransformation | None = None, full_rank_mask: Any = None
                    ) -> optax.GradientTransformation:
  """GaLore: the optimizer state lives in a low-rank gradient subspace refreshed by SVD every ``update_proj_gap``.

  Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", arXiv:2403.03507,
  Alg. 2: ``R_t = P_tᵀ G_t`` (projected side chosen as in the ``std`` projection type of the reference code and
  ``pytorch_optimizer``), ``N_t = Adam(R_t)``, ``G̃_t = α P_t N_t``; ``P_t`` from the SVD of ``G_t`` at steps
  ``0, T, 2T, ...``. The residual ``G - P Pᵀ G`` is dropped and the Adam state is kept across refreshes, as in the
  paper. ``optax.contrib.scale_by_galore`` projects the *other* side (``reverse_std``); this one follows the paper.

  Args:
    rank: subspace rank ``r`` (capped at ``min(m, n)``).
    update_proj_gap: ``T`` >= 1.
    scale: ``α`` (paper 0.25 for LLaMA pre-training; 1.0 is plain projection).
    base: stateful optimizer in the subspace (gradient-only; default ``optax.scale_by_adam()``).
    full_rank_mask: optional pytree/callable of booleans: True leaves skip the projection.
  """
  _check_common(rank, 0.25, update_proj_gap)
  check_positive("scale", scale)
  return _low_rank(rank, 0.25, update_proj_gap, "svd", base or optax.scale_by_adam(), None, False, scale,
                   full_rank_mask, 0, None)


def galore(learning_rate: ScalarOrSchedule, rank: int = 128, update_proj_gap: int = 200, scale: float = 1.0,
           b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, mask: Any = None,
           full_rank_mask: Any = None) -> optax.GradientTransformation:
  """GaLore-Adam with decoupled weight decay in the full space (Zhao et al., arXiv:2403.03507)."""
  base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  return _alias(scale_by_galore(rank, update_proj_gap, scale, base, full_rank_mask), learning_rate, weight_decay, mask)


# ----------------------------------------------------------------------------------------------------------- FRUGAL


def scale_by_frugal(density: float = 0.25, update_proj_gap: int = 200, projection: str = "svd", *,
                    rank: int | None = None, state_full: optax.GradientTransformation | None = None,
                    state_free: optax.GradientTransformation | None = None, state_free_scale: float = 1.0,
                    full_rank_mask: Any = None, key: jax.Array | int = 0) -> optax.GradientTransformation:
  """FRUGAL: a stateful optimizer in a subspace plus a state-free one on the orthogonal residual.

  Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
  arXiv:2411.07837, Alg. 1: every ``T = update_proj_gap`` steps pick a subspace (``projection``: ``'svd'`` of the
  gradient, ``'random'`` orthonormal, or ``'columns'``: random coordinates); split ``G = G_sf + G_free``;
  ``U = P · StateFull(Pᵀ G) + c · StateFree(G_free)`` with the state-full state reset when the subspace changes.
  Defaults: density ``ρ = 0.25``, state-full Adam, state-free signSGD (``optax.scale_by_sign``), ``c = 1``.
  ``density = 1`` gives the state-full optimizer; the state-free part alone is the ``ρ -> 0`` limit. Non-matrix
  leaves and ``full_rank_mask`` leaves (embeddings, norms, heads in the paper) are always state-full.

  Args:
    density: subspace fraction ``ρ`` in (0, 1] of the projected dimension (ignored when ``rank`` is given).
    update_proj_gap: ``T`` >= 1.
    projection: ``'svd'``, ``'random'`` or ``'columns'``.
    rank: explicit subspace rank.
    state_full: gradient-only transformation on the subspace (default ``optax.scale_by_adam()``).
    state_free: stateless transformation on the residual (default ``optax.scale_by_sign()``; use
      ``optax.identity()`` for SGD).
    state_free_scale: ``c``, the residual's step relative to the learning rate.
    full_rank_mask: booleans (pytree or callable): True leaves skip the split.
    key: PRNG key/seed for random subspaces.
  """
  _check_common(rank, density, update_proj_gap)
  check_choice("projection", projection, ("svd", "random", "columns"))
  check_non_negative("state_free_scale", state_free_scale)
  free = state_free or optax.scale_by_sign()
  if state_free_scale != 1.0:
    free = optax.chain(free, optax.scale(state_free_scale))
  return _low_rank(rank, density, update_proj_gap, projection, state_full or optax.scale_by_adam(), free, True, 1.0,
                   full_rank_mask, key, None)


def frugal(learning_rate: ScalarOrSchedule, density: float = 0.25, update_proj_gap: int = 200,
           projection: str = "svd", *, rank: int | None = None, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8, state_free: optax.GradientTransformation | None = None, state_free_scale: float = 1.0,
           weight_decay: float = 0.0, mask: Any = None, full_rank_mask: Any = None,
           key: jax.Array | int = 0) -> optax.GradientTransformation:
  """FRUGAL with AdamW as the state-full part (Zmushko et al., arXiv:2411.07837); see :func:`scale_by_frugal`."""
  inner = scale_by_frugal(density, update_proj_gap, projection, rank=rank,
                          state_full=optax.scale_by_adam(b1=b1, b2=b2, eps=eps), state_free=state_free,
                          state_free_scale=state_free_scale, full_rank_mask=full_rank_mask, key=key)
  return _alias(inner, learning_rate, weight_decay, mask)


# ------------------------------------------------------------------------------------------ Online Subspace Descent


def scale_by_online_subspace_descent(rank: int = 128, proj_lr: float = 0.1,
                                     base: optax.GradientTransformation | None = None,
                                     full_rank_mask: Any = None) -> optax.GradientTransformation:
  """Online Subspace Descent: GaLore's subspace state, with the projector moved every step by online PCA.

  Liang et al., "Memory-Efficient LLM Training with Online Subspace Descent", arXiv:2408.12857, Alg. 1:
  ``Ŝ_t = Opt(P_tᵀ G_t)``, ``W ← W - η P_t Ŝ_t`` and ``P_{t+1} = P_t - η_P ∇_P ||G_t - P Pᵀ G_t||²`` (here the
  loss is normalised by ``||G_t||²`` so ``proj_lr`` is scale free, and plain SGD updates ``P``). ``P_0`` is the
  SVD basis of the first gradient.

  Args:
    rank: subspace rank.
    proj_lr: ``η_P > 0``.
    base: stateful optimizer in the subspace (default ``optax.scale_by_adam()``).
    full_rank_mask: booleans: True leaves are not projected.
  """
  _check_common(rank, 0.25, 1)
  check_positive("proj_lr", proj_lr)
  return _low_rank(rank, 0.25, 1, "svd", base or optax.scale_by_adam(), None, False, 1.0, full_rank_mask, 0, proj_lr)


def online_subspace_descent(learning_rate: ScalarOrSchedule, rank: int = 128, proj_lr: float = 0.1, b1: float = 0.9,
                            b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, mask: Any = None,
                            full_rank_mask: Any = None) -> optax.GradientTransformation:
  """Online Subspace Descent with Adam in the subspace (Liang et al., arXiv:2408.12857)."""
  base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  return _alias(scale_by_online_subspace_descent(rank, proj_lr, base, full_rank_mask), learning_rate, weight_decay,
                mask)


# ------------------------------------------------------------------------------------------------------------ WeLore


def stable_rank(w: jax.Array) -> jax.Array:
  """``||W||_F² / ||W||_2²`` (a smooth rank measure used by WeLore, Jaiswal et al., arXiv:2407.11239)."""
  s = jnp.linalg.svd(w.astype(jnp.float32), compute_uv=False)
  return jnp.sum(jnp.square(s)) / jnp.maximum(jnp.square(s[0]), jnp.finfo(jnp.float32).tiny)


def welore_ranks(params: Any, target_ratio: float = 0.5, filter_fn: Callable[[jax.Array], bool] | None = None
                 ) -> Any:
  """Non-uniform per-matrix ranks from one global threshold on normalised singular values (host-side).

  Jaiswal et al., "From GaLore to WeLore: How Low-Rank Weights Non-uniformly Emerge from Low-Rank Gradients",
  arXiv:2407.11239, Sec. 4: with ``σ_i / σ_max`` per matrix, a single threshold ``τ`` gives
  ``k_l = #{σ_i / σ_max >= τ}``; ``τ`` is the smallest value whose factorised parameter count
  ``Σ_l min(k_l (m_l + n_l), m_l n_l)`` is at most ``target_ratio`` times the dense count of the selected
  matrices. Returns a pytree of ints (``None`` for unselected leaves; ``k_l`` with ``k_l (m+n) >= m n`` means the
  matrix stays dense, an "N-LRC").

  Args:
    params: pytree of weights.
    target_ratio: kept fraction of the selected matrices' parameters, in (0, 1].
    filter_fn: which leaves to consider (default: 2-D leaves).
  """
  import numpy as np

  check_range("target_ratio", target_ratio, 0.0, 1.0, low_inclusive=False)
  filter_fn = filter_fn or (lambda w: jnp.ndim(w) == 2)
  leaves, treedef = jax.tree.flatten(params)
  spectra = [np.asarray(jnp.linalg.svd(jnp.asarray(w, jnp.float32), compute_uv=False)) if filter_fn(w) else None
             for w in leaves]
  dense = sum(np.prod(np.shape(w)) for w, s in zip(leaves, spectra) if s is not None)
  if dense == 0:
    raise ValueError("welore_ranks found no matrix to factorise (check filter_fn).")

  def count(tau):
    ks = [None if s is None else int(np.sum(s / max(s[0], 1e-30) >= tau)) for s in spectra]
    total = sum(min(k * (w.shape[0] + w.shape[1]), np.prod(w.shape)) for k, w in zip(ks, leaves) if k is not None)
    return ks, total

  candidates = sorted({float(v) for s in spectra if s is not None for v in s / max(s[0], 1e-30)})
  best = None
  for tau in candidates:  # ascending thresholds -> decreasing parameter count
    ks, total = count(tau)
    if total <= target_ratio * dense:
      best = ks
      break
  if best is None:
    best, _ = count(np.inf)
    best = [None if k is None else max(k, 1) for k in best]
  return jax.tree.unflatten(treedef, best)


def low_rank_factorize(params: Any, ranks: Any) -> tuple[Any, Any]:
  """Truncated-SVD factors ``(A, B)`` with ``W ≈ A @ B`` for leaves whose rank saves parameters.

  WeLore (Jaiswal et al., arXiv:2407.11239): a matrix with ``k (m + n) < m n`` becomes a low-rank component
  ``A = U_k Σ_k`` (``m x k``), ``B = V_kᵀ`` (``k x n``); by Eckart-Young the Frobenius error is
  ``sqrt(Σ_{i>k} σ_i²)``. Returns ``(factors, lrc_mask)``: ``factors`` holds ``(A, B)`` for low-rank leaves and the
  dense weight otherwise; ``lrc_mask`` is True for low-rank leaves.
  """
  def one(w, k):
    if k is None or k * (w.shape[0] + w.shape[1]) >= w.shape[0] * w.shape[1]:
      return (w, False)
    u, s, vh = jnp.linalg.svd(w.astype(jnp.float32), full_matrices=False)
    return ((u[:, :k] * s[:k]).astype(w.dtype), vh[:k].astype(w.dtype)), True

  pairs = jax.tree.map(one, params, ranks, is_leaf=lambda x: x is None)
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], bool)
  factors = jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair)
  mask = jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair)
  return factors, mask
