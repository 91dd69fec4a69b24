"""Loss landscapes along random, filter-normalized directions (Li et al., "Visualizing the Loss Landscape of Neural
Nets", arXiv:1712.09913).

The plots are ``f(alpha) = L(theta* + alpha delta)`` (Eq. 1 of Sec. 3) and ``f(alpha, beta) = L(theta* + alpha delta +
beta eta)`` (Eq. 2), with Gaussian directions rescaled by *filter normalization* (Sec. 4): each filter of the
direction gets the norm of the matching filter of ``theta*``, ``d_{i,j} <- d_{i,j} / |d_{i,j}| |theta_{i,j}|``.
Defaults follow the authors' code (tomgoldstein/loss-landscape, ``net_plotter.py`` at commit 02827f33):
``norm="filter"``, ``ignore="biasbn"`` (directions of 1-D parameters, biases and norm scales, set to 0; without it
they copy ``theta``), and ``1e-10`` added to the direction's filter norm.

A *filter* is one output unit: parameters are laid out the Flax way, ``(..., fan_in, fan_out)`` (Dense
``(in, out)``, Conv ``(H, W, in, out)``), so filter ``j`` is ``w[..., j]`` (PyTorch's ``w[j]``).

The 1-D interpolation between two solutions (Goodfellow et al.; Sec. 3 of the paper) is
:func:`paperlab.merge.interpolation_curve`, shared with linear mode connectivity, and not duplicated here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from paperlab._tree import check_same_structure, path_str

__all__ = ["random_direction", "normalize_direction", "landscape_1d", "landscape_2d", "trajectory_pca",
           "plot_landscape"]

PyTree = Any
NORMS = ("filter", "layer", "weight", None)
IGNORES = ("biasbn", None)


def _check_floating(params: PyTree, name: str) -> None:
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  if not leaves:
    raise ValueError(f"{name} must hold at least one array leaf, got an empty pytree.")
  for path, leaf in leaves:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(f"{name}: every leaf must be floating point, got {jnp.result_type(leaf)} at "
                      f"{path_str(path)!r}.")


def normalize_direction(direction: PyTree, params: PyTree, *, norm: str | None = "filter",
                        ignore: str | None = "biasbn") -> PyTree:
  """Rescale a direction to the scale of ``params`` (Li et al., arXiv:1712.09913, Sec. 4; ``net_plotter.py``'s
  ``normalize_directions_for_weights``).

  Args:
    direction: pytree shaped like ``params``.
    params: the reference point ``theta*``.
    norm: ``"filter"`` (each output unit ``d[..., j] * |theta[..., j]| / (|d[..., j]| + 1e-10)``, the paper's
      default), ``"layer"`` (each leaf ``d * |theta| / |d|``), ``"weight"`` (``d * theta`` elementwise) or ``None``.
    ignore: ``"biasbn"`` sets the direction of 1-D (and scalar) leaves -- biases, norm scales and shifts -- to 0,
      the paper's default; ``None`` sets it to ``theta`` itself (the code's alternative).

  Returns:
    The normalized direction, in each leaf's dtype.
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}.")
  if ignore not in IGNORES:
    raise ValueError(f"ignore must be one of {list(IGNORES)}, got {ignore!r}.")
  _check_floating(params, "params")
  check_same_structure([direction, params], ["direction", "params"])

  def one(d, w):
    d, w = jnp.asarray(d), jnp.asarray(w)
    if w.ndim <= 1:
      return jnp.zeros_like(d) if ignore == "biasbn" else w.astype(d.dtype)
    if norm == "filter":
      axes = tuple(range(w.ndim - 1))
      scale = jnp.sqrt(jnp.sum(jnp.square(w), axes, keepdims=True)) / (
          jnp.sqrt(jnp.sum(jnp.square(d), axes, keepdims=True)) + 1e-10)
      return (d * scale).astype(d.dtype)
    if norm == "layer":
      return (d * jnp.linalg.norm(w) / jnp.linalg.norm(d)).astype(d.dtype)
    if norm == "weight":
      return (d * w).astype(d.dtype)
    return d

  return jax.tree.map(one, direction, params)


