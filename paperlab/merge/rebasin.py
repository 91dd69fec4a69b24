"""Re-basin: permutation symmetries of hidden units, weight/activation matching, and REPAIR.

A permutation of the hidden units of a layer, applied to the outgoing axis of its weights and the incoming axis
of the next layer's weights, leaves the network's function unchanged. Git Re-Basin (Ainsworth et al., "Git
Re-Basin: Merging Models modulo Permutation Symmetries", arXiv:2209.04836) aligns model B to model A by such
permutations before interpolating; Ito et al. ("Analysis of Linear Mode Connectivity via Permutation-Based
Weight Matching", arXiv:2402.04051) show the alignment acts on the dominant singular vectors.

The symmetry of a model is a :class:`PermutationSpec`, a plain data structure mapping each leaf path to one
permutation name (or ``None``) per axis, so any architecture plugs in; :func:`mlp_spec`, :func:`cnn_spec` and
:func:`transformer_spec` cover ``paperlab.models``.

Host-side steps: :func:`weight_matching` and :func:`activation_matching` solve linear assignment problems with
``scipy.optimize.linear_sum_assignment`` on the host (not jittable); :func:`apply_permutation` is jittable.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.optimize import linear_sum_assignment

from paperlab._checks import check_choice, check_range
from paperlab._tree import check_same_structure, path_str
from paperlab.merge.regmean import capture_layer_io

__all__ = [
    "PermutationSpec", "permutation_spec", "mlp_spec", "cnn_spec", "transformer_spec", "apply_permutation",
    "random_permutation", "invert_permutation", "weight_matching", "activation_matching", "repair",
]

PyTree = Any
Perms = dict[str, Any]


class PermutationSpec(NamedTuple):
  """Which permutation acts on which axis of which leaf.

  Attributes:
    axes_to_perm: leaf path (``"hidden/0/kernel"``) -> one permutation name or ``None`` per axis.
    perm_to_axes: permutation name -> ``((path, axis), ...)``, every axis it acts on.
  """

  axes_to_perm: dict[str, tuple[str | None, ...]]
  perm_to_axes: dict[str, tuple[tuple[str, int], ...]]


def permutation_spec(axes_to_perm: Mapping[str, Sequence[str | None]]) -> PermutationSpec:
  """Build a :class:`PermutationSpec` from ``{leaf_path: (perm_or_None per axis)}``.

  Every leaf of a tree that is permuted must be listed (use all-``None`` for leaves no permutation touches);
  listed paths absent from a tree are ignored, so one spec can serve ``params`` and ``model_state``.
  """
  a2p = {str(k): tuple(v) for k, v in axes_to_perm.items()}
  p2a: dict[str, list[tuple[str, int]]] = {}
  for path, perms in a2p.items():
    for axis, p in enumerate(perms):
      if p is not None:
        p2a.setdefault(p, []).append((path, axis))
  return PermutationSpec(a2p, {p: tuple(v) for p, v in p2a.items()})



def _indices(params: PyTree, pattern: str) -> list[int]:
  rx = re.compile(pattern)
  found = {int(m.group(1)) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
           if (m := rx.fullmatch(path_str(p)))}
  return sorted(found)


def mlp_spec(params: PyTree) -> PermutationSpec:
  """Spec of ``paperlab.models.MLP``: one permutation ``"hidden/i"`` per hidden layer.

  Covers ``hidden/i/{kernel,bias}``, ``norms/i/{scale,bias,mean,var}`` (LayerNorm/BatchNorm follow their
  layer's units) and ``head/{kernel,bias}`` (input axis only; logits keep their order).
  """
  layers = _indices(params, r"hidden/(\d+)/kernel")
  if not layers:
    raise ValueError("params has no 'hidden/<i>/kernel' leaves; mlp_spec expects paperlab.models.MLP params.")
  spec: dict[str, tuple] = {}
  prev = None
  for i in layers:
    p = f"hidden/{i}"
    spec[f"hidden/{i}/kernel"] = (prev, p)
    spec[f"hidden/{i}/bias"] = (p,)
    for leaf in ("scale", "bias", "mean", "var"):
      spec[f"norms/{i}/{leaf}"] = (p,)
    prev = p
  spec["head/kernel"] = (prev, None)
  spec["head/bias"] = (None,)
  return permutation_spec(spec)


def cnn_spec(params: PyTree) -> PermutationSpec:
  """Spec of ``paperlab.models.CNN`` (HWIO kernels): one permutation ``"convs/i"`` per conv's output channels.

  Global average pooling keeps channel order, so the head's input axis follows the last conv.
  """
  layers = _indices(params, r"convs/(\d+)/kernel")
  if not layers:
    raise ValueError("params has no 'convs/<i>/kernel' leaves; cnn_spec expects paperlab.models.CNN params.")
  spec: dict[str, tuple] = {}
  prev = None
  for i in layers:
    p = f"convs/{i}"
    spec[f"convs/{i}/kernel"] = (None, None, prev, p)
    spec[f"convs/{i}/bias"] = (p,)
    for leaf in ("scale", "bias", "mean", "var"):
      spec[f"norms/{i}/{leaf}"] = (p,)
    prev = p
  spec["head/kernel"] = (prev, None)
  spec["head/bias"] = (None,)
  return permutation_spec(spec)


def transformer_spec(params: PyTree) -> PermutationSpec:
  """Spec of ``paperlab.models.CharTransformer``: the residual stream shares one permutation ``"residual"``
  (embeddings, every LayerNorm, attention in/out, MLP in/out, head) and each block's MLP hidden units get
  ``"blocks/i/mlp"``. LayerNorm statistics are invariant to a feature permutation, so this is exact.
  Attention heads are not permuted (``qkv`` output and ``out`` input axes stay put).
  """
  blocks = _indices(params, r"blocks/(\d+)/fc1/kernel")
  if not blocks:
    raise ValueError("params has no 'blocks/<i>/fc1/kernel'; transformer_spec expects CharTransformer params.")
  r = "residual"
  spec: dict[str, tuple] = {"embed/embedding": (None, r), "pos": (None, r), "ln_f/scale": (r,),
                            "ln_f/bias": (r,), "head/kernel": (r, None)}
  for i in blocks:
    b, m = f"blocks/{i}", f"blocks/{i}/mlp"
    spec.update({
        f"{b}/ln1/scale": (r,), f"{b}/ln1/bias": (r,), f"{b}/ln2/scale": (r,), f"{b}/ln2/bias": (r,),
        f"{b}/attn/qkv/kernel": (r, None), f"{b}/attn/out/kernel": (None, r),
        f"{b}/attn/q_norm/scale": (None,), f"{b}/attn/k_norm/scale": (None,),
        f"{b}/fc1/kernel": (r, m), f"{b}/fc1/bias": (m,), f"{b}/fc2/kernel": (m, r), f"{b}/fc2/bias": (r,),
    })
  return permutation_spec(spec)


def _flat(tree: PyTree) -> dict[str, Any]:
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_spec_covers(spec: PermutationSpec, tree: PyTree, name: str) -> None:
  flat = _flat(tree)
  missing = [k for k in flat if k not in spec.axes_to_perm]
  if missing:
    raise ValueError(f"{name} has leaves the permutation spec does not list, e.g. {missing[:3]}; list them "
                     "(all-None axes for leaves no permutation touches).")
  for k, leaf in flat.items():
    if len(spec.axes_to_perm[k]) != jnp.ndim(leaf):
      raise ValueError(f"spec gives {len(spec.axes_to_perm[k])} axes for {k!r} but the leaf in {name} has shape "
                       f"{jnp.shape(leaf)}.")


def _perm_sizes(spec: PermutationSpec, flat: Mapping[str, Any]) -> dict[str, int]:
  sizes = {}
  for p, axes in spec.perm_to_axes.items():
    dims = {jnp.shape(flat[path])[ax] for path, ax in axes if path in flat}
    if len(dims) > 1:
      raise ValueError(f"permutation {p!r} acts on axes of different sizes {sorted(dims)}.")
    if dims:
      sizes[p] = dims.pop()
  return sizes


def _permute(w, axes_perms, perms, skip_axis=None, take=jnp.take):
  for axis, p in enumerate(axes_perms):
    if p is not None and axis != skip_axis:
      w = take(w, perms[p], axis=axis)
  return w


def apply_permutation(spec: PermutationSpec, perms: Mapping[str, Any], params: PyTree) -> PyTree:
  """Permute ``params``: on every axis tagged with permutation ``p``, ``w -> take(w, perms[p], axis)``.

  ``perms[p][i]`` is the index of the unit that lands at position ``i``, so with the output of
  :func:`weight_matching` ``apply_permutation(spec, perms, params_b)`` is model B aligned to model A. Applying
  it to ``model_state`` (BatchNorm statistics) needs the same spec. Jittable (``spec`` static).
  """
  _check_spec_covers(spec, params, "params")
  return jax.tree_util.tree_map_with_path(
      lambda path, w: _permute(w, spec.axes_to_perm[path_str(path)], perms), params)


def invert_permutation(perms: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of every permutation (``apply_permutation`` with it undoes ``perms``)."""
  return {p: jnp.argsort(jnp.asarray(v)) for p, v in perms.items()}


def random_permutation(rng: jax.Array, spec: PermutationSpec, params: PyTree) -> dict[str, jax.Array]:
  """One uniformly random permutation per name in ``spec`` (sized from ``params``)."""
  sizes = _perm_sizes(spec, _flat(params))
  keys = jax.random.split(rng, max(len(sizes), 1))
  return {p: jax.random.permutation(k, n) for k, (p, n) in zip(keys, sorted(sizes.items()))}


def _host_rng(rng) -> np.random.Generator:
  if isinstance(rng, (int, np.integer)):
    return np.random.default_rng(int(rng))
  data = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(jnp.asarray(rng).dtype, jax.dtypes.prng_key)
                    else rng)
  return np.random.default_rng(data.astype(np.uint32).ravel().tolist())


