"""RegMean: merging linear layers by their input Gram matrices, plus capture of per-layer inputs/outputs.

RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023,
arXiv:2212.09849) solves, for every linear layer, the least-squares problem
``min_W sum_i ||X_i W - X_i W_i||^2``, whose solution is ``W* = (sum_i G_i)^{-1} sum_i G_i W_i`` with
``G_i = X_i^T X_i`` (Sec. 3). Off-diagonal entries of each Gram are shrunk by ``alpha`` (the paper's
``reduce_non_diagonal_ratio``, 0.95 by default) for stability. A convolution is a linear layer applied to every
input patch, so its Gram is that of the im2col patch matrix (:func:`conv_patches`) and its kernel is merged as the
``(prod(kernel_size) * in, out)`` matrix. Other parameters are averaged.

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

__all__ = ["capture_layer_io", "conv_patches", "gram_matrices", "model_apply", "output_gradient_grams", "regmean_merge"]

PyTree = Any
_RECORDING_CLASSES: dict[type, type] = {}
_PERTURBED_CLASSES: dict[type, type] = {}


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


def _tuple(v, n: int) -> tuple[int, ...]:
  if v is None:
    return (1,) * n
  return (int(v),) * n if isinstance(v, int) else tuple(int(a) for a in v)


def conv_patches(x: jax.Array, kernel_size: Sequence[int], *, strides: int | Sequence[int] = 1,
                 padding: Any = "SAME", kernel_dilation: int | Sequence[int] = 1,
                 input_dilation: int | Sequence[int] = 1) -> jax.Array:
  """im2col: every input patch a convolution sees, as rows ``(num_patches, prod(kernel_size) * in_features)``.

  The columns are ordered like a channels-last kernel ``(*kernel_size, in, out)`` reshaped to ``(-1, out)``, so
  ``conv(x, kernel) == (conv_patches(x, ...) @ kernel.reshape(-1, out)).reshape(...)``. Arguments follow
  ``flax.nnx.Conv`` (inputs ``(..., *spatial, in)``; padding ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``,
  ``"REFLECT"``, ``"CAUSAL"`` (1-D), an int or per-dimension pairs). Used for RegMean's Gram of a convolution
  (Jin et al., arXiv:2212.09849, Sec. 3, with ``X`` the patch matrix). Jittable.
  """
  nd = len(kernel_size)
  x = x.reshape((-1,) + x.shape[-(nd + 1):])
  dil = _tuple(kernel_dilation, nd)
  if isinstance(padding, str) and padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
    if padding == "CAUSAL":
      if nd != 1:
        raise ValueError(f"padding='CAUSAL' needs a 1-D convolution, got kernel_size {tuple(kernel_size)}.")
      pads = [((kernel_size[0] - 1) * dil[0], 0)]
      x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)])
    else:
      span = [(k - 1) * d + 1 for k, d in zip(kernel_size, dil)]
      x = jnp.pad(x, [(0, 0)] + [((s - 1) // 2, s // 2) for s in span] + [(0, 0)],
                  mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
    padding = "VALID"
  elif isinstance(padding, int):
    padding = [(padding, padding)] * nd
  elif not isinstance(padding, str):
    padding = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
  ndim = x.ndim
  spec = (0, ndim - 1) + tuple(range(1, ndim - 1))
  numbers = jax.lax.ConvDimensionNumbers(spec, (ndim - 1, ndim - 2) + tuple(range(nd)), spec)
  patches = jax.lax.conv_general_dilated_patches(
      x, tuple(kernel_size), _tuple(strides, nd), padding, lhs_dilation=_tuple(input_dilation, nd),
      rhs_dilation=dil, dimension_numbers=numbers, precision=jax.lax.Precision.HIGHEST)
  c = x.shape[-1]
  patches = patches.reshape(-1, c, *kernel_size)  # the patch features come channel-major
  return jnp.moveaxis(patches, 1, -1).reshape(patches.shape[0], -1)


def gram_matrices(graphdef: nnx.GraphDef, params: PyTree, x: Any, *, model_state: PyTree | None = None
                  ) -> dict[str, jax.Array]:
  """Input Gram matrices ``G = X^T X / n`` of every ``nnx.Linear`` and ``nnx.Conv`` layer, keyed by kernel path.

  RegMean (arXiv:2212.09849), Sec. 3: ``X`` stacks the layer's inputs over all examples (and positions, for
  sequence inputs), so ``G`` has shape ``(in_features, in_features)``. For a convolution the rows of ``X`` are
  the input patches (:func:`conv_patches`) and ``G`` is ``(prod(kernel_size) * in, prod(kernel_size) * in)``.
  The mean over rows (not the sum) is used, as FusionBench does, so models measured on different numbers of
  examples weigh equally.

  Returns:
    ``{"hidden/0/kernel": G, "convs/0/kernel": G, ...}``. Grouped convolutions (``feature_group_count > 1``) get
    no Gram and are averaged by :func:`regmean_merge`. Jittable with ``graphdef`` static.
  """
  _, io = capture_layer_io(graphdef, params, x, model_state=model_state, layer_types=(nnx.Linear, nnx.Conv))
  modules = {"/".join(str(p) for p in path): m
             for path, m in nnx.iter_graph(_merge(graphdef, params, model_state))}
  grams = {}
  for name, (inp, _) in io.items():
    m = modules[name]
    if isinstance(m, nnx.Conv):
      if m.feature_group_count != 1:
        continue
      inp = conv_patches(inp, m.kernel_size, strides=m.strides, padding=m.padding,
                         kernel_dilation=m.kernel_dilation, input_dilation=m.input_dilation)
    flat = inp.reshape(-1, inp.shape[-1]).astype(jnp.float32)
    grams[f"{name}/kernel"] = flat.T @ flat / flat.shape[0]
  return grams


def _perturbed_class(cls: type) -> type:
  """A subclass of ``cls`` whose ``__call__`` adds ``self._eps_source[self._eps_path]`` to its output."""
  if cls not in _PERTURBED_CLASSES:
    def __call__(self, x, *args, **kwargs):
      return cls.__call__(self, x, *args, **kwargs) + self._eps_source[self._eps_path]

    _PERTURBED_CLASSES[cls] = type(f"Perturbed{cls.__name__}", (cls,), {"__call__": __call__})
  return _PERTURBED_CLASSES[cls]


def output_gradient_grams(graphdef: nnx.GraphDef, params: PyTree, x: jax.Array, *,
                          model_state: PyTree | None = None, chunk: int = 64) -> dict[str, jax.Array]:
  """Output-gradient Gram matrices ``S = E_x sum_y p(y|x) g_y g_y^T`` of every ``nnx.Linear`` layer of a classifier,
  keyed by kernel path: the output factor of the K-FAC block Fisher ``F ~ A (x) S``.

  Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature" (arXiv:1503.05671),
  Sec. 3, with the exact expectation over the model's classes (the "true" Fisher); ``g_y`` is the gradient of
  ``log p(y|x)`` w.r.t. the layer's output. With :func:`gram_matrices` as the input factor ``A`` this gives the
  block-Fisher statistics of MaTS (Tam et al., arXiv:2312.04339, Sec. 4; :func:`paperlab.merge.mats`'s
  ``grams_out``). A layer applied at several positions of one example treats each position as a row (averaged, like
  :func:`gram_matrices`).

  Args:
    graphdef, params, model_state: the model, as for :func:`gram_matrices`; it must map one example ``x[i:i+1]`` to
      logits ``(1, classes)``.
    x: inputs with a leading example axis.
    chunk: examples per vectorised chunk (bounds memory).

  Returns:
    ``{"hidden/0/kernel": S, ...}`` with ``S`` of shape ``(out_features, out_features)``, float32, the mean over
    examples. Jittable with ``graphdef`` static.
  """
  if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
    raise ValueError(f"chunk must be a positive integer, got {chunk!r}.")
  x = jnp.asarray(x)
  if x.ndim < 1 or x.shape[0] == 0:
    raise ValueError(f"x must hold at least one example along its leading axis, got shape {x.shape}.")
  _, io = capture_layer_io(graphdef, params, x[:1], model_state=model_state, layer_types=(nnx.Linear,))
  outs = {name: jax.ShapeDtypeStruct(y.shape, y.dtype) for name, (_, y) in io.items()}

  def log_probs(eps, xi):
    model = _merge(graphdef, params, model_state)
    for path, module in nnx.iter_graph(model):
      if isinstance(module, nnx.Linear):
        module.__class__ = _perturbed_class(type(module))
        object.__setattr__(module, "_eps_source", eps)
        object.__setattr__(module, "_eps_path", "/".join(str(p) for p in path))
    logits = model(xi[None])
    if logits.ndim != 2 or logits.shape[0] != 1:
      raise ValueError(f"the model must map one example to logits (1, classes), got shape {logits.shape}.")
    return jax.nn.log_softmax(logits[0].astype(jnp.float32))

  def one(xi):
    zeros = {n: jnp.zeros(o.shape, o.dtype) for n, o in outs.items()}
    probs = jax.lax.stop_gradient(jnp.exp(log_probs(zeros, xi)))
    jac = jax.jacrev(log_probs)(zeros, xi)  # {layer: (classes, 1, ..., out)}
    grams = {}
    for n, j in jac.items():
      j = j.astype(jnp.float32).reshape(j.shape[0], -1, j.shape[-1])  # (classes, rows, out)
      grams[n] = jnp.einsum("c,cri,crj->ij", probs, j, j) / j.shape[1]
    return grams

  per_example = jax.lax.map(one, x, batch_size=min(int(chunk), x.shape[0]))
  return {f"{n}/kernel": s.mean(0) for n, s in per_example.items()}


def regmean_merge(models: Sequence[PyTree], grams: Sequence[Mapping[str, jax.Array]], *, alpha: float = 0.95,
                  ridge: float = 0.0, integer_leaves: str | Callable = "error") -> PyTree:
  """RegMean merge of ``models`` (same structure) given each model's input Grams.

  Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models" (arXiv:2212.09849), Sec. 3:
  ``W* = (sum_i G~_i)^{-1} sum_i G~_i W_i`` for every linear kernel ``W_i`` (layout ``(in, out)``), where
  ``G~_i = alpha * G_i + (1 - alpha) * diag(G_i)`` scales the off-diagonal part by ``alpha`` (paper default
  0.95). A convolution kernel ``(*kernel_size, in, out)`` is merged as its ``(prod(kernel_size) * in, out)``
  matrix against the Gram of its input patches. Every leaf without a Gram (biases, norms) is the plain average.

  Args:
    models: parameter pytrees to merge.
    grams: one mapping per model from kernel path (``"hidden/0/kernel"``) to its ``(fan_in, fan_in)`` Gram
      matrix, e.g. from :func:`gram_matrices`; all models must give Grams for the same paths.
    alpha: off-diagonal scale in ``[0, 1]``: 1 is exact RegMean, 0 reduces to a per-input-feature weighted
      average.
    ridge: added to the diagonal of the summed Gram (``>= 0``) for ill-conditioned layers. Inputs that are zero
      on every model's data (dead units: zero diagonal) always get the plain average of their rows.
    integer_leaves: integer/bool leaves are never averaged: equal across models -> kept, different ->
      ``ValueError`` naming the path; or ``"first"``, ``"last"`` or a callable (see :mod:`paperlab.merge.averaging`).

  Returns:
    The merged pytree (dtype of each leaf kept). Jittable.
  """
  from paperlab.merge.averaging import _check_models, _integer_leaves, _model_names

  models = _check_models(models)
  ints = _integer_leaves(models, _model_names(len(models)), integer_leaves, has_base=False)
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
    if leaves[0].ndim < 2:
      raise ValueError(f"grams[{name!r}] is given but the leaf has shape {leaves[0].shape}; RegMean needs an "
                       "(in, out) or (*kernel_size, in, out) kernel.")
    shape = leaves[0].shape
    leaves = [w.reshape(-1, shape[-1]) for w in leaves]
    lhs, rhs = 0.0, 0.0
    for w, g in zip(leaves, (gr[name] for gr in grams)):
      g = g.astype(jnp.float32)
      if g.shape != (w.shape[0], w.shape[0]):
        raise ValueError(f"Gram for {name!r} has shape {g.shape}, expected {(w.shape[0], w.shape[0])} for a kernel "
                         f"of shape {shape}.")
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
    return jnp.linalg.solve(lhs, rhs).reshape(shape).astype(leaves[0].dtype)

  from paperlab.merge.averaging import _put_integer_leaves

  return _put_integer_leaves(jax.tree_util.tree_map_with_path(merge_leaf, models[0], *models[1:]), ints)
