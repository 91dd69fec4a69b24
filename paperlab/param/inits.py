"""Initializations: LSUV (layer-sequential unit variance) and weight selection from a larger model.

Both work on parameter pytrees (plain nested dicts, the ``nnx.to_pure_dict`` form); LSUV also needs the model to
measure each layer's output, which it reads from every module's ``__call__`` with ``nnx.capture`` (a kernel at path
``a/b/kernel`` belongs to the module ``a/b``, see :func:`paperlab.param.layer_outputs`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paperlab._checks import check_range
from paperlab._tree import path_str
from paperlab.param.coordinates import layer_outputs

PyTree = Any

__all__ = ["lsuv", "uniform_indices", "weight_selection"]


def _set(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  node = tree
  for k in parents:
    node = node[int(k)] if isinstance(node, (list, tuple)) else node[k if k in node else int(k)]
  node[leaf if leaf in node else int(leaf)] = value


def _flat(tree: PyTree) -> dict[str, Any]:
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _execution_order(fn, params: PyTree, paths: list[str]) -> list[str]:
  """``paths`` sorted by the first operation of ``fn(params)``'s jaxpr that reads each leaf (the forward order)."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  jaxpr = jax.make_jaxpr(fn)(params).jaxpr
  first: dict = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if not hasattr(v, "val") and v not in first:  # a Var, not a Literal
        first[v] = i
  position = {path_str(p): first.get(v, len(jaxpr.eqns)) for (p, _), v in zip(leaves, jaxpr.invars)}
  return sorted(paths, key=lambda p: (position[p], p))


def lsuv(key: jax.Array, model: nnx.Module, x: jax.Array, *, include: str = r"kernel$", tol: float = 0.1,
         max_iter: int = 10, orthogonal: bool = True) -> PyTree:
  """Layer-sequential unit-variance init (Mishkin & Matas, "All you need is a good init", arXiv:1511.06422,
  Algorithm 1).

  (1) Every selected kernel is re-drawn orthonormal (Saxe et al.; ``jax.nn.initializers.orthogonal`` over the
  kernel reshaped to ``(fan_in, fan_out)``), unless ``orthogonal=False``. (2) Going through the layers, the output
  of each layer on the batch ``x`` is measured and its kernel divided by ``sqrt(Var(B_l))``, until
  ``|Var(B_l) - 1| < tol`` or ``max_iter`` rescalings of that layer. Biases and other leaves are left as they are.

  The layers are visited in the order the forward pass first reads their kernels (from the jaxpr of
  ``model(x)``), each rescaled up to ``max_iter`` times, one forward pass per rescaling. A host loop (the stopping
  rule is data-dependent); the forward pass is jitted.

  Args:
    key: PRNG key for the orthonormal draws.
    model: the NNX model (its parameters are the starting point; it is not modified).
    x: a calibration batch (the paper uses one minibatch).
    include: regex on the ``/``-joined path of the kernels to initialize.
    tol: ``Tol_var`` (paper: 0.1).
    max_iter: ``T_max`` rescalings per layer (paper: 10).
    orthogonal: step (1).

  Returns:
    The parameters (plain nested dict, ``nnx.to_pure_dict`` form).

  Raises:
    ValueError: bad ``tol``/``max_iter``, no kernel selected, or a selected kernel whose module output is not
      captured.
  """
  check_range("tol", tol, 0.0, None, low_inclusive=False)
  if int(max_iter) != max_iter or max_iter < 1:
    raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}.")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(params))
  flat = _flat(params)
  rx = re.compile(include)
  kernels = [p for p, v in flat.items() if rx.search(p) and jnp.ndim(v) >= 2]
  if not kernels:
    raise ValueError(f"include={include!r} selects no kernel (ndim >= 2); paths are {list(flat)[:6]}...")
  if orthogonal:
    init = jax.nn.initializers.orthogonal()
    for i, path in enumerate(kernels):
      w = flat[path]
      q = init(jax.random.fold_in(key, i), (int(np.prod(w.shape[:-1])), w.shape[-1]), jnp.float32)
      _set(params, path, q.reshape(w.shape).astype(w.dtype))
  modules = {path: path.rsplit("/", 1)[0] for path in kernels}

  @jax.jit
  def variances(params):
    outs = layer_outputs(nnx.merge(graphdef, params, rest), x)
    return {m: jnp.var(outs[m].astype(jnp.float32)) if m in outs else jnp.nan for m in set(modules.values())}

  for path in _execution_order(lambda p: nnx.merge(graphdef, p, rest)(x), params, kernels):
    for _ in range(int(max_iter)):
      var = float(variances(params)[modules[path]])
      if not np.isfinite(var):
        raise ValueError(f"lsuv: the output of the module owning {path!r} was not captured (or is not finite).")
      if abs(var - 1.0) < tol or var == 0.0:  # 0: a dead layer, which no scale fixes
        break
      w = _flat(params)[path]
      _set(params, path, (w / np.sqrt(var)).astype(w.dtype))
  return params