def weight_matching(rng, spec: PermutationSpec, params_a: PyTree, params_b: PyTree, *, max_iter: int = 100,
                    init_perms: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Permutations that align ``params_b`` to ``params_a`` by weight matching (host-side).

  Git Re-Basin (arXiv:2209.04836), Algorithm 1, as analysed by Ito et al. (arXiv:2402.04051): maximise
  ``sum_l <W_a^l, P_l W_b^l P_{l-1}^T>`` by coordinate descent. For each permutation ``p`` (visited in random
  order) with the others fixed, the objective is linear in ``p``: ``C = sum_{(w, axis) in p} W_a[axis] .
  W_b'[axis]^T`` (each leaf unfolded with ``axis`` first, ``W_b'`` with its other axes already permuted), solved
  exactly by ``scipy.optimize.linear_sum_assignment(C, maximize=True)``. Stops when a full sweep improves
  nothing (or after ``max_iter`` sweeps).

  Host-only: runs in NumPy (float64) and scipy, not under ``jax.jit``.

  Args:
    rng: a ``jax.random`` key or int seed (order in which permutations are visited).
    spec: the symmetry (e.g. :func:`mlp_spec`).
    params_a: the reference model.
    params_b: the model to align.
    max_iter: maximum number of sweeps (paper: 100).
    init_perms: starting permutations (identity by default).

  Returns:
    ``{perm_name: int array}``; ``apply_permutation(spec, perms, params_b)`` is B aligned to A.
  """
  check_same_structure([params_a, params_b], ["params_a", "params_b"])
  _check_spec_covers(spec, params_a, "params_a")
  if int(max_iter) != max_iter or max_iter < 1:
    raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}.")
  a = {k: np.asarray(v, np.float64) for k, v in _flat(params_a).items()}
  b = {k: np.asarray(v, np.float64) for k, v in _flat(params_b).items()}
  sizes = _perm_sizes(spec, a)
  if not sizes:
    raise ValueError("spec has no permutation acting on any leaf of params_a.")
  perms = {p: np.arange(n) for p, n in sizes.items()}
  if init_perms is not None:
    perms.update({p: np.asarray(v) for p, v in init_perms.items()})
  gen = _host_rng(rng)
  names = sorted(sizes)
  take = lambda w, idx, axis: np.take(w, idx, axis=axis)
  for _ in range(int(max_iter)):
    improved = False
    for p in (names[i] for i in gen.permutation(len(names))):
      n = sizes[p]
      cost = np.zeros((n, n))
      for path, axis in spec.perm_to_axes[p]:
        if path not in a:
          continue
        wa = np.moveaxis(a[path], axis, 0).reshape(n, -1)
        wb = _permute(b[path], spec.axes_to_perm[path], perms, skip_axis=axis, take=take)
        cost += wa @ np.moveaxis(wb, axis, 0).reshape(n, -1).T
      _, cols = linear_sum_assignment(cost, maximize=True)
      old, new = cost[np.arange(n), perms[p]].sum(), cost[np.arange(n), cols].sum()
      if new > old + 1e-12 * max(1.0, abs(old)):
        perms[p], improved = cols, True
    if not improved:
      break
  return perms


def activation_matching(spec: PermutationSpec, acts_a: Mapping[str, Any], acts_b: Mapping[str, Any], *,
                        eps: float = 1e-8) -> dict[str, np.ndarray]:
  """Permutations aligning B's hidden units to A's by the correlation of their activations (host-side).

  Git Re-Basin (arXiv:2209.04836), Sec. 3.1: for each permutation ``p`` independently, maximise
  ``sum_i corr(z_a[:, i], z_b[:, perm[i]])`` over the data with ``scipy.optimize.linear_sum_assignment``.

  Args:
    spec: the symmetry; only its permutation names are used.
    acts_a, acts_b: ``{perm_name: activations}`` of shape ``(..., units)`` (all leading axes are examples), e.g.
      from :func:`paperlab.merge.capture_layer_io` (the input of ``hidden/1`` carries permutation ``hidden/0``).
      Every permutation of the spec needs activations.
    eps: floor on standard deviations (dead units).

  Returns:
    ``{perm_name: int array}`` usable with :func:`apply_permutation` on ``params_b``.
  """
  missing = [p for p in spec.perm_to_axes if p not in acts_a or p not in acts_b]
  if missing:
    raise ValueError(f"acts_a and acts_b need activations for every permutation of the spec; missing {missing}.")
  perms = {}
  for p in spec.perm_to_axes:
    za = np.asarray(acts_a[p], np.float64)
    zb = np.asarray(acts_b[p], np.float64)
    za, zb = za.reshape(-1, za.shape[-1]), zb.reshape(-1, zb.shape[-1])
    if za.shape != zb.shape:
      raise ValueError(f"activations for {p!r} differ in shape: {za.shape} vs {zb.shape}.")
    za = (za - za.mean(0)) / (za.std(0) + eps)
    zb = (zb - zb.mean(0)) / (zb.std(0) + eps)
    _, cols = linear_sum_assignment(za.T @ zb / za.shape[0], maximize=True)
    perms[p] = cols
  return perms


def _call_order(graphdef, params, x, model_state) -> list[str]:
  order: list[str] = []

  def f(p):
    _, io = capture_layer_io(graphdef, p, x, model_state=model_state)
    order.extend(io)
    return 0

  jax.eval_shape(f, params)
  return order


def _channel_stats(y: jax.Array) -> tuple[jax.Array, jax.Array]:
  y = y.reshape(-1, y.shape[-1]).astype(jnp.float32)
  return y.mean(0), y.std(0)


def repair(graphdef: nnx.GraphDef, merged: PyTree, params_a: PyTree, params_b: PyTree, alpha: float,
           x: Any, *, model_state: PyTree | None = None, mode: str = "both", layers: str | None = None,
           eps: float = 1e-6) -> PyTree:
  """REPAIR: renormalise each merged layer's pre-activations to the interpolated endpoint statistics.

  Jordan et al., "REPAIR: REnormalizing Permuted Activations for Interpolation Repair" (arXiv:2211.08403),
  and the rescale/reshift split of Qu & Horvath, "Rethinking Model Re-Basin and the Linear Mode
  Connectivity" (arXiv:2402.05966). For every selected layer (in call order, each after the previous ones are
  repaired) with merged output statistics ``(mu_m, sigma_m)`` per channel and targets
  ``mu_t = (1-alpha) mu_a + alpha mu_b``, ``sigma_t = (1-alpha) sigma_a + alpha sigma_b``, the affine map
  ``y -> (y - mu_m) * r + s`` is folded into the layer's kernel and bias, with
  ``mode="both"``: ``r = sigma_t/sigma_m, s = mu_t``; ``"rescale"``: ``r = sigma_t/sigma_m, s = mu_m``;
  ``"reshift"``: ``r = 1, s = mu_t``.

  Args:
    graphdef: static half of the split model (``paperlab.train.make_init``).
    merged: the interpolated parameters, e.g. ``(1-alpha) params_a + alpha * aligned params_b``.
    params_a, params_b: the endpoints (B already permuted to A).
    alpha: interpolation weight of B, in ``[0, 1]``.
    x: calibration inputs.
    model_state: non-parameter state shared by the three models (eval mode).
    mode: ``"both"``, ``"rescale"`` or ``"reshift"``.
    layers: regex (searched) on module paths selecting the layers to repair; by default every
      ``nnx.Linear``/``nnx.Conv`` except the last one called (the logits).
    eps: floor on ``sigma_m``.

  Returns:
    The repaired parameters. Runs ``2 + len(layers)`` jitted forward passes; the folding itself is jittable.
  """
  check_choice("mode", mode, ("both", "rescale", "reshift"))
  check_range("alpha", alpha, 0.0, 1.0)
  check_same_structure([merged, params_a, params_b], ["merged", "params_a", "params_b"])
  order = _call_order(graphdef, merged, x, model_state)
  if layers is None:
    chosen = order[:-1]
  else:
    rx = re.compile(layers)
    chosen = [n for n in order if rx.search(n)]
  if not chosen:
    raise ValueError(f"layers={layers!r} selects no layer; layers called: {order}.")

  capture = jax.jit(lambda p: capture_layer_io(graphdef, p, x, model_state=model_state)[1])
  io_a, io_b = capture(params_a), capture(params_b)
  flat = _flat(merged)
  for name in chosen:
    if f"{name}/bias" not in flat:
      raise ValueError(f"layer {name!r} has no bias; REPAIR folds the shift into the bias.")

  @jax.jit
  def fold(params, y_m, y_a, y_b):
    mu_m, sd_m = _channel_stats(y_m)
    mu_a, sd_a = _channel_stats(y_a)
    mu_b, sd_b = _channel_stats(y_b)
    mu_t, sd_t = (1 - alpha) * mu_a + alpha * mu_b, (1 - alpha) * sd_a + alpha * sd_b
    r = sd_t / jnp.maximum(sd_m, eps) if mode in ("both", "rescale") else jnp.ones_like(sd_m)
    s = mu_t if mode in ("both", "reshift") else mu_m
    return r, s - mu_m * r

  def fold_into(tree, name, r, shift):
    def upd(path, v):
      k = path_str(path)
      if k == f"{name}/kernel":
        return (v * r).astype(v.dtype)
      if k == f"{name}/bias":
        return (v * r + shift).astype(v.dtype)
      return v
    return jax.tree_util.tree_map_with_path(upd, tree)

  out = merged
  for name in chosen:
    y_m = capture(out)[name][1]
    r, shift = fold(out, y_m, io_a[name][1], io_b[name][1])
    out = fold_into(out, name, r, shift)
  return out
