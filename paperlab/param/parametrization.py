"""Width (and depth) parametrizations of any Flax NNX model: SP, NTK, muP, u-muP, depth-muP.

A parametrization gives every parameter three numbers, from its *role* and its shape against a base model:

* an **init std** (and mean: 1 for norm scales) -- :func:`init_params` draws fresh parameters from it;
* a **forward multiplier** ``c`` -- the model computes with ``c * w`` instead of the stored ``w``
  (:func:`apply_multipliers` on a parameter pytree, :func:`multiplied` on an NNX model inside a loss);
* a **learning-rate multiplier** -- :func:`scale_by_param_lr` multiplies each leaf's update by it, chained after
  any optimizer's preconditioning (``optax.chain(optax.scale_by_adam(), scale_by_param_lr(p), ...)``, or the
  aliases :func:`mu_adam` / :func:`mu_sgd`).

Roles (:data:`ROLES`) are inferred from shapes: the *width* dimensions are those whose size differs between the
base model and the model (or between the base and a ``delta`` model of another width, as in ``mup``'s
``set_base_shapes(model, base, delta=...)``). A kernel follows Flax's layout: the last axis is fan-out, every other
axis fan-in (``Linear (in, out)``, ``Conv (kh, kw, in, out)``, ``Embed (vocab, features)``). Then

* fan-in and fan-out both width -> ``hidden``; only fan-out -> ``input`` (``embedding`` when the leaf is named
  ``embedding``, a lookup table); only fan-in -> ``output`` (the readout); neither -> ``fixed``;
* a vector named ``bias`` -> ``bias``; named ``scale`` -> ``norm``; another vector with a width dimension has no
  inferable role and raises ``ValueError`` naming its path; scalars and vectors without one are ``fixed``.

``roles={regex: role}`` overrides the inference (first regex that ``re.search``-es the ``/``-joined path wins).

The rules (``m_in``, ``m_out`` = fan-in / fan-out width multipliers ``n / n_base``; ``sigma`` = ``init_gain``):

============  ==================  =======================  ================  =====================
kind / role    init std           forward multiplier       Adam LR mult      SGD LR mult
============  ==================  =======================  ================  =====================
sp  weights    sigma/sqrt(fan_in)  1                        1                 1
mup input      sigma/sqrt(fan_in)  1                        1                 m_out
mup hidden     sigma/sqrt(fan_in)  1                        1/m_in            m_out/m_in
mup output     sigma*sqrt(m_in/    output_mult/m_in         1                 m_in
               fan_in) (0: zero)
mup bias/norm  base model's std     1                        1                 m (its width mult)
ntk weights    1                   sigma/sqrt(fan_in)       1                 1
ntk bias       1                   ntk_bias_mult (0.1)      1                 1
umup weights   1                   1/sqrt(fan_in)           1/sqrt(fan_in)    (as Adam)
umup embedding 1                   1                        1/sqrt(fan_out)   (as Adam)
umup output    1                   1/fan_in                 1                 (as Adam)
============  ==================  =======================  ================  =====================

``mup`` is the form of Tensor Programs V's Table 8 that the ``mup`` package implements (``MuReadout`` with
``output_mult / width_mult``, ``set_base_shapes`` rescaling of the readout and the biases, ``MuAdam`` /
``MuSGD`` param groups): by abc-symmetry it trains exactly like Table 3's form (readout init var ``1/fan_in^2``,
readout Adam LR ``eta/fan_in``), and at the base shapes it *is* SP. ``umup`` follows the ``unit-scaling`` package
(absolute fan-ins: u-muP drops base shapes), including its bias rule: a unit-scaled layer scales ``x W + b``, so a
bias gets its layer's multiplier. ``ntk`` is Jacot et al.'s parametrization with a constant learning rate.
Biases' SP std is ``bias_gain / sqrt(fan_in of the layer)`` (PyTorch's convention; the layer is the sibling kernel
under the same parent) and muP's is the base model's, the rescaling ``set_base_shapes`` applies; the default
``bias_gain=0`` is Flax's zero init. Norm scales start at 1, embeddings at ``N(0, embedding_std^2)``.

What the rules do not change in the model itself, and a muP transformer also needs: attention logits scaled by
``1/d_head`` instead of ``1/sqrt(d_head)`` (TP5 Sec. 4; a model option), and u-muP's unit-scaled non-linearities,
softmax, residual adds and loss (the ``unit-scaling`` package's ops); depth scaling is :func:`depth_mup`.

References:
  Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer",
  arXiv:2203.03466 (Tables 3 and 8). Yang & Hu, "Feature Learning in Infinite-Width Neural Networks",
  arXiv:2011.14522 (abc-parametrizations). Jacot et al., "Neural Tangent Kernel", arXiv:1806.07572. Blake et al.,
  "u-muP: The Unit-Scaled Maximal Update Parametrization", arXiv:2407.17465. Bordelon et al., "Depthwise
  Hyperparameter Transfer in Residual Networks", arXiv:2309.16620; Yang et al., "Tensor Programs VI: Feature
  Learning in Infinite-Depth Neural Networks", arXiv:2310.02244.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab._checks import check_choice, check_non_negative, check_positive
from paperlab._tree import path_str

PyTree = Any

__all__ = [
    "ROLES", "KINDS", "OPTIMIZERS", "LeafRule", "Parametrization", "param_shapes", "infer_roles", "parametrize",
    "depth_mup", "init_params", "apply_multipliers", "multiplied", "scale_by_param_lr", "mu_adam", "mu_sgd",
]

ROLES = ("input", "embedding", "hidden", "output", "bias", "norm", "fixed")
KINDS = ("sp", "ntk", "mup", "umup")
OPTIMIZERS = ("adam", "sgd")
_MATRIX_ROLES = ("input", "embedding", "hidden", "output", "fixed")


@dataclasses.dataclass(frozen=True)
class LeafRule:
  """What a parametrization prescribes for one parameter leaf.

  Attributes:
    path: ``/``-joined key path.
    role: one of :data:`ROLES`.
    shape, base_shape: the leaf's shape in the model and in the base model.
    fan_in, fan_out: the layer's fan-in (product of every axis but the last; for a bias or norm scale, its
      sibling kernel's fan-in, else 1) and fan-out (last axis).
    fan_in_mult, fan_out_mult: width multipliers ``n / n_base`` of the fan-in and fan-out (1 where not width).
    init_mean, init_std: the fresh-init distribution ``N(init_mean, init_std^2)``.
    init_scale: ``init_std`` over SP's init std at the same shape (``mup.set_base_shapes``' rescaling; 1 where
      SP's std is 0).
    multiplier: forward multiplier (the model uses ``multiplier * w``).
    lr_multiplier: learning-rate multiplier.
  """

  path: str
  role: str
  shape: tuple
  base_shape: tuple
  fan_in: int
  fan_out: int
  fan_in_mult: float
  fan_out_mult: float
  init_mean: float
  init_std: float
  init_scale: float
  multiplier: float
  lr_multiplier: float


class Parametrization(NamedTuple):
  """A parametrization of one model: ``rules[path] -> LeafRule`` plus the tree structure to rebuild pytrees.

  ``init_stds``, ``multipliers`` and ``lr_multipliers`` are pytrees of Python floats with the structure of the
  parameters it was built from (plain nested dicts, the ``nnx.to_pure_dict`` form that
  :class:`paperlab.train.TrainState` holds).
  """

  kind: str
  optimizer: str
  rules: Mapping[str, LeafRule]
  treedef: Any

  def _tree(self, field: str) -> PyTree:
    return jax.tree.unflatten(self.treedef, [getattr(r, field) for r in self.rules.values()])

  @property
  def roles(self) -> PyTree:
    return self._tree("role")

  @property
  def init_stds(self) -> PyTree:
    return self._tree("init_std")

  @property
  def init_scales(self) -> PyTree:
    return self._tree("init_scale")

  @property
  def multipliers(self) -> PyTree:
    return self._tree("multiplier")

  @property
  def lr_multipliers(self) -> PyTree:
    return self._tree("lr_multiplier")


# ----------------------------------------------------------------------------------------------------------------
# shapes and roles


def param_shapes(model_or_params: Any) -> PyTree:
  """The parameters' shapes as a plain nested dict of ``jax.ShapeDtypeStruct``.

  Accepts an ``nnx.Module`` (its ``nnx.Param`` variables; ``nnx.eval_shape(lambda: Model(...))`` gives a base
  model without allocating it), an ``nnx.State``, or a pytree of arrays / ``ShapeDtypeStruct``.
  """
  if isinstance(model_or_params, nnx.Module):
    model_or_params = nnx.state(model_or_params, nnx.Param)
  if isinstance(model_or_params, nnx.State):
    model_or_params = nnx.to_pure_dict(model_or_params)
  try:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), model_or_params)
  except TypeError as e:
    raise TypeError(f"model_or_params must be an nnx.Module, an nnx.State or a pytree of arrays, got "
                    f"{type(model_or_params).__name__}: {e}") from e


def _flat_shapes(tree: PyTree, name: str) -> tuple[dict[str, tuple], Any]:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(tree))
  if not leaves:
    raise ValueError(f"{name} holds no parameters.")
  return {path_str(p): tuple(x.shape) for p, x in leaves}, treedef


def _width_axes(path: str, shape: tuple, base: tuple, delta: tuple | None) -> tuple[bool, ...]:
  if len(shape) != len(base) or (delta is not None and len(delta) != len(base)):
    raise ValueError(f"parameter {path!r}: shape {shape} and base shape {base}"
                     + (f" and delta shape {delta}" if delta is not None else "") + " differ in rank; a "
                     "parametrization needs the same architecture at every width.")
  ref = shape if delta is None else delta
  return tuple(a != b for a, b in zip(base, ref))


def _infer_role(path: str, shape: tuple, base: tuple, width: tuple[bool, ...]) -> str:
  name = path.rsplit("/", 1)[-1]
  if len(shape) == 0:
    return "fixed"
  if len(shape) == 1:
    if name == "bias":
      return "bias"
    if name == "scale":
      return "norm"
    if not width[0]:
      return "fixed"
    raise ValueError(f"cannot infer the role of parameter {path!r} (shape {shape}, base shape {base}): a vector "
                     f"with a width dimension that is neither a 'bias' nor a norm 'scale'; pass roles={{regex: "
                     f"role}} with role one of {list(ROLES)}.")
  fan_in_width, fan_out_width = any(width[:-1]), width[-1]
  if fan_in_width and fan_out_width:
    return "hidden"
  if fan_out_width:
    return "embedding" if name == "embedding" else "input"
  if fan_in_width:
    return "output"
  return "fixed"


def infer_roles(model_or_params: Any, base: Any, *, delta: Any = None,
                roles: Mapping[str, str] | None = None) -> dict[str, str]:
  """Role of every parameter (``path -> role``), inferred from shapes against ``base`` (see the module
  docstring), overridden by ``roles={regex: role}``.

  Args:
    model_or_params: the model (an ``nnx.Module``, ``nnx.State`` or parameter pytree).
    base: the base model of the same architecture (``nnx.eval_shape`` of it is enough).
    delta: optional model of another width that marks the width dimensions (needed when ``model`` has the base
      shapes, as ``mup``'s ``delta``).
    roles: overrides, ``{regex: role}``; the first regex that searches the path wins.

  Raises:
    ValueError: paths or ranks that differ from the base, an unknown role, or a role that cannot be inferred
      (naming the path).
  """
  shapes, _ = _flat_shapes(model_or_params, "model_or_params")
  base_shapes, _ = _flat_shapes(base, "base")
  delta_shapes = None if delta is None else _flat_shapes(delta, "delta")[0]
  for name, other in (("base", base_shapes), ("delta", delta_shapes)):
    if other is not None and set(other) != set(shapes):
      missing, extra = sorted(set(shapes) - set(other)), sorted(set(other) - set(shapes))
      raise ValueError(f"{name} does not have the model's parameters: missing {missing[:3]}, extra {extra[:3]}.")
  overrides = []
  for regex, role in (roles or {}).items():
    check_choice(f"roles[{regex!r}]", role, ROLES)
    overrides.append((re.compile(regex), role))
  out = {}
  for path, shape in shapes.items():
    base_shape = base_shapes[path]
    width = _width_axes(path, shape, base_shape, None if delta_shapes is None else delta_shapes[path])
    forced = next((role for rx, role in overrides if rx.search(path)), None)
    out[path] = forced if forced is not None else _infer_role(path, shape, base_shape, width)
  return out


# ----------------------------------------------------------------------------------------------------------------
# the rules


def _sibling_kernel(path: str, shapes: Mapping[str, tuple], size: int) -> str | None:
  """The matrix under the same parent whose fan-out equals ``size`` (the layer a bias or norm scale belongs to)."""
  parent = path.rsplit("/", 1)[0] if "/" in path else ""
  for other, shape in shapes.items():
    if other != path and len(shape) >= 2 and shape[-1] == size and (other.rsplit("/", 1)[0] if "/" in other
                                                                     else "") == parent:
      return other
  return None


def _fans(shape: tuple, base: tuple) -> tuple[int, int, int, int]:
  fan_in = int(np.prod(shape[:-1])) if len(shape) >= 2 else 1
  base_fan_in = int(np.prod(base[:-1])) if len(base) >= 2 else 1
  fan_out = int(shape[-1]) if shape else 1
  base_fan_out = int(base[-1]) if base else 1
  return fan_in, base_fan_in, fan_out, base_fan_out


def _rule(kind: str, optimizer: str, role: str, path: str, shape: tuple, base: tuple, layer: tuple | None,
          layer_base: tuple | None, hp: Mapping[str, float]) -> LeafRule:
  fan_in, base_fan_in, fan_out, base_fan_out = _fans(shape, base)
  m_in, m_out = fan_in / base_fan_in, fan_out / base_fan_out
  vector = role in ("bias", "norm") or len(shape) < 2
  if vector and layer is not None:  # a bias or norm scale: the fans of its layer
    fan_in, base_fan_in, _, _ = _fans(layer, layer_base)
    m_in = fan_in / base_fan_in
  elif vector:
    fan_in = base_fan_in = 1
    m_in = 1.0
  sigma, mean = hp["init_gain"], 0.0
  # SP's std at this shape: the reference of init_scale.
  if role == "norm":
    sp_std, mean = 0.0, 1.0
  elif role == "bias":
    sp_std = hp["bias_gain"] / math.sqrt(fan_in)
  elif role == "embedding":
    sp_std = hp["embedding_std"]
  elif len(shape) >= 2:
    sp_std = sigma / math.sqrt(fan_in)
  else:
    sp_std = 0.0
  std, mult, lr = sp_std, 1.0, 1.0
  if role == "fixed" and len(shape) < 2:
    pass  # scalars and width-free vectors: untouched by every kind
  elif kind == "mup":
    if role == "output":
      std = 0.0 if hp["zero_readout"] else sp_std * math.sqrt(m_in)
      mult = hp["output_mult"] / m_in
      lr = 1.0 if optimizer == "adam" else m_in
    elif role == "bias":
      std = hp["bias_gain"] / math.sqrt(base_fan_in)
      lr = 1.0 if optimizer == "adam" else m_out
    elif role == "norm":
      lr = 1.0 if optimizer == "adam" else m_out
    elif role == "hidden":
      lr = 1.0 / m_in if optimizer == "adam" else m_out / m_in
    elif role in ("input", "embedding"):
      lr = 1.0 if optimizer == "adam" else m_out
  elif kind == "ntk":
    if role == "bias":
      std, mult = 1.0, hp["ntk_bias_mult"]
    elif role in ("input", "hidden", "output", "fixed"):
      std, mult = 1.0, sigma / math.sqrt(fan_in)
  elif kind == "umup":
    if role == "bias":
      std = 0.0
      mult = 1.0 / math.sqrt(fan_in) if layer is not None else 1.0
      if layer is not None and hp["_layer_role"] == "output":
        mult = 1.0 / fan_in
      if layer is not None and hp["_layer_role"] == "embedding":
        mult = 1.0
    elif role == "embedding":
      std, lr = 1.0, fan_out ** -0.5
    elif role == "output":
      std, mult = 1.0, 1.0 / fan_in
    elif role in ("input", "hidden", "fixed"):
      std, mult, lr = 1.0, fan_in ** -0.5, fan_in ** -0.5
  scale = std / sp_std if sp_std else 1.0
  return LeafRule(path, role, tuple(shape), tuple(base), fan_in, fan_out, float(m_in), float(m_out), float(mean),
                  float(std), float(scale), float(mult), float(lr))


def parametrize(model_or_params: Any, base: Any, *, kind: str = "mup", optimizer: str = "adam", delta: Any = None,
                roles: Mapping[str, str] | None = None, output_mult: float = 1.0, init_gain: float = 1.0,
                bias_gain: float = 0.0, embedding_std: float = 1.0, zero_readout: bool = False,
                ntk_bias_mult: float = 0.1) -> Parametrization:
  """The per-parameter init std, forward multiplier and LR multiplier of ``kind`` for ``optimizer``.

  Yang et al., "Tensor Programs V" (arXiv:2203.03466), Tables 3 and 8 for ``"mup"``; Jacot et al. (arXiv:1806.07572)
  for ``"ntk"``; Blake et al., "u-muP" (arXiv:2407.17465) for ``"umup"``; ``"sp"`` is the standard fan-in init
  with one global LR. The table of rules is in the module docstring.

  Args:
    model_or_params: the model (``nnx.Module``, ``nnx.State`` or parameter pytree, arrays or shapes).
    base: the base model (same architecture, base width); ``nnx.eval_shape(lambda: Model(width=base))`` is
      enough. Every width factor is relative to it, so at the base shapes muP is SP.
    kind: one of :data:`KINDS`.
    optimizer: ``"adam"`` (any entrywise-normalized optimizer: Adam, AdamW, RMSProp, Adagrad) or ``"sgd"``
      (SGD-like, momentum included): TP5's two tables.
    delta: a model of another width marking the width dimensions (needed when the model has the base shapes).
    roles: ``{regex: role}`` overrides of the inferred roles.
    output_mult: muP's readout multiplier ``alpha_out`` (``MuReadout(output_mult=...)``; default 1).
    init_gain: ``sigma`` of the weights' SP std ``sigma / sqrt(fan_in)`` (1: LeCun normal, Flax's default;
      ``1/sqrt(3)`` is PyTorch's ``nn.Linear`` default).
    bias_gain: biases' SP std is ``bias_gain / sqrt(fan_in)`` (0: Flax's zeros; ``1/sqrt(3)`` PyTorch's).
    embedding_std: SP/muP std of ``embedding`` leaves (1: PyTorch's ``nn.Embedding``).
    zero_readout: muP with the readout initialized at zero (TP5 Sec. D.2; ``MuReadout(readout_zero_init=True)``).
    ntk_bias_mult: NTK's bias multiplier ``beta`` (0.1 in Jacot et al.).

  Returns:
    A :class:`Parametrization`.

  Raises:
    ValueError: an unknown kind/optimizer/role, non-positive gains, or roles that cannot be inferred.
  """
  check_choice("kind", kind, KINDS)
  check_choice("optimizer", optimizer, OPTIMIZERS)
  check_positive("output_mult", output_mult)
  check_positive("init_gain", init_gain)
  check_non_negative("bias_gain", bias_gain)
  check_non_negative("embedding_std", embedding_std)
  check_non_negative("ntk_bias_mult", ntk_bias_mult)
  role_of = infer_roles(model_or_params, base, delta=delta, roles=roles)
  shapes, treedef = _flat_shapes(model_or_params, "model_or_params")
  base_shapes, _ = _flat_shapes(base, "base")
  hp = {"output_mult": output_mult, "init_gain": init_gain, "bias_gain": bias_gain, "embedding_std": embedding_std,
        "zero_readout": bool(zero_readout), "ntk_bias_mult": ntk_bias_mult}
  rules = {}
  for path, shape in shapes.items():
    role = role_of[path]
    layer = layer_base = None
    if role in ("bias", "norm"):
      sibling = _sibling_kernel(path, shapes, shape[-1]) if shape else None
      if sibling is not None:
        layer, layer_base = shapes[sibling], base_shapes[sibling]
        hp = {**hp, "_layer_role": role_of[sibling]}
      else:
        hp = {**hp, "_layer_role": None}
    rules[path] = _rule(kind, optimizer, role, path, shape, base_shapes[path], layer, layer_base, hp)
  return Parametrization(kind, optimizer, rules, treedef)


def depth_mup(parametrization: Parametrization, *, num_blocks: int, base_blocks: int = 1, branch: str | None,
              blocks: str | None = None, branch_mult: float = 1.0) -> Parametrization:
  """Add depth-muP's residual-branch scaling to a width parametrization.

  Bordelon et al., "Depthwise Hyperparameter Transfer in Residual Networks" (arXiv:2309.16620), Eq. 1:
  ``h^{l+1} = h^l + (beta_0 / sqrt(L)) f_l(h^l)``. The branch multiplier ``branch_mult * sqrt(base_blocks /
  num_blocks)`` multiplies the forward multiplier of the leaves that compute each branch's output (``branch``
  regex: the last layer of every residual branch, kernel and bias -- scaling them scales the branch output
  exactly). For Adam-like optimizers the LR of every leaf inside the residual blocks (``blocks`` regex; default
  ``branch``) is multiplied by ``sqrt(base_blocks / num_blocks)`` (Tensor Programs VI, arXiv:2310.02244, Depth-muP
  for Adam, and ``unit-scaling``'s ``lr_scale_for_depth``); SGD's LR is depth-independent (Bordelon et al.),
  except under u-muP, whose SGD follows the Adam rules.
  With ``base_blocks=1`` the factors are absolute (``1/sqrt(L)``), u-muP's convention.

  Args:
    parametrization: from :func:`parametrize`.
    num_blocks: ``L``, the number of residual blocks of the model.
    base_blocks: the base model's depth (factors are ratios to it).
    branch: regex selecting the branch-output leaves; ``None`` leaves the forward pass alone (a model that scales
      its branches itself, as ``unit-scaling``'s residual rule does).
    blocks: regex selecting every leaf inside the residual blocks (for the Adam LR factor); default ``branch``.
    branch_mult: ``beta_0`` (default 1).

  Raises:
    ValueError: non-positive depths or multiplier, or a regex that selects nothing.
  """
  for name, v in (("num_blocks", num_blocks), ("base_blocks", base_blocks)):
    if int(v) != v or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}.")
  check_positive("branch_mult", branch_mult)
  factor = math.sqrt(base_blocks / num_blocks)
  if branch is None and blocks is None:
    raise ValueError("depth_mup needs branch= (forward branch scaling) or blocks= (Adam LR factor), got neither.")
  rx_branch = re.compile(branch) if branch is not None else None
  rx_blocks = re.compile(blocks if blocks is not None else branch)
  if rx_branch is not None and not any(rx_branch.search(p) for p in parametrization.rules):
    raise ValueError(f"branch={branch!r} selects no parameter; paths are {list(parametrization.rules)[:6]}...")
  if not any(rx_blocks.search(p) for p in parametrization.rules):
    raise ValueError(f"blocks={blocks!r} selects no parameter; paths are {list(parametrization.rules)[:6]}...")
  # u-muP's SGD (unit-scaled gradients) follows the Adam rules, depth factor included (unit-scaling's optim.SGD).
  adam_like = parametrization.optimizer == "adam" or parametrization.kind == "umup"
  rules = {}
  for path, r in parametrization.rules.items():
    in_branch = rx_branch is not None and rx_branch.search(path)
    mult = r.multiplier * branch_mult * factor if in_branch else r.multiplier
    lr = r.lr_multiplier * factor if (adam_like and rx_blocks.search(path)) else r.lr_multiplier
    rules[path] = dataclasses.replace(r, multiplier=mult, lr_multiplier=lr)
  return parametrization._replace(rules=rules)


# ----------------------------------------------------------------------------------------------------------------
# applying it


def _table(parametrization_or_tree: Any, field: str) -> dict[str, Any]:
  if isinstance(parametrization_or_tree, Parametrization):
    return {p: getattr(r, field) for p, r in parametrization_or_tree.rules.items()}
  leaves = jax.tree_util.tree_flatten_with_path(parametrization_or_tree)[0]
  return {path_str(p): v for p, v in leaves}


def _map_by_path(fn: Callable, tree: PyTree, table: Mapping[str, Any], what: str) -> PyTree:
  def one(path, x):
    key = path_str(path)
    if key not in table:
      raise ValueError(f"{what}: no entry for parameter {key!r}; it knows {list(table)[:6]}...")
    return fn(x, table[key])

  return jax.tree_util.tree_map_with_path(one, tree)


def init_params(key: jax.Array, params: PyTree, parametrization: Parametrization) -> PyTree:
  """Fresh parameters ``N(init_mean, init_std^2)`` per leaf (norm scales: 1; ``fixed`` scalars and width-free
  vectors keep their value). Same structure and dtypes as ``params``, which may hold ``jax.ShapeDtypeStruct``
  leaves (from ``nnx.eval_shape``: nothing is allocated twice). Jittable with ``parametrization`` closed over (it
  holds Python objects, not arrays): ``jax.jit(lambda k: init_params(k, shapes, p))(key)``.

  The init column of :func:`parametrize`'s table (TP5 Table 3/8, u-muP's unit init, NTK's standard normal).
  """
  table = parametrization.rules
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(key, max(len(leaves), 1))
  out = []
  for (path, x), k in zip(leaves, keys):
    p = path_str(path)
    if p not in table:
      raise ValueError(f"init_params: parameter {p!r} is not in the parametrization ({list(table)[:6]}...).")
    r = table[p]
    if r.role == "fixed" and len(r.shape) < 2:
      if isinstance(x, jax.ShapeDtypeStruct):
        raise ValueError(f"init_params: parameter {p!r} is 'fixed' (kept as it is) but only its shape was given; "
                         "pass arrays.")
      out.append(x)
      continue
    if not isinstance(x, jax.ShapeDtypeStruct):
      x = jnp.asarray(x)
    if tuple(x.shape) != r.shape:
      raise ValueError(f"init_params: parameter {p!r} has shape {tuple(x.shape)}, the parametrization {r.shape}.")
    noise = jax.random.normal(k, x.shape, jnp.float32) * r.init_std if r.init_std else jnp.zeros(x.shape)
    out.append((noise + r.init_mean).astype(x.dtype))
  return jax.tree.unflatten(treedef, out)


def _times(x, m):
  """``m * x`` in ``x``'s dtype; a Python 1.0 is skipped (no op in the graph); ``m`` may be traced."""
  if isinstance(m, (int, float)) and m == 1.0:
    return x
  return x * jnp.asarray(m).astype(jnp.result_type(x))


def apply_multipliers(params: PyTree, multipliers: Parametrization | PyTree) -> PyTree:
  """``multiplier * w`` per leaf: the parameters the model computes with (a forward multiplier on a layer's kernel
  scales its output; on a readout kernel it is ``MuReadout``'s ``output_mult / width_mult``). Pure and
  differentiable: the gradient w.r.t. the stored ``w`` is ``multiplier * grad``, as in the papers. Dtypes kept.
  ``multipliers`` is a :class:`Parametrization` or a pytree of scalars with the parameters' paths (arrays work:
  vmap over stacked multipliers to run several parametrizations of one shape in one program)."""
  table = _table(multipliers, "multiplier")
  return _map_by_path(_times, params, table, "apply_multipliers")


def multiplied(model: nnx.Module, multipliers: Parametrization | PyTree) -> nnx.Module:
  """A copy of ``model`` whose ``nnx.Param`` values are ``multiplier * w`` (:func:`apply_multipliers`).

  Use it inside the loss, so gradients flow to the stored parameters::

      loss_fn = lambda model, batch, rng: base_loss(param.multiplied(model, p), batch, rng)

  Works under ``jax.jit`` / ``jax.grad`` (``paperlab.train.make_train_step`` differentiates the loss through it).
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  scaled = apply_multipliers(nnx.to_pure_dict(params), multipliers)
  nnx.replace_by_pure_dict(params, scaled)
  return nnx.merge(graphdef, params, rest)


class ScaleByParamLrState(NamedTuple):
  """:func:`scale_by_param_lr` is stateless."""


def scale_by_param_lr(lr_multipliers: Parametrization | PyTree) -> optax.GradientTransformation:
  """Multiply every leaf's update by its learning-rate multiplier.

  Tensor Programs V (arXiv:2203.03466) Table 3's LR column as an optax building block (``MuAdam`` / ``MuSGD``'s
  per-parameter-group learning rates). Chain it after the optimizer's preconditioner and before the global
  learning rate, e.g. ``optax.chain(optax.scale_by_adam(), scale_by_param_lr(p), optax.add_decayed_weights(wd),
  optax.scale_by_learning_rate(lr))``: decoupled weight decay after it stays width-independent, as ``MuAdamW``
  keeps ``lr * weight_decay``. Leaves are matched by ``/``-joined path, so updates may be plain dicts or
  ``nnx.State``. Multipliers are constants (or arrays, e.g. traced when vmapping over parametrizations): the
  transform works under ``jit``, ``vmap`` and inside ``optax.inject_hyperparams``.

  Args:
    lr_multipliers: a :class:`Parametrization` or a pytree of multipliers with the parameters' paths.
  """
  table = _table(lr_multipliers, "lr_multiplier")
  for path, m in table.items():
    if isinstance(m, jax.core.Tracer):
      continue  # traced (e.g. vmapped over parametrizations): checked where it was made
    if np.ndim(m) != 0 or not math.isfinite(float(m)) or float(m) < 0:
      raise ValueError(f"lr_multipliers[{path!r}] must be a finite non-negative scalar, got {m!r}.")

  def init_fn(params):
    del params
    return ScaleByParamLrState()

  def update_fn(updates, state, params=None):
    del params
    return _map_by_path(_times, updates, table, "scale_by_param_lr"), state

  return optax.GradientTransformation(init_fn, update_fn)


def mu_adam(learning_rate: optax.ScalarOrSchedule, lr_multipliers: Parametrization | PyTree, *, b1: float = 0.9,
            b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, mask: Any = None
            ) -> optax.GradientTransformationExtraArgs:
  """Adam(W) with per-parameter learning rates (``mup.MuAdam`` / ``MuAdamW``; TP5 arXiv:2203.03466 Table 3).

  ``chain(scale_by_adam(b1, b2, eps), scale_by_param_lr(lr_multipliers), add_decayed_weights(weight_decay, mask),
  scale_by_learning_rate(learning_rate))``; defaults are Adam's (Kingma & Ba). Decoupled weight decay is not
  multiplied by the LR multipliers (``MuAdamW`` keeps ``lr * weight_decay`` width-independent).
  """
  check_non_negative("weight_decay", weight_decay)
  parts = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps), scale_by_param_lr(lr_multipliers)]
  if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
    parts.append(optax.add_decayed_weights(weight_decay, mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)


def mu_sgd(learning_rate: optax.ScalarOrSchedule, lr_multipliers: Parametrization | PyTree, *,
           momentum: float | None = None, nesterov: bool = False) -> optax.GradientTransformationExtraArgs:
  """SGD (with optional heavy-ball momentum) with per-parameter learning rates (``mup.MuSGD``; TP5 Table 3).

  ``chain(scale_by_param_lr(lr_multipliers), trace(momentum, nesterov), scale_by_learning_rate(learning_rate))``:
  PyTorch's SGD applies each group's lr after the momentum buffer, and the multiplier commutes with the (linear)
  trace, so this equals ``MuSGD``.
  """
  parts = [scale_by_param_lr(lr_multipliers)]
  if momentum is not None:
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