def uniform_indices(teacher_dim: int, student_dim: int) -> np.ndarray:
  """Evenly spaced indices selecting ``student_dim`` of ``teacher_dim`` entries (Xu et al., "Initializing Models
  with Larger Ones", arXiv:2311.18823, Sec. 3 "uniform selection"): ``arange(s) * (t // s)`` when ``s`` divides
  ``t``, else ``round(linspace(0, t - 1, s))`` -- the official ``uniform_element_selection``."""
  if student_dim > teacher_dim or student_dim < 1:
    raise ValueError(f"student dimension must lie in [1, teacher dimension {teacher_dim}], got {student_dim}.")
  if teacher_dim % student_dim == 0:
    return np.arange(student_dim) * (teacher_dim // student_dim)
  # torch.round rounds half to even, like np.round
  return np.round(np.linspace(0, teacher_dim - 1, student_dim)).astype(np.int64)


def weight_selection(teacher_params: PyTree, student_shapes: PyTree, *,
                     layer_map: Mapping[str, str] | None = None, exclude: str | None = None,
                     method: str = "uniform", key: jax.Array | None = None) -> PyTree:
  """Initialize a smaller student from a larger teacher of the same family by selecting weights (Xu et al.,
  "Initializing Models with Larger Ones", arXiv:2311.18823, Sec. 3).

  (1) Layer selection: each student leaf takes the teacher leaf at the same path (so a shallower student gets the
  teacher's *first* layers, the paper's default), or ``layer_map[student_path]``. (2) Component mapping: the same
  path. (3) Element selection, per dimension: ``"uniform"`` (default; :func:`uniform_indices`), ``"consecutive"``
  (the first ``s`` indices) or ``"random"`` (sorted random indices, drawn once per (teacher, student) dimension
  pair from ``key``). The index set depends only on the pair of sizes, so every tensor sharing a dimension gets the
  same indices (the paper's consistency). Leaves matching ``exclude`` (e.g. a classifier head with other classes,
  the official script skips ``head``) keep the student's values. A student leaf equal in shape to the teacher's is
  copied unchanged.

  Args:
    teacher_params: the teacher's parameters.
    student_shapes: the student's parameters (arrays; leaves matching ``exclude`` are kept) or shapes.
    layer_map: ``{student path: teacher path}`` overrides.
    exclude: regex of student paths to leave alone.
    method: ``"uniform"``, ``"consecutive"`` or ``"random"``.
    key: PRNG key for ``"random"``.

  Returns:
    The student's parameters with the student's structure and the teacher's dtypes.

  Raises:
    ValueError: a student path with no teacher counterpart, a rank mismatch, or a student dimension larger than the
      teacher's (naming the path); an unknown method.
  """
  if method not in ("uniform", "consecutive", "random"):
    raise ValueError(f"method must be one of ['uniform', 'consecutive', 'random'], got {method!r}.")
  if method == "random" and key is None:
    raise ValueError("method='random' needs key=.")
  teacher = _flat(teacher_params)
  layer_map = dict(layer_map or {})
  rx = re.compile(exclude) if exclude is not None else None
  random_sets: dict[tuple[int, int], np.ndarray] = {}

  def indices(t: int, s: int) -> np.ndarray:
    if s > t:
      raise ValueError(f"student dimension {s} is larger than the teacher's {t}.")
    if method == "uniform":
      return uniform_indices(t, s)
    if method == "consecutive":
      return np.arange(s)
    if (t, s) not in random_sets:
      k = jax.random.fold_in(key, t * 1_000_003 + s)
      random_sets[(t, s)] = np.sort(np.asarray(jax.random.choice(k, t, (s,), replace=False)))
    return random_sets[(t, s)]

  def select(path, leaf):
    p = path_str(path)
    if rx is not None and rx.search(p):
      if isinstance(leaf, jax.ShapeDtypeStruct):
        raise ValueError(f"weight_selection: excluded leaf {p!r} needs a value, got only its shape.")
      return leaf
    source = layer_map.get(p, p)
    if source not in teacher:
      raise ValueError(f"weight_selection: student parameter {p!r} has no teacher parameter {source!r}; pass "
                       f"layer_map={{{p!r}: teacher_path}} or exclude=.")
    w = np.asarray(teacher[source])
    shape = tuple(leaf.shape)
    if w.ndim != len(shape):
      raise ValueError(f"weight_selection: {p!r} has rank {len(shape)}, the teacher's {source!r} rank {w.ndim}.")
    try:
      for dim, s in enumerate(shape):
        w = np.take(w, indices(w.shape[dim], s), axis=dim)
    except ValueError as e:
      raise ValueError(f"weight_selection: {p!r} (shape {shape}) from {source!r} ({teacher[source].shape}): {e}") \
          from e
    return jnp.asarray(w, dtype=jnp.result_type(teacher[source]))

  return jax.tree_util.tree_map_with_path(select, student_shapes)