def random_direction(key: jax.Array, params: PyTree, *, norm: str | None = "filter",
                     ignore: str | None = "biasbn") -> PyTree:
  """A Gaussian direction ``N(0, I)`` shaped like ``params``, normalized by :func:`normalize_direction` (Li et al.,
  arXiv:1712.09913, Sec. 4: "filter-wise normalized directions", the default; ``ignore="biasbn"``)."""
  _check_floating(params, "params")
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  raw = jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
                                     for k, x in zip(keys, leaves)])
  return normalize_direction(raw, params, norm=norm, ignore=ignore)


def _as_grid(name: str, values) -> jax.Array:
  values = jnp.asarray(values)
  if values.ndim != 1 or values.shape[0] < 1 or not jnp.issubdtype(values.dtype, jnp.floating):
    raise ValueError(f"{name} must be a non-empty 1-D float array of coordinates, got shape {values.shape} "
                     f"dtype {values.dtype}.")
  return values


def _shift(params: PyTree, directions: Sequence[PyTree], coords: jax.Array) -> PyTree:
  def move(w, *ds):
    acc = jnp.promote_types(jnp.result_type(w), jnp.float32)  # bf16/f16 weights move in f32, f64 stays f64
    step = sum(c.astype(acc) * d.astype(acc) for c, d in zip(coords, ds))
    return (w.astype(acc) + step).astype(jnp.result_type(w))

  return jax.tree.map(move, params, *directions)


def landscape_1d(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, direction: PyTree, alphas,
                 *, batch_size: int | None = 256) -> jax.Array:
  """``f(alpha) = L(theta* + alpha delta)`` on a grid (Li et al., arXiv:1712.09913, Eq. 1).

  Args:
    loss_fn: ``loss_fn(params) -> scalar`` (jittable; close over the evaluation data).
    params: ``theta*``.
    direction: ``delta`` (e.g. :func:`random_direction`), shaped like ``params``.
    alphas: 1-D grid (the paper plots ``[-1, 1]`` with 51 points).
    batch_size: grid points evaluated together (``jax.lax.map``; ``None``: all at once with ``vmap``).

  Returns:
    ``(len(alphas),)`` losses.
  """
  alphas = _as_grid("alphas", alphas)
  _check_floating(params, "params")
  check_same_structure([direction, params], ["direction", "params"])
  return jax.lax.map(lambda a: loss_fn(_shift(params, [direction], [a])), alphas,
                     batch_size=alphas.shape[0] if batch_size is None else batch_size)


def landscape_2d(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, directions: tuple[PyTree, PyTree],
                 alphas, betas, *, batch_size: int | None = 256) -> jax.Array:
  """``f(alpha, beta) = L(theta* + alpha delta + beta eta)`` on the grid ``alphas x betas`` (Li et al.,
  arXiv:1712.09913, Eq. 2; 51 x 51 points over ``[-1, 1]^2`` in the paper).

  Args:
    loss_fn: ``loss_fn(params) -> scalar``.
    params: ``theta*``.
    directions: ``(delta, eta)``, each shaped like ``params``.
    alphas, betas: 1-D grids.
    batch_size: grid points evaluated together (``None``: all at once).

  Returns:
    ``(len(alphas), len(betas))`` losses; row ``i`` is ``alpha = alphas[i]``.
  """
  alphas, betas = _as_grid("alphas", alphas), _as_grid("betas", betas)
  if not isinstance(directions, (tuple, list)) or len(directions) != 2:
    raise ValueError(f"directions must be a pair (delta, eta), got {type(directions).__name__} of length "
                     f"{len(directions) if isinstance(directions, (tuple, list)) else 'n/a'}.")
  _check_floating(params, "params")
  check_same_structure([directions[0], directions[1], params], ["directions[0]", "directions[1]", "params"])
  a, b = jnp.meshgrid(alphas, betas, indexing="ij")
  coords = jnp.stack([a.reshape(-1), b.reshape(-1)], 1)
  losses = jax.lax.map(lambda c: loss_fn(_shift(params, directions, c)), coords,
                       batch_size=coords.shape[0] if batch_size is None else batch_size)
  return losses.reshape(a.shape)


