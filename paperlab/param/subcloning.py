"""Weight subcloning: initialize a smaller transformer from a larger pretrained one.

Samragh et al., "Weight subcloning: direct initialization of transformers using larger pretrained ones",
arXiv:2312.09299. Three steps, each a function here:

1. **Neuron importance** (:func:`transformer_importance`): the mean absolute activation of every neuron over a
   calibration batch (over batch and tokens). The residual-stream (embedding) dimensions are ranked *once* for the
   whole network -- the paper observes that the same few dimensions carry large values in every layer, and the
   residual connections tie the dimension across layers -- from the mean over blocks of the block outputs' scores.
   FFN neurons and attention heads are ranked per block.
2. **Block removal** (:func:`blocks_to_keep`): whole blocks are removed; the paper's additive-residual observation
   (a middle block changes the residual stream least) makes ``"middle"`` (keep the first and last blocks, remove
   the middle ones) the default.
3. **Weight sampling and scaling** (:func:`subclone`): every tensor keeps the top-ranked indices of each of its
   dimensions, consistently across layers; LayerNorm gains are multiplied by ``sqrt(d / d')``. The scaling keeps
   what LayerNorm hands to the next layer at the teacher's scale: the kept dimensions are the large ones, so the
   subsampled residual vector has about the teacher's squared norm spread over ``d'`` instead of ``d`` entries,
   its standard deviation grows by ``sqrt(d / d')`` and the normalized output shrinks by ``sqrt(d' / d)``.

The selection itself reuses :func:`paperlab.param.weight_selection`: the teacher is first permuted so that the kept
indices of every dimension come first (in their original order; the permutation is function-preserving), then
``weight_selection(..., method="consecutive", layer_map=...)`` takes the leading indices and maps the student's
blocks to the kept teacher blocks.

The parameter layout is that of ``paperlab.models.CharTransformer`` (a pre-LN decoder, ``nnx.to_pure_dict`` form):
``embed/embedding``, ``pos``, ``blocks/<i>/{ln1,ln2}/{scale,bias}``, ``blocks/<i>/attn/qkv/kernel`` (``(d, 3 h
d_h)``), ``blocks/<i>/attn/out/kernel`` (``(h d_h, d)``), optional ``attn/{q,k}_norm/scale``,
``blocks/<i>/fc1/{kernel,bias}``, ``blocks/<i>/fc2/{kernel,bias}``, ``ln_f/{scale,bias}`` and ``head/kernel``.
Heads are removed whole: the head dimension ``d_h`` is kept, so the student has ``h'`` heads of the teacher's
size. Subcloning is a host-side step (index sets have data-dependent values); importance is jittable.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paperlab._tree import path_str
from paperlab.param.coordinates import layer_outputs
from paperlab.param.inits import weight_selection

PyTree = Any

__all__ = ["TransformerImportance", "neuron_importance", "transformer_importance", "blocks_to_keep", "subclone"]

DROPS = ("middle", "last", "first")
_BLOCK = re.compile(r"^blocks/(\d+)/(.*)$")


class TransformerImportance(NamedTuple):
  """Neuron importances of a transformer (Samragh et al., arXiv:2312.09299, Sec. 4.1).

  Attributes:
    residual: ``(d,)`` one score per residual-stream (embedding) dimension, shared by all layers.
    ffn: ``(L, d_ff)`` per block, one score per FFN hidden neuron.
    heads: ``(L, h)`` per block, one score per attention head.
  """

  residual: jax.Array
  ffn: jax.Array
  heads: jax.Array


def neuron_importance(activations: jax.Array) -> jax.Array:
  """Mean absolute activation per neuron, over every axis but the last (batch and tokens): the importance score
  of Samragh et al. (arXiv:2312.09299, Sec. 4.1). Jittable; float32 output.

  Raises:
    ValueError: ``activations`` with fewer than 2 dimensions.
  """
  activations = jnp.asarray(activations)
  if activations.ndim < 2:
    raise ValueError(f"activations must have shape (..., neurons) with at least one batch axis, got shape "
                     f"{activations.shape}.")
  return jnp.mean(jnp.abs(activations.astype(jnp.float32)), axis=tuple(range(activations.ndim - 1)))


def _layer_norm(x: jax.Array, norm: Any) -> jax.Array:
  return norm(x) if norm is not None else x


def _head_outputs(qkv: jax.Array, num_heads: int, q_norm: Any, k_norm: Any) -> jax.Array:
  """Per-head causal attention outputs ``(b, t, h, d_h)`` from the fused ``qkv`` projection (the model's own
  computation before its output projection)."""
  b, t, three_d = qkv.shape
  head_dim = three_d // (3 * num_heads)
  q, k, v = jnp.moveaxis(qkv.reshape(b, t, 3, num_heads, head_dim), 2, 0)
  q, k = _layer_norm(q, q_norm), _layer_norm(k, k_norm)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(head_dim, q.dtype))
  scores = jnp.where(jnp.tril(jnp.ones((t, t), dtype=bool)), scores, jnp.finfo(scores.dtype).min)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


def transformer_importance(model: nnx.Module, tokens: jax.Array, *,
                           activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu) -> TransformerImportance:
  """Importance of every residual dimension, FFN neuron and attention head on a calibration batch (Samragh et
  al., "Weight subcloning", arXiv:2312.09299, Sec. 4.1: mean magnitude of the activations over batch and tokens).

  * residual dimension ``i``: the mean over blocks of :func:`neuron_importance` of each block's output (the
    residual stream after it); one ranking for the whole network;
  * FFN neuron: :func:`neuron_importance` of ``activation(fc1(x))`` in its block;
  * head: the mean absolute value of the head's attention output (before the output projection).

  Works with ``paperlab.models.CharTransformer`` and any model with its module names (``blocks[i].attn.qkv``,
  ``.num_heads``, optional ``.q_norm``/``.k_norm``, ``blocks[i].fc1``). Jittable (wrap in ``nnx.jit``).

  Args:
    model: the pretrained teacher.
    tokens: a calibration batch ``(batch, time)``.
    activation: the FFN non-linearity (``CharTransformer`` uses ``jax.nn.gelu``).

  Raises:
    ValueError: a model without ``blocks`` or whose block outputs were not captured.
  """
  blocks = getattr(model, "blocks", None)
  if blocks is None or len(blocks) == 0:
    raise ValueError(f"transformer_importance needs a model with a non-empty .blocks list, got "
                     f"{type(model).__name__}.")
  outs = layer_outputs(model, tokens)
  residual, ffn, heads = [], [], []
  for i, block in enumerate(blocks):
    names = (f"blocks/{i}", f"blocks/{i}/fc1", f"blocks/{i}/attn/qkv")
    missing = [n for n in names if n not in outs]
    if missing:
      raise ValueError(f"transformer_importance: outputs {missing} were not captured; the model must have "
                       "blocks[i].attn.qkv and blocks[i].fc1 submodules.")
    residual.append(neuron_importance(outs[names[0]]))
    ffn.append(neuron_importance(activation(outs[names[1]])))
    attn = block.attn
    o = _head_outputs(outs[names[2]], attn.num_heads, getattr(attn, "q_norm", None), getattr(attn, "k_norm", None))
    heads.append(jnp.mean(jnp.abs(o.astype(jnp.float32)), axis=(0, 1, 3)))
  return TransformerImportance(jnp.mean(jnp.stack(residual), axis=0), jnp.stack(ffn), jnp.stack(heads))


def blocks_to_keep(num_blocks: int, target_blocks: int, drop: str = "middle") -> tuple[int, ...]:
  """Indices of the teacher blocks a ``target_blocks``-deep student keeps (Samragh et al., arXiv:2312.09299,
  Sec. 4.2: remove whole blocks; a middle block changes the residual stream least).

  ``"middle"`` keeps the first ``ceil(target/2)`` and the last ``floor(target/2)`` blocks; ``"last"`` removes the
  last blocks (keeps the first ``target``); ``"first"`` removes the first ones.

  Raises:
    ValueError: ``target_blocks`` outside ``[1, num_blocks]`` or an unknown ``drop``.
  """
  if drop not in DROPS:
    raise ValueError(f"drop must be one of {list(DROPS)}, got {drop!r}.")
  if int(target_blocks) != target_blocks or not 1 <= target_blocks <= num_blocks:
    raise ValueError(f"target_blocks must be an integer in [1, num_blocks={num_blocks}], got {target_blocks!r}.")
  if drop == "last":
    return tuple(range(target_blocks))
  if drop == "first":
    return tuple(range(num_blocks - target_blocks, num_blocks))
  head = (target_blocks + 1) // 2
  return tuple(range(head)) + tuple(range(num_blocks - (target_blocks - head), num_blocks))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
  """The ``k`` highest-scoring indices in their original order (ties: the lower index first)."""
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]
  return np.sort(order)


def _front(kept: np.ndarray, n: int) -> np.ndarray:
  """A permutation of ``range(n)`` that puts ``kept`` first."""
  rest = np.setdiff1d(np.arange(n), kept)
  return np.concatenate([kept, rest])


# Axis roles of every leaf of the layout: "d" residual, "ffn" FFN hidden, "heads" attention heads, None kept.
# qkv and out are viewed as (d, 3, h, d_h) and (h, d_h, d) so that heads are a dimension of their own.
_AXES = (
    (re.compile(r"^embed/embedding$"), (None, "d")),
    (re.compile(r"^pos$"), (None, "d")),
    (re.compile(r"^head/kernel$"), ("d", None)),
    (re.compile(r"(^|/)(ln1|ln2|ln_f)/(scale|bias)$"), ("d",)),
    (re.compile(r"/attn/qkv/kernel$"), ("d", None, "heads", None)),
    (re.compile(r"/attn/out/kernel$"), ("heads", None, "d")),
    (re.compile(r"/attn/(q_norm|k_norm)/scale$"), (None,)),
    (re.compile(r"/fc1/kernel$"), ("d", "ffn")),
    (re.compile(r"/fc1/bias$"), ("ffn",)),
    (re.compile(r"/fc2/kernel$"), ("ffn", "d")),
    (re.compile(r"/fc2/bias$"), ("d",)),
)


def _axes(path: str) -> tuple:
  for rx, axes in _AXES:
    if rx.search(path):
      return axes
  raise ValueError(f"subclone: parameter {path!r} is not part of the supported transformer layout (embed/"
                   "embedding, pos, blocks/<i>/{ln1,ln2,attn/qkv,attn/out,fc1,fc2}, ln_f, head); see the module "
                   "docstring.")


def _view(path: str, shape: tuple, head_dim: int) -> tuple:
  if path.endswith("attn/qkv/kernel"):
    return (shape[0], 3, shape[1] // (3 * head_dim), head_dim)
  if path.endswith("attn/out/kernel"):
    return (shape[0] // head_dim, head_dim, shape[1])
  return tuple(shape)


def _flat_shapes(tree: PyTree) -> dict[str, tuple]:
  return {path_str(p): tuple(jnp.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _num_blocks(flat: dict[str, Any], what: str) -> int:
  ids = {int(m.group(1)) for p in flat if (m := _BLOCK.match(p))}
  if not ids or ids != set(range(len(ids))):
    raise ValueError(f"subclone: {what} must hold blocks/0 ... blocks/<L-1>, got block ids {sorted(ids)}.")
  return len(ids)


def subclone(teacher_params: PyTree, student_shapes: PyTree, importance: TransformerImportance, *, num_heads: int,
             drop: str = "middle", keep_blocks: Sequence[int] | None = None, scale_norms: bool = True) -> PyTree:
  """Weight subcloning (Samragh et al., "Weight subcloning: direct initialization of transformers using larger
  pretrained ones", arXiv:2312.09299, Sec. 4): the student's parameters taken from the teacher's.

  The student's sizes are read from ``student_shapes``: residual width ``d'``, FFN width ``d_ff'``, depth ``L'``
  and (with the teacher's head size ``d / num_heads``) its number of heads ``h'``. Each dimension keeps its
  top-ranked indices by ``importance`` -- the residual ones in every tensor of every layer (one index set, the
  paper's consistent selection), FFN neurons and heads per kept block -- in their original order; blocks are kept
  by :func:`blocks_to_keep` (or ``keep_blocks``); then LayerNorm gains (``ln1``, ``ln2``, ``ln_f`` scales) are
  multiplied by ``sqrt(d / d')`` (``scale_norms``). With the teacher's own shapes the teacher is returned unchanged.

  Args:
    teacher_params: the pretrained teacher's parameters (``nnx.to_pure_dict`` form; layout in the module
      docstring).
    student_shapes: the student's parameters or shapes (``paperlab.param.param_shapes`` of the student).
    importance: from :func:`transformer_importance` on the teacher.
    num_heads: the teacher's number of heads (the head size ``d / num_heads`` is kept).
    drop: which blocks to remove, see :func:`blocks_to_keep` (default ``"middle"``).
    keep_blocks: explicit teacher block indices, one per student block (overrides ``drop``).
    scale_norms: multiply LayerNorm gains by ``sqrt(d / d')``.

  Returns:
    The student's parameters (the student's structure, the teacher's dtypes).

  Raises:
    ValueError: a leaf outside the layout (naming it), importances whose sizes differ from the teacher's, a
      student larger than the teacher, or a student width that is not a whole number of heads.
  """
  teacher = {p: np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(teacher_params)[0]
             for p in [path_str(p)]}
  student = _flat_shapes(student_shapes)
  for p in list(teacher) + list(student):
    _axes(p)
  for name, flat in (("teacher_params", teacher), ("student_shapes", student)):
    for leaf in ("embed/embedding", "blocks/0/fc1/kernel", "blocks/0/attn/qkv/kernel"):
      if leaf not in flat:
        raise ValueError(f"subclone: {name} has no {leaf!r} (the layout is in the module docstring).")
  L, L_s = _num_blocks(teacher, "teacher_params"), _num_blocks(student, "student_shapes")
  d, d_s = teacher["embed/embedding"].shape[-1], student["embed/embedding"][-1]
  f, f_s = teacher["blocks/0/fc1/kernel"].shape[-1], student["blocks/0/fc1/kernel"][-1]
  if int(num_heads) != num_heads or num_heads < 1 or teacher["blocks/0/attn/qkv/kernel"].shape[-1] % (3 * num_heads):
    raise ValueError(f"num_heads must be a positive integer dividing the teacher's attention width "
                     f"{teacher['blocks/0/attn/qkv/kernel'].shape[-1] // 3}, got {num_heads!r}.")
  head_dim = teacher["blocks/0/attn/qkv/kernel"].shape[-1] // (3 * num_heads)
  width_s = student["blocks/0/attn/qkv/kernel"][-1] // 3
  if width_s % head_dim:
    raise ValueError(f"subclone removes whole heads: the student's attention width {width_s} must be a multiple of "
                     f"the teacher's head size {head_dim}.")
  h_s = width_s // head_dim
  for name, got, want in (("importance.residual", np.shape(importance.residual), (d,)),
                          ("importance.ffn", np.shape(importance.ffn), (L, f)),
                          ("importance.heads", np.shape(importance.heads), (L, num_heads))):
    if tuple(got) != want:
      raise ValueError(f"{name} has shape {tuple(got)}, the teacher needs {want}.")
  for name, s, t in (("width", d_s, d), ("FFN width", f_s, f), ("number of heads", h_s, num_heads)):
    if not 1 <= s <= t:
      raise ValueError(f"subclone: the student's {name} {s} must lie in [1, teacher's {t}].")
  if keep_blocks is None:
    kept = blocks_to_keep(L, L_s, drop)
  else:
    kept = tuple(int(i) for i in keep_blocks)
    if len(kept) != L_s or not all(0 <= i < L for i in kept):
      raise ValueError(f"keep_blocks must hold {L_s} teacher block indices in [0, {L}), got {tuple(keep_blocks)}.")

  perm_d = _front(_top(importance.residual, d_s), d)
  perms = {b: {"d": perm_d, "ffn": _front(_top(importance.ffn[b], f_s), f),
               "heads": _front(_top(importance.heads[b], h_s), num_heads)} for b in range(L)}

  def permuted(path: str, w: np.ndarray) -> np.ndarray:
    m = _BLOCK.match(path)
    table = perms[int(m.group(1))] if m else {"d": perm_d}
    w = w.reshape(_view(path, w.shape, head_dim))
    for axis, role in enumerate(_axes(path)):
      if role is not None:
        w = np.take(w, table[role], axis=axis)
    return w

  viewed_teacher = {}
  for path, w in teacher.items():
    _set_path(viewed_teacher, path, permuted(path, w))
  viewed_student = {}
  layer_map = {}
  for path, shape in student.items():
    _set_path(viewed_student, path, jax.ShapeDtypeStruct(_view(path, shape, head_dim), jnp.float32))
    m = _BLOCK.match(path)
    if m:
      layer_map[path] = f"blocks/{kept[int(m.group(1))]}/{m.group(2)}"
  selected = weight_selection(viewed_teacher, viewed_student, layer_map=layer_map, method="consecutive")
  scale = float(np.sqrt(d / d_s)) if scale_norms else 1.0
  flat_selected = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(selected)[0]}

  def finish(path, leaf):
    p = path_str(path)
    w = flat_selected[p].reshape(student[p])
    if scale != 1.0 and re.search(r"(^|/)(ln1|ln2|ln_f)/scale$", p):
      w = (w.astype(jnp.float32) * scale).astype(w.dtype)
    return w

  return jax.tree_util.tree_map_with_path(finish, _as_tree_of_shapes(student_shapes))


def _as_tree_of_shapes(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _set_path(tree: dict, path: str, value) -> None:
  *parents, leaf = path.split("/")
  node = tree
  for k in parents:
    node = node.setdefault(k, {})
  node[leaf] = value
