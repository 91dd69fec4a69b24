"""Data pruning by example difficulty: the self-supervised prototype metric and the keep-hard / keep-easy rule.

Sorscher et al., "Beyond neural scaling laws: beating power law scaling via data pruning", NeurIPS 2022,
arXiv:2206.14486. The prototype metric (Sec. 6): k-means on (self-supervised) embeddings, and the difficulty of an
example is its cosine distance to the nearest centroid,

.. math:: s_i = \\min_j \\bigl(1 - \\cos(e_i, c_j)\\bigr).

The pruning rule (Sec. 2): keep a fraction ``f`` of the data, the hardest examples (largest score) when data are
abundant, the easiest when they are scarce. Any difficulty score fits :func:`prune`, e.g. the negative teacher
margin ``-|w_T . x|`` of the paper's perceptron theory.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from paperlab._checks import check_choice

__all__ = ["kmeans", "prototype_scores", "prune"]


def _check_embeddings(emb: chex.Array) -> jax.Array:
  emb = jnp.asarray(emb)
  if emb.ndim != 2:
    raise ValueError(f"emb must have shape (num_examples, dim), got shape {tuple(emb.shape)}.")
  if not jnp.issubdtype(emb.dtype, jnp.floating):
    raise TypeError(f"emb must be floating point, got dtype {emb.dtype}.")
  return emb


def _sq_distances(x: jax.Array, c: jax.Array) -> jax.Array:
  return jnp.sum(x * x, -1)[:, None] - 2.0 * x @ c.T + jnp.sum(c * c, -1)[None, :]


def kmeans(x: chex.Array, init_centroids: chex.Array, num_iters: int = 100) -> tuple[jax.Array, jax.Array]:
  """Lloyd's k-means from given centroids: assign each point to its nearest centroid, move each centroid to the
  mean of its points, ``num_iters`` times (a centroid with no point stays where it is).

  The algorithm of ``sklearn.cluster.KMeans(init=init_centroids, n_init=1, algorithm="lloyd")``. Works under
  ``jax.jit`` (``num_iters`` static) and ``jax.vmap``.

  Args:
    x: points ``(n, d)``.
    init_centroids: starting centroids ``(k, d)``.
    num_iters: Lloyd iterations (>= 1).

  Returns:
    ``(centroids (k, d), labels (n,) int32)``, the labels being the assignment to the returned centroids.
  """
  x = _check_embeddings(x)
  c0 = jnp.asarray(init_centroids, x.dtype)
  if c0.ndim != 2 or c0.shape[1] != x.shape[1]:
    raise ValueError(f"init_centroids must have shape (k, {x.shape[1]}), got {tuple(c0.shape)}.")
  if int(num_iters) < 1:
    raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}.")
  k = c0.shape[0]

  def step(c, _):
    onehot = jax.nn.one_hot(jnp.argmin(_sq_distances(x, c), -1), k, dtype=x.dtype)
    counts = onehot.sum(0)
    means = (onehot.T @ x) / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, c), None

  c, _ = jax.lax.scan(step, c0, None, length=int(num_iters))
  return c, jnp.argmin(_sq_distances(x, c), -1).astype(jnp.int32)


def prototype_scores(emb: chex.Array, k: int, *, key: jax.Array, num_iters: int = 100) -> jax.Array:
  """Self-supervised prototype difficulty: cosine distance of each embedding to its nearest k-means centroid.

  Sorscher et al. 2022, arXiv:2206.14486, Sec. 6: k-means (k clusters) on L2-normalised embeddings,
  :math:`s_i = \\min_j (1 - \\cos(e_i, c_j))`; a large score is a hard (atypical) example. Centroids start at ``k``
  distinct examples drawn with ``key``. Works under ``jax.jit`` with ``k`` and ``num_iters`` static.

  Args:
    emb: embeddings ``(n, d)`` (the paper uses SwAV features; any embedding works).
    k: number of prototypes, ``1 <= k <= n``.
    key: PRNG key of the initial centroids.
    num_iters: Lloyd iterations.

  Returns:
    float scores ``(n,)`` in ``[0, 2]``.
  """
  emb = _check_embeddings(emb)
  n = emb.shape[0]
  if not 1 <= int(k) <= n:
    raise ValueError(f"k must be an integer in [1, num_examples={n}], got {k!r}.")
  unit = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), jnp.finfo(emb.dtype).tiny)
  init = unit[jax.random.choice(key, n, (int(k),), replace=False)]
  centroids, _ = kmeans(unit, init, num_iters)
  centroids = centroids / jnp.maximum(jnp.linalg.norm(centroids, axis=-1, keepdims=True), jnp.finfo(emb.dtype).tiny)
  return jnp.min(1.0 - unit @ centroids.T, axis=-1)


def prune(scores: chex.Array, frac: float, keep: str = "hard") -> jax.Array:
  """Indices of the ``ceil(frac * n)`` examples kept by difficulty: the largest scores (``keep="hard"``) or the
  smallest (``keep="easy"``).

  Sorscher et al. 2022, arXiv:2206.14486, Sec. 2: keep hard examples when the total data are large, easy ones when
  they are small. ``frac`` is the kept fraction ``f`` of the paper. Ties are broken by the lower index (stable).
  Works under ``jax.jit`` with ``frac`` and ``keep`` static (the output length depends on them).

  Args:
    scores: difficulty ``(n,)``, larger = harder.
    frac: kept fraction in (0, 1].
    keep: ``"hard"`` or ``"easy"``.

  Returns:
    int32 indices ``(ceil(frac * n),)``, hardest (or easiest) first.
  """
  scores = jnp.asarray(scores)
  if scores.ndim != 1:
    raise ValueError(f"scores must have shape (num_examples,), got shape {tuple(scores.shape)}.")
  if not 0.0 < float(frac) <= 1.0:
    raise ValueError(f"frac must lie in (0, 1], got {frac!r}.")
  check_choice("keep", keep, ("hard", "easy"))
  m = max(1, math.ceil(float(frac) * scores.shape[0] - 1e-9))
  order = jnp.argsort(-scores if keep == "hard" else scores, stable=True)
  return order[:m].astype(jnp.int32)