def trajectory_pca(checkpoints: Sequence[PyTree], k: int = 2) -> tuple[list[PyTree], jax.Array, jax.Array]:
  """PCA directions of an optimisation trajectory (Li et al., arXiv:1712.09913, Sec. 7; the authors'
  ``projection.py``/``setup_PCA_directions``): the rows ``theta_i - theta_n`` (the last checkpoint is the origin)
  are centred and decomposed by SVD, like scikit-learn's ``PCA(n_components=k)`` there.

  Args:
    checkpoints: the parameter pytrees along training, the last one the final point ``theta_n``.
    k: number of directions, ``1 <= k <= len(checkpoints) - 1``.

  Returns:
    ``(directions, explained_variance_ratio (k,), coords (len(checkpoints), k))``: unit-norm directions shaped
    like the parameters, and every checkpoint's coordinates ``<theta_i - theta_n, direction>`` for plotting the
    path on :func:`landscape_2d` (with ``alphas``/``betas`` in the same units).
  """
  if len(checkpoints) < 2:
    raise ValueError(f"checkpoints must hold at least 2 parameter pytrees, got {len(checkpoints)}.")
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(checkpoints) - 1:
    raise ValueError(f"k must be an int in [1, {len(checkpoints) - 1}], got {k!r}.")
  check_same_structure(list(checkpoints), "checkpoints")
  final, unravel = ravel_pytree(checkpoints[-1])
  rows = jnp.stack([ravel_pytree(c)[0] - final for c in checkpoints])
  centred = rows - rows.mean(0)
  _, s, vt = jnp.linalg.svd(centred, full_matrices=False)
  ratio = s[:k] ** 2 / jnp.sum(s**2)
  return [unravel(v) for v in vt[:k]], ratio, rows @ vt[:k].T


def plot_landscape(losses, alphas, betas=None, *, ax=None, levels: int = 30, log: bool = False, path=None):
  """Plot a landscape: a line for :func:`landscape_1d`, filled contours for :func:`landscape_2d` (the paper's
  Fig. 1/5 style). Host-only (matplotlib, imported here so the package itself needs only jax/numpy).

  Args:
    losses: ``(n,)`` or ``(n, m)`` losses. alphas: the first grid; betas: the second (2-D only).
    ax: a matplotlib ``Axes`` (a new figure when ``None``). levels: contour levels. log: plot ``log10`` losses.
    path: when given, the figure is saved there (PNG by extension).

  Returns:
    The ``Axes``.
  """
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (the caller's backend is left as it is)

  losses = np.asarray(losses, np.float64)
  values = np.log10(losses) if log else losses
  if ax is None:
    _, ax = plt.subplots(figsize=(5, 4))
  if losses.ndim == 1:
    if betas is not None or losses.shape != np.shape(alphas):
      raise ValueError(f"a 1-D landscape needs losses shaped like alphas and no betas, got {losses.shape}, "
                       f"{np.shape(alphas)}, betas={'given' if betas is not None else None}.")
    ax.plot(np.asarray(alphas), values)
    ax.set_xlabel("alpha")
    ax.set_ylabel("log10 loss" if log else "loss")
  elif losses.ndim == 2:
    if betas is None or losses.shape != (np.size(alphas), np.size(betas)):
      raise ValueError(f"a 2-D landscape needs losses of shape (len(alphas), len(betas)), got {losses.shape} for "
                       f"{np.size(alphas)} alphas and {None if betas is None else np.size(betas)} betas.")
    cs = ax.contourf(np.asarray(alphas), np.asarray(betas), values.T, levels=levels)
    ax.figure.colorbar(cs, ax=ax, label="log10 loss" if log else "loss")
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
  else:
    raise ValueError(f"losses must be 1-D or 2-D, got shape {losses.shape}.")
  if path is not None:
    ax.figure.savefig(path, dpi=120, bbox_inches="tight")
  return ax
