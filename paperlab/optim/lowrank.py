"""Low-rank / subspace optimizers: GaLore-style projected state, FRUGAL, Online Subspace Descent, and WeLore's
low-rank extraction of trained weights.

Every matrix leaf ``G`` (shape ``(m, n)``; Flax Dense kernels are ``(in, out)``) is optimized in an
``r``-dimensional subspace spanned by the orthonormal columns of a basis ``B``. As in GaLore's ``std`` convention
the smaller dimension is projected: ``n <= m`` -> right projection ``low = G B`` (``B`` is ``n x r``), otherwise
left projection ``low = Bᵀ G`` (``B`` is ``m x r``). Non-matrix leaves (biases, norms) and leaves in
``full_rank_mask`` get the stateful optimizer on the full tensor, with a state of their own.

* GaLore: ``U = back(Opt(low))``, the residual ``G - back(low)`` is dropped.
* FRUGAL: ``U = back(Opt(low)) + StateFree(G - back(low))`` (signSGD or SGD on the residual), the projected
  leaves' state reset when the subspace changes; embeddings and heads stay full rank by default.
* Online Subspace Descent: ``B`` moves every step by an AdamW step on the online-PCA loss instead of an SVD.

Ranks, ``density``, ``update_proj_gap`` and the projection type fix array shapes or the refresh schedule: under
``optax.inject_hyperparams`` list them in ``static_args``; every other numeric hyperparameter is traceable.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_choice, check_non_negative, check_positive, check_range
from paperlab._tree import leaf_paths

__all__ = [
    "subspace_rank",
    "galore_basis",
    "to_subspace",
    "from_subspace",
    "split_gradient",
    "online_pca_loss",
    "online_pca_step",
    "FULL_RANK_PATTERN",
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
  """One SGD step on :func:`online_pca_loss` (Liang et al., "Memory-Efficient LLM Training with Online Subspace
  Descent", arXiv:2408.12857, Alg. 1 with SGD on ``P``, the official ``continuous_sgd``); the optimizer's default
  moves ``P`` with AdamW instead (see :func:`scale_by_online_subspace_descent`)."""
  return basis - lr * jax.grad(online_pca_loss)(basis, g)


# ------------------------------------------------------------------------------------------------ the shared engine

# Leaves kept full rank by FRUGAL's default: embeddings, positional tables and output heads, matched on a path segment.
FULL_RANK_PATTERN = (r"(^|/)(embed\w*|embedding\w*|wte|wpe|pos|pos_embed\w*|position\w*|lm_head|head|unembed\w*"
                     r"|logits?|classifier)(/|$)")


class LowRankState(NamedTuple):
  """State of the subspace optimizers.

  ``basis`` holds the ``d x r`` basis of each projected leaf (``None`` for full-rank leaves); ``inner_state`` is the
  state-full optimizer on the low-rank coordinates of the projected leaves (``None`` elsewhere), ``full_state`` the
  same optimizer on the full-rank leaves (``None`` at projected ones), so FRUGAL can reset the first without touching
  the second; ``proj_state`` is Online Subspace Descent's projector-optimizer state (``None`` otherwise).
  """
  count: chex.Array
  basis: Any
  inner_state: Any
  full_state: Any
  proj_state: Any
  key: jax.Array


def _as_key(key: Any) -> jax.Array:
  """A typed PRNG key from a seed, a typed key or a legacy ``uint32[2]`` key (traced seeds are fine)."""
  if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if jnp.shape(key) == (2,):
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
  return jax.random.key(key)


def _full_rank_flags(params: Any, treedef: Any, full_rank_mask: Any) -> list[bool]:
  """Per leaf (``jax.tree.leaves`` order): True where ``full_rank_mask`` keeps the leaf out of the subspace."""
  n = treedef.num_leaves
  if full_rank_mask is None:
    return [False] * n
  if isinstance(full_rank_mask, str):
    pattern = re.compile(full_rank_mask)
    return [pattern.search(p) is not None for p in leaf_paths(params)]
  mask = full_rank_mask(params) if callable(full_rank_mask) else full_rank_mask
  try:
    flags = treedef.flatten_up_to(mask)
  except (ValueError, TypeError) as e:
    raise ValueError(f"full_rank_mask must be None, a regex string, a pytree of booleans shaped like the params or a "
                     f"callable returning one; got a tree that does not match the params: {e}") from None
  return [bool(f) for f in flags]


def _leaf_ranks(params: Any, full_rank_mask: Any, rank: int | None, density: float) -> tuple[list, Any]:
  """``(ranks, treedef)``: the subspace rank of every projected leaf (2-D, not full rank), ``None`` elsewhere."""
  leaves, treedef = jax.tree.flatten(params)
  flags = _full_rank_flags(params, treedef, full_rank_mask)
  ranks = [subspace_rank(p.shape, rank, density) if jnp.ndim(p) == 2 and not f else None
           for p, f in zip(leaves, flags)]
  return ranks, treedef


def _basis_shape(shape: tuple[int, int], r: int) -> tuple[int, int]:
  return (shape[1] if _right(shape) else shape[0], r)


def _low_shape(shape: tuple[int, int], r: int) -> tuple[int, int]:
  return (shape[0], r) if _right(shape) else (r, shape[1])


def _tree_where(cond: jax.Array, a: Any, b: Any) -> Any:
  return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _low_rank(*, rank: int | None, density: float, update_proj_gap: int, method: str,
              inner: optax.GradientTransformation, state_free: optax.GradientTransformation | None,
              reset_on_update: bool, scale: Any, full_rank_mask: Any, key: Any,
              proj_optimizer: optax.GradientTransformation | None) -> optax.GradientTransformation:
  """Engine shared by GaLore, FRUGAL and Online Subspace Descent.

  Projected leaves: ``U = scale · back(Inner(low)) [+ StateFree(G - back(low))]``; full-rank leaves (non-matrices,
  ``full_rank_mask``) get ``Inner`` on the full tensor with their own state. With ``proj_optimizer is None`` the basis
  is recomputed at steps ``0, T, 2T, ...`` (and, with ``reset_on_update``, only the projected leaves' inner state is
  re-initialised there); otherwise the basis is the SVD basis at step 0 and afterwards moves by ``proj_optimizer``
  on the online-PCA loss, after it has been used to project the current gradient.
  """

  def unflatten(treedef, xs):
    return jax.tree.unflatten(treedef, xs)

  def init_fn(params):
    ranks, treedef = _leaf_ranks(params, full_rank_mask, rank, density)
    leaves = treedef.flatten_up_to(params)
    basis = [None if r is None else jnp.zeros(_basis_shape(p.shape, r), p.dtype) for p, r in zip(leaves, ranks)]
    low = [None if r is None else jnp.zeros(_low_shape(p.shape, r), p.dtype) for p, r in zip(leaves, ranks)]
    full = [p if r is None else None for p, r in zip(leaves, ranks)]
    basis_tree = unflatten(treedef, basis)
    proj_state = None if proj_optimizer is None else proj_optimizer.init(basis_tree)
    return LowRankState(count=jnp.zeros([], jnp.int32), basis=basis_tree,
                        inner_state=inner.init(unflatten(treedef, low)),
                        full_state=inner.init(unflatten(treedef, full)), proj_state=proj_state,
                        key=_as_key(key))

  def update_fn(updates, state, params=None):
    del params
    ranks, treedef = _leaf_ranks(updates, full_rank_mask, rank, density)
    grads = treedef.flatten_up_to(updates)
    bases = treedef.flatten_up_to(state.basis)
    next_key, sub = jax.random.split(state.key)
    keys = jax.random.split(sub, max(1, len(grads)))
    proj_state = state.proj_state

    if proj_optimizer is None:
      refresh = state.count % update_proj_gap == 0
      basis = [None if r is None else jax.lax.cond(
          refresh, lambda g=g, r=r, k=k, b=b: galore_basis(g, r, method, k).astype(b.dtype), lambda b=b: b)
               for g, b, r, k in zip(grads, bases, ranks, keys)]
      stored = basis
    else:
      # Online Subspace Descent (official order): project G_t with P_t, then P_{t+1} = Opt_P(∇_P loss(P_t; G_t)).
      first = state.count == 0
      basis = [None if r is None else jax.lax.cond(
          first, lambda g=g, r=r, b=b: galore_basis(g, r, "svd").astype(b.dtype), lambda b=b: b)
               for g, b, r in zip(grads, bases, ranks)]
      pca_grads = [None if b is None else jax.grad(online_pca_loss)(b, g).astype(b.dtype)
                   for g, b in zip(grads, basis)]
      basis_tree = unflatten(treedef, basis)
      steps, moved_state = proj_optimizer.update(unflatten(treedef, pca_grads), state.proj_state, basis_tree)
      moved = optax.apply_updates(basis_tree, steps)
      # Step 0 only sets P_0 from the SVD; the official projector optimizer takes its first step at step 1.
      stored = treedef.flatten_up_to(_tree_where(first, basis_tree, moved))
      proj_state = _tree_where(first, state.proj_state, moved_state)

    low = [None if r is None else to_subspace(g, b) for g, b, r in zip(grads, basis, ranks)]
    full = [g if r is None else None for g, r in zip(grads, ranks)]
    inner_state = state.inner_state
    if reset_on_update:
      fresh = inner.init(jax.tree.map(jnp.zeros_like, unflatten(treedef, low)))
      inner_state = _tree_where(state.count % update_proj_gap == 0, fresh, inner_state)
    low_steps, inner_state = inner.update(unflatten(treedef, low), inner_state)
    full_steps, full_state = inner.update(unflatten(treedef, full), state.full_state)
    low_steps, full_steps = treedef.flatten_up_to(low_steps), treedef.flatten_up_to(full_steps)

    out = [f if r is None else scale * from_subspace(u, b, g.shape)
           for g, b, r, u, f in zip(grads, basis, ranks, low_steps, full_steps)]
    if state_free is not None:
      residual = unflatten(treedef, [None if r is None else split_gradient(g, b)[1]
                                     for g, b, r in zip(grads, basis, ranks)])
      free, _ = state_free.update(residual, state_free.init(residual))
      out = [o if f is None else o + f for o, f in zip(out, treedef.flatten_up_to(free))]
    out = [o.astype(g.dtype) for o, g in zip(out, grads)]
    return unflatten(treedef, out), LowRankState(
        count=optax.safe_int32_increment(state.count), basis=unflatten(treedef, stored), inner_state=inner_state,
        full_state=full_state, proj_state=proj_state, key=next_key)

  return optax.GradientTransformation(init_fn, update_fn)


_STATIC = "list it in optax.inject_hyperparams(..., static_args=...)"


def _check_common(rank, density, update_proj_gap):
  if rank is not None:
    if not isinstance(rank, int) or isinstance(rank, bool):
      raise TypeError(f"rank must be a positive Python int or None (it sets array shapes; {_STATIC}), got {rank!r}.")
    check_positive("rank", rank)
  if not isinstance(density, (int, float)) or isinstance(density, bool):
    raise TypeError(f"density must be a Python float in (0, 1] (it sets the subspace rank, an array shape; "
                    f"{_STATIC}), got {density!r}.")
  check_range("density", density, 0.0, 1.0, low_inclusive=False)
  if not isinstance(update_proj_gap, int) or isinstance(update_proj_gap, bool) or update_proj_gap < 1:
    raise ValueError(f"update_proj_gap must be a positive Python int ({_STATIC}), got {update_proj_gap!r}.")


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
    rank: subspace rank ``r`` (capped at ``min(m, n)``); static.
    update_proj_gap: ``T`` >= 1; static.
    scale: ``α`` (paper 0.25 for LLaMA pre-training; 1.0 is plain projection); traceable.
    base: stateful optimizer in the subspace (gradient-only, per-leaf; default ``optax.scale_by_adam()``).
    full_rank_mask: leaves that skip the projection: a regex searched in each leaf's ``/``-joined path (e.g.
      :data:`FULL_RANK_PATTERN`), a pytree of booleans or a callable returning one. Default ``None``: every 2-D
      leaf is projected.

  Under ``optax.inject_hyperparams`` pass ``static_args=('rank', 'update_proj_gap')``: they fix array shapes or the
  refresh schedule; every other numeric argument is traceable (changeable between steps under ``jit``). A callable
  ``mask``/``full_rank_mask`` must be static too (``inject_hyperparams`` would call it as a schedule).
  """
  _check_common(rank, 0.25, update_proj_gap)
  check_positive("scale", scale)
  return _low_rank(rank=rank, density=0.25, update_proj_gap=update_proj_gap, method="svd",
                   inner=base or optax.scale_by_adam(), state_free=None, reset_on_update=False, scale=scale,
                   full_rank_mask=full_rank_mask, key=0, proj_optimizer=None)


def galore(learning_rate: ScalarOrSchedule = 1e-2, rank: int = 128, update_proj_gap: int = 200, scale: float = 0.25,
           b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, mask: Any = None,
           full_rank_mask: Any = None) -> optax.GradientTransformation:
  """GaLore-Adam with decoupled weight decay in the full space (Zhao et al., arXiv:2403.03507).

  Defaults are the paper's LLaMA/C4 pre-training setting as run by the official scripts: learning rate 0.01 with
  ``α = 0.25``, ``T = 200``, rank 128 (``--lr 0.01 --galore_scale 0.25 --update_proj_gap 200 --rank 128``; the
  FRUGAL README gives the same GaLore setting). ``scale=1.0`` is plain projection (``pytorch_optimizer.GaLore``).

  Under ``optax.inject_hyperparams`` pass ``static_args=('rank', 'update_proj_gap')``: they fix array shapes or the
  refresh schedule; every other numeric argument is traceable (changeable between steps under ``jit``). A callable
  ``mask``/``full_rank_mask`` must be static too (``inject_hyperparams`` would call it as a schedule).
  """
  base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  return _alias(scale_by_galore(rank, update_proj_gap, scale, base, full_rank_mask), learning_rate, weight_decay, mask)


# ----------------------------------------------------------------------------------------------------------- FRUGAL


def scale_by_frugal(density: float = 0.25, update_proj_gap: int = 200, projection: str = "svd", *,
                    rank: int | None = None, state_full: optax.GradientTransformation | None = None,
                    state_free: optax.GradientTransformation | None = None, state_free_scale: float = 1.0,
                    full_rank_mask: Any = FULL_RANK_PATTERN, reset_state: bool = True,
                    key: jax.Array | int = 0) -> optax.GradientTransformation:
  """FRUGAL: a stateful optimizer in a subspace plus a state-free one on the orthogonal residual.

  Zmushko et al., "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
  arXiv:2411.07837, Alg. 1: every ``T = update_proj_gap`` steps pick a subspace (``projection``: ``'svd'`` of the
  gradient, ``'random'`` orthonormal, or ``'columns'``: random coordinates); split ``G = G_sf + G_free``;
  ``U = P · StateFull(Pᵀ G) + c · StateFree(G_free)``. Defaults: density ``ρ = 0.25``, ``T = 200``, state-full
  Adam, state-free signSGD (``optax.scale_by_sign``), ``c = 1``. ``density = 1`` gives the state-full optimizer.

  Follows the official code (github.com/philip-zmushko/FRUGAL, ``frugal/proj_optimizer_templates.py`` and
  ``frugal/adamw.py`` at commit c7ebe4c2): at each refresh only the *projected* matrices' state-full state (moments
  and step count) is re-initialised (``reset_statistics=True``); every other leaf keeps one uninterrupted Adam.
  Which leaves are projected: the official ``prepare_proj_params`` projects the weights of ``nn.Linear`` modules
  inside attention/MLP blocks and keeps embeddings (``nn.Embedding``), the output head (``lm_head``) and norms on
  AdamW. A parameter pytree carries no module types, so the default here projects every 2-D leaf except those
  whose ``/``-joined path has a segment matching :data:`FULL_RANK_PATTERN` (``embed*``, ``embedding*``, ``wte``,
  ``wpe``, ``pos``, ``pos_embed*``, ``position*``, ``lm_head``, ``head``, ``unembed*``, ``logit(s)``,
  ``classifier``); non-matrix leaves (biases, norms, convolution kernels) are always full rank. A 2-D leaf outside
  attention/MLP that the official list would leave alone is projected here unless the mask names it; a bare
  array (empty path) is projected.

  Args:
    density: subspace fraction ``ρ`` in (0, 1] of the projected dimension (ignored when ``rank`` is given); static.
    update_proj_gap: ``T`` >= 1; static.
    projection: ``'svd'``, ``'random'`` or ``'columns'``; static.
    rank: explicit subspace rank; static.
    state_full: gradient-only, per-leaf transformation on the subspace (default ``optax.scale_by_adam()``).
    state_free: stateless transformation on the residual (default ``optax.scale_by_sign()``; use
      ``optax.identity()`` for SGD).
    state_free_scale: ``c``, the residual's step relative to the learning rate (official ``inactive_lr_scale``);
      traceable.
    full_rank_mask: leaves kept full rank: a regex (default :data:`FULL_RANK_PATTERN`), a pytree of booleans, a
      callable returning one, or ``None`` to project every 2-D leaf.
    reset_state: re-initialise the projected leaves' state at each refresh (official ``reset_statistics``).
    key: PRNG key/seed for random subspaces.

  Under ``optax.inject_hyperparams`` pass ``static_args=('density', 'update_proj_gap', 'projection', 'rank')``: they
  fix array shapes or the refresh schedule; every other numeric argument is traceable (changeable between steps under
  ``jit``). A callable ``mask``/``full_rank_mask`` must be static too (``inject_hyperparams`` would call it as a
  schedule).
  """
  _check_common(rank, density, update_proj_gap)
  check_choice("projection", projection, ("svd", "random", "columns"))
  check_non_negative("state_free_scale", state_free_scale)
  free = state_free or optax.scale_by_sign()
  if not (isinstance(state_free_scale, (int, float)) and state_free_scale == 1.0):
    free = optax.chain(free, optax.scale(state_free_scale))
  return _low_rank(rank=rank, density=density, update_proj_gap=update_proj_gap, method=projection,
                   inner=state_full or optax.scale_by_adam(), state_free=free, reset_on_update=bool(reset_state),
                   scale=1.0, full_rank_mask=full_rank_mask, key=key, proj_optimizer=None)


def frugal(learning_rate: ScalarOrSchedule = 1e-3, density: float = 0.25, update_proj_gap: int = 200,
           projection: str = "svd", *, rank: int | None = None, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8, state_free: optax.GradientTransformation | None = None, state_free_scale: float = 1.0,
           weight_decay: float = 0.0, mask: Any = None, full_rank_mask: Any = FULL_RANK_PATTERN,
           reset_state: bool = True, key: jax.Array | int = 0) -> optax.GradientTransformation:
  """FRUGAL with AdamW as the state-full part (Zmushko et al., arXiv:2411.07837); see :func:`scale_by_frugal`.

  Defaults are the paper's pre-training setting (official ``scripts/benchmark_c4``): learning rate ``1e-3``,
  ``ρ = 0.25``, ``T = 200``, Adam ``(0.9, 0.999, 1e-8)``, signSGD on the residual at the same learning rate,
  weight decay 0. Decoupled weight decay ``p ← p (1 - lr·wd)`` applies to every leaf, as in the official AdamW.

  Under ``optax.inject_hyperparams`` pass ``static_args=('density', 'update_proj_gap', 'projection', 'rank')``: they
  fix array shapes or the refresh schedule; every other numeric argument is traceable (changeable between steps under
  ``jit``). A callable ``mask``/``full_rank_mask`` must be static too (``inject_hyperparams`` would call it as a
  schedule).
  """
  inner = scale_by_frugal(density, update_proj_gap, projection, rank=rank,
                          state_full=optax.scale_by_adam(b1=b1, b2=b2, eps=eps), state_free=state_free,
                          state_free_scale=state_free_scale, full_rank_mask=full_rank_mask, reset_state=reset_state,
                          key=key)
  return _alias(inner, learning_rate, weight_decay, mask)


# ------------------------------------------------------------------------------------------ Online Subspace Descent


def scale_by_online_subspace_descent(rank: int = 128, update_proj_gap: int = 200,
                                     proj_lr: ScalarOrSchedule | None = None, proj_weight_decay: float = 0.01,
                                     scale: float = 1.0,
                                     base: optax.GradientTransformation | None = None,
                                     proj_optimizer: optax.GradientTransformation | None = None,
                                     full_rank_mask: Any = None) -> optax.GradientTransformation:
  """Online Subspace Descent: GaLore's subspace state, with the projector moved every step by online PCA.

  Liang et al., "Memory-Efficient LLM Training with Online Subspace Descent", arXiv:2408.12857, Alg. 1, as in the
  official code (github.com/kyleliang919/Online-Subspace-Descent, ``galore_torch/galore_projector.py``, proj_type
  ``continuous``, commit e694775): ``P_0`` is the SVD basis of the first gradient; at every step ``t`` the gradient
  is projected with the current ``P_t`` (``Ŝ_t = Opt(P_tᵀ G_t)``, ``U = α P_t Ŝ_t``) and then
  ``P_{t+1} = AdamW(∇_P ||Ĝ_t - P Pᵀ Ĝ_t||²_F)`` with ``Ĝ_t = G_t / ||G_t||_F``, learning rate
  ``1 / update_proj_gap`` and weight decay 0.01 (``torch.optim.AdamW`` defaults, betas (0.9, 0.999), eps 1e-8).
  ``P`` takes its first step at step 1 (the official optimizer has no gradient at step 0). The official code also
  multiplies the projector learning rate by the main schedule's ratio ``lr_t / lr_0``; pass ``proj_lr`` as a
  schedule to reproduce a decaying one.

  Args:
    rank: subspace rank; static.
    update_proj_gap: sets the default projector learning rate ``1 / update_proj_gap``; static.
    proj_lr: projector learning rate (float or schedule; default ``1 / update_proj_gap``); traceable.
    proj_weight_decay: AdamW weight decay on ``P`` (default 0.01); traceable.
    scale: ``α`` on the projected-back update (official ``--galore_scale``, default 1.0); traceable.
    base: stateful optimizer in the subspace (default ``optax.scale_by_adam()``).
    proj_optimizer: replaces the AdamW on ``P`` (e.g. ``optax.sgd(0.1)`` for plain SGD on the online-PCA loss,
      the official ``continuous_sgd``); ``proj_lr``/``proj_weight_decay`` are then unused.
    full_rank_mask: leaves that skip the projection (regex, pytree of booleans or callable); default every 2-D leaf
      is projected.

  Under ``optax.inject_hyperparams`` pass ``static_args=('rank', 'update_proj_gap')``: they fix array shapes or the
  refresh schedule; every other numeric argument is traceable (changeable between steps under ``jit``). A callable
  ``mask``/``full_rank_mask`` must be static too (``inject_hyperparams`` would call it as a schedule).
  """
  _check_common(rank, 0.25, update_proj_gap)
  check_positive("scale", scale)
  check_non_negative("proj_weight_decay", proj_weight_decay)
  if proj_lr is not None and not callable(proj_lr):
    check_positive("proj_lr", proj_lr)
  if proj_optimizer is None:
    lr = 1.0 / update_proj_gap if proj_lr is None else proj_lr
    proj_optimizer = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=proj_weight_decay)
  return _low_rank(rank=rank, density=0.25, update_proj_gap=update_proj_gap, method="svd",
                   inner=base or optax.scale_by_adam(), state_free=None, reset_on_update=False, scale=scale,
                   full_rank_mask=full_rank_mask, key=0, proj_optimizer=proj_optimizer)


def online_subspace_descent(learning_rate: ScalarOrSchedule = 1e-2, rank: int = 128, update_proj_gap: int = 200,
                            proj_lr: ScalarOrSchedule | None = None, proj_weight_decay: float = 0.01,
                            scale: float = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                            weight_decay: float = 0.0, mask: Any = None, proj_optimizer: Any = None,
                            full_rank_mask: Any = None) -> optax.GradientTransformation:
  """Online Subspace Descent with Adam in the subspace (Liang et al., arXiv:2408.12857); see
  :func:`scale_by_online_subspace_descent`. Learning rate 0.01 and ``T = 200`` are the official README's LLaMA-60M
  command (which also sets ``--galore_scale 0.25``; ``scale`` defaults to the argument parser's 1.0)."""
  base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)
  inner = scale_by_online_subspace_descent(rank, update_proj_gap, proj_lr, proj_weight_decay, scale, base,
                                           proj_optimizer, full_rank_mask)
  return _alias(inner, learning_rate, weight_decay, mask)


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
