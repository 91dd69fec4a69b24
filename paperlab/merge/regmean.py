"""RegMean: merging linear layers by their input Gram matrices, plus capture of per-layer inputs/outputs.

RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023,
arXiv:2212.09849) solves, for every linear layer, the least-squares problem
``min_W sum_i ||X_i W - X_i W_i||^2``, whose solution is ``W* = (sum_i G_i)^{-1} sum_i G_i W_i`` with
``G_i = X_i^T X_i`` (Sec. 3). Off-diagonal entries of each Gram are shrunk by ``alpha`` (the paper's
``reduce_non_diagonal_ratio``, 0.95 by default) for stability. Parameters that are not linear kernels are averaged.

The per-layer inputs come from :func:`capture_layer_io`, which runs a Flax NNX model and records the input and
output of every ``nnx.Linear``/``nnx.Conv`` it calls (by module path), inside ``jax.jit``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from paperlab._checks import check_range
from paperlab._tree import check_same_structure, path_str

__all__ = ["capture_layer_io", "gram_matrices", "model_apply", "regmean_merge"]

PyTree = Any
_RECORDING_CLASSES: dict[type, type] = {}


def _recording_class(cls: type) -> type:
  """A subclass of ``cls`` whose ``__call__`` writes ``(input, output)`` into ``self._io_sink``."""
  if cls not in _RECORDING_CLASSES:
    def __call__(self, x, *args, **kwargs):
      y = cls.__call__(self, x, *args, **kwargs)
      self._io_sink[self._io_path] = (x, y)
      return y

    _RECORDING_CLASSES[cls] = type(f"Recording{cls.__name__}", (cls,), {"__call__": __call__})
  return _RECORDING_CLASSES[cls]



def _merge(graphdef: nnx.GraphDef, params: PyTree, model_state: PyTree | None) -> nnx.Module:
  model = nnx.merge(graphdef, params, {} if model_state is None else model_state)
  model.eval()
  return model


def model_apply(graphdef: nnx.GraphDef, model_state: PyTree | None = None) -> Callable[[PyTree, jax.Array], jax.Array]:
  """``apply_fn(params, x) -> outputs`` for a model split as in :func:`paperlab.train.make_init`, in eval mode.

  The glue that lets the weight-space functions (Fisher estimation, loss barriers, ...) evaluate a Flax NNX
  model from a plain parameter pytree. Pure and jittable.
  """
  def apply_fn(params: PyTree, x: jax.Array) -> jax.Array:
    return _merge(graphdef, params, model_state)(x)

  return apply_fn


def capture_layer_io(graphdef: nnx.GraphDef, params: PyTree, x: Any, *, model_state: PyTree | None = None,
                     layer_types: Sequence[type] = (nnx.Linear, nnx.Conv)
                     ) -> tuple[Any, dict[str, tuple[jax.Array, jax.Array]]]:
  """Run the model on ``x`` and record the input and output of each layer of ``layer_types``.

  Args:
    graphdef: static half of ``nnx.split(model, nnx.Param, ...)`` (see :func:`paperlab.train.make_init`).
    params: the parameter pytree (plain dict).
    x: model input.
    model_state: non-parameter variables (e.g. BatchNorm statistics); the model runs in eval mode.
    layer_types: module classes to record (subclasses included).

  Returns:
    ``(outputs, io)`` where ``io`` maps the ``/``-joined module path (``"hidden/0"``) to ``(inputs, outputs)``
    in call order (a layer called twice keeps its last call). Pure and jittable (``graphdef`` static): the
    recording happens on a freshly merged model, never on the caller's objects.
  """
  model = _merge(graphdef, params, model_state)
  sink: dict[str, tuple[jax.Array, jax.Array]] = {}
  layers = [(path, m) for path, m in nnx.iter_graph(model) if isinstance(m, tuple(layer_types))]
  for path, module in layers:
    module.__class__ = _recording_class(type(module))
    object.__setattr__(module, "_io_sink", sink)
    object.__setattr__(module, "_io_path", "/".join(str(p) for p in path))
  out = model(x)
  return out, dict(sink)


def gram_matrices(graphdef: nnx.GraphDef, params: PyTree, x: Any, *, model_state: PyTree | None = None
                  ) -> dict[str, jax.Array]:
  """Input Gram matrices ``G = X^T X / n`` of every ``nnx.Linear`` layer, keyed by kernel path.

  RegMean (arXiv:2212.09849), Sec. 3: ``X`` stacks the layer's inputs over all examples (and positions, for
  sequence inputs), so ``G`` has shape ``(in_features, in_features)``. The mean over rows (not the sum) is
  used, as FusionBench does, so models measured on different numbers of examples weigh equally.

  Returns:
    ``{"hidden/0/kernel": G, ...}``: only layers with a 2-D kernel appear; others are averaged by
    :func:`regmean`. Jittable with ``graphdef`` static.
  """
  _, io = capture_layer_io(graphdef, params, x, model_state=model_state, layer_types=(nnx.Linear,))
  grams = {}
  for name, (inp, _) in io.items():
    flat = inp.reshape(-1, inp.shape[-1]).astype(jnp.float32)
    grams[f"{name}/kernel"] = flat.T @ flat / flat.shape[0]
  return grams


def regmean_merge(models: Sequence[PyTree], grams: Sequence[Mapping[str, jax.Array]], *, alpha: float = 0.95,
            ridge: float = 0.0) -> PyTree:
  """RegMean merge of ``models`` (same structure) given each model's input Grams.

  Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models" (arXiv:2212.09849), Sec. 3:
  ``W* = (sum_i G~_i)^{-1} sum_i G~_i W_i`` for every linear kernel ``W_i`` (layout ``(in, out)``), where
  ``G~_i = alpha * G_i + (1 - alpha) * diag(G_i)`` scales the off-diagonal part by ``alpha`` (paper default
  0.95). Every leaf without a Gram (biases, norms, convolutions) is the plain average.

  Args:
    models: parameter pytrees to merge.
    grams: one mapping per model from kernel path (``"hidden/0/kernel"``) to its ``(in, in)`` Gram matrix,
      e.g. from :func:`gram_matrices`; all models must give Grams for the same paths.
    alpha: off-diagonal scale in ``[0, 1]``: 1 is exact RegMean, 0 reduces to a per-input-feature weighted
      average.
    ridge: added to the diagonal of the summed Gram (``>= 0``) for ill-conditioned layers. Inputs that are zero
      on every model's data (dead units: zero diagonal) always get the plain average of their rows.

  Returns:
    The merged pytree (dtype of each leaf kept). Jittable.
  """
  models = list(models)
  check_same_structure(models, "models")
  grams = list(grams)
  if len(grams) != len(models):
    raise ValueError(f"grams must have one entry per model: got {len(grams)} for {len(models)} models.")
  check_range("alpha", alpha, 0.0, 1.0)
  check_range("ridge", ridge, 0.0, None)
  keys = set(grams[0])
  for i, g in enumerate(grams[1:], 1):
    if set(g) != keys:
      raise ValueError(f"grams[{i}] covers paths {sorted(set(g) ^ keys)[:3]} that grams[0] does not (or vice versa).")
  paths = {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(models[0])[0]}
  unknown = sorted(keys - paths)
  if unknown:
    raise ValueError(f"grams name paths that are not leaves of the models: {unknown[:3]}.")

  def merge_leaf(path, *leaves):
    name = path_str(path)
    if name not in keys:
      return (sum(l.astype(jnp.float32) for l in leaves) / len(leaves)).astype(leaves[0].dtype)
    if leaves[0].ndim != 2:
      raise ValueError(f"grams[{name!r}] is given but the leaf has shape {leaves[0].shape}; RegMean needs a 2-D "
                       "(in, out) kernel.")
    lhs, rhs = 0.0, 0.0
    for w, g in zip(leaves, (gr[name] for gr in grams)):
      g = g.astype(jnp.float32)
      if g.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"Gram for {name!r} has shape {g.shape}, expected {(w.shape[0], w.shape[0])}.")
      d = jnp.diag(jnp.diag(g))
      g = alpha * g + (1.0 - alpha) * d
      lhs = lhs + g
      rhs = rhs + g @ w.astype(jnp.float32)
    # An input that is zero on every model's data (a dead ReLU unit) leaves a zero row and column; its weights
    # do not affect any output on the data, so they fall back to the average.
    diag = jnp.diag(lhs)
    dead = (diag <= 1e-12 * jnp.maximum(jnp.max(diag), 1e-30)).astype(jnp.float32)
    lhs = lhs + jnp.diag(dead * len(leaves) + ridge)
    rhs = rhs + dead[:, None] * sum(w.astype(jnp.float32) for w in leaves)
    return jnp.linalg.solve(lhs, rhs).astype(leaves[0].dtype)

  return jax.tree_util.tree_map_with_path(merge_leaf, models[0], *models[1:])
