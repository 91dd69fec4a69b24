"""Running and training a Flax NNX model with adapters, so that only the adapter parameters are trained.

Two ways, both pure at the boundary:

* :func:`with_adapters` swaps every adapted ``nnx.Linear`` of a model for an :class:`AdaptedLinear` whose base
  kernel and bias are :class:`Frozen` variables (not ``nnx.Param``) and whose adapter arrays are ``nnx.Param`` named
  as in peft (``hidden/0/lora_A``). ``nnx.split(model, nnx.Param, ...)`` -- and so :func:`paperlab.train.make_init`
  / ``make_train_step`` -- then differentiates and updates the adapters only; the base weights ride along in the
  model state. LoRA runs unmerged (``x W + s (x A^T) B^T``, eq. 4 of arXiv:2106.09685); the other kinds build their
  adapted kernel in the forward pass. :func:`adapters_from_params` reads the adapter dict back.
* :func:`train_only` wraps any optax optimizer so that it updates only the leaves whose path matches a regex and
  leaves the rest bit-identical (``optax.multi_transform`` with ``optax.set_to_zero``): train ``{"base": params,
  "adapters": adapters}`` through :func:`paperlab.peft.apply_adapters`, or freeze ``lora_A`` for asymmetric LoRA
  (Zhu et al., arXiv:2402.16842: train ``B`` only, ``train_only(opt, "lora_B")``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from paperlab._tree import path_str
from paperlab.peft.adapters import DEFAULT_ALPHA, Adapters, adapted_kernel, adapter_kind

PyTree = Any

__all__ = ["Frozen", "AdaptedLinear", "with_adapters", "adapters_from_params", "train_only"]


class Frozen(nnx.Variable):
  """A base weight under an adapter: a variable that is not an ``nnx.Param``, so it is not trained."""


class AdaptedLinear(nnx.Module):
  """``nnx.Linear`` with an adapter (any kind of :mod:`paperlab.peft.adapters`); base weights :class:`Frozen`.

  Args:
    base: the ``nnx.Linear`` to adapt (its kernel and bias are copied into :class:`Frozen` variables).
    adapter: ``{peft name: array}`` for this layer.
    alpha: the LoRA / LoHa scale numerator (``scale = alpha / r``).
  """

  def __init__(self, base: nnx.Linear, adapter: Mapping[str, jax.Array], *, alpha: float = DEFAULT_ALPHA):
    self.kind = adapter_kind(adapter)
    self.alpha = float(alpha)
    self.names = tuple(sorted(adapter))
    self.kernel = Frozen(base.kernel[...])
    self.bias = Frozen(base.bias[...]) if base.bias is not None else None
    for name in self.names:
      setattr(self, name, nnx.Param(jnp.asarray(adapter[name])))

  def adapter(self) -> dict[str, jax.Array]:
    return {name: getattr(self, name)[...] for name in self.names}

  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.kernel[...]
    if self.kind == "lora":  # unmerged: the low-rank path never forms the (in, out) update
      a, b = self.lora_A[...], self.lora_B[...]
      y = x @ w + (self.alpha / a.shape[0]) * ((x @ a.T) @ b.T)
    else:
      y = x @ adapted_kernel(w, self.adapter(), self.alpha)
    return y if self.bias is None else y + self.bias[...]


def _parent(model: nnx.Module, path: tuple):
  node = model
  for k in path[:-1]:
    node = node[k] if isinstance(k, int) else getattr(node, k)
  return node


def _replace(model: nnx.Module, path: tuple, new) -> None:
  parent = _parent(model, path)
  if isinstance(path[-1], int):
    parent[path[-1]] = new
  else:
    setattr(parent, path[-1], new)


def with_adapters(model: nnx.Module, adapters: Adapters, *, alpha: float = DEFAULT_ALPHA,
                  trainable: str | None = None) -> nnx.Module:
  """Replace, in place, every ``nnx.Linear`` whose kernel path is a key of ``adapters`` by an :class:`AdaptedLinear`,
  and freeze every other ``nnx.Param`` of the model (as peft's ``mark_only_lora_as_trainable``) unless its
  ``/``-joined path matches the regex ``trainable`` (peft's ``modules_to_save``; e.g. ``"head|bias"``); returns
  the model.

  Raises:
    ValueError: an adapter path that names no ``nnx.Linear`` kernel of the model.
  """
  linears = {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Linear)}
  by_kernel = {"/".join(map(str, path + ("kernel",))): path for path in linears}
  missing = sorted(set(adapters) - set(by_kernel))
  if missing:
    raise ValueError(f"adapters name {missing}, which are not nnx.Linear kernels of the model; those are "
                     f"{sorted(by_kernel)}.")
  for kernel_path, adapter in adapters.items():
    path = by_kernel[kernel_path]
    _replace(model, path, AdaptedLinear(linears[path], adapter, alpha=alpha))
  keep = re.compile(trainable) if trainable is not None else None
  for path, node in list(nnx.iter_graph(model)):
    if isinstance(node, nnx.Param) and path[-1] not in _ADAPTER_NAMES:
      if keep is None or not keep.search("/".join(map(str, path))):
        _replace(model, path, Frozen(node[...]))
  return model


_ADAPTER_NAMES = ("lora_A", "lora_B", "lora_E", "lora_magnitude_vector", "hada_w1_a", "hada_w1_b", "hada_w2_a",
                  "hada_w2_b",
                  "miss_block")


def adapters_from_params(params: PyTree) -> Adapters:
  """The adapter dict ``{kernel path: {peft name: array}}`` held in the (pure-dict or ``nnx.State``) params of a
  model made by :func:`with_adapters`.

  Raises:
    ValueError: ``params`` holds no adapter arrays.
  """
  out: dict[str, dict[str, jax.Array]] = {}
  for p, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    parts = path_str(p).split("/")
    if parts[-1] in _ADAPTER_NAMES:
      out.setdefault("/".join(parts[:-1] + ["kernel"]), {})[parts[-1]] = x
  if not out:
    raise ValueError(f"params hold no adapter arrays (names {_ADAPTER_NAMES}).")
  return out


def train_only(optimizer: optax.GradientTransformation, include: str, exclude: str | None = None
               ) -> optax.GradientTransformation:
  """``optimizer`` applied to the leaves whose ``/``-joined path matches the regex ``include`` (and not
  ``exclude``); every other leaf gets a zero update, so it stays bit-identical (and carries no optimizer state).

  Raises (at ``init``):
    ValueError: ``include`` matches no leaf.
  """
  inc, exc = re.compile(include), re.compile(exclude) if exclude is not None else None

  def labels(tree):
    def label(p, _):
      s = path_str(p)
      return "train" if inc.search(s) and not (exc is not None and exc.search(s)) else "freeze"

    out = jax.tree_util.tree_map_with_path(label, tree)
    if "train" not in jax.tree.leaves(out):
      raise ValueError(f"train_only: include={include!r} (exclude={exclude!r}) matches no leaf; paths are "
                       f"{[path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]][:20]}.")
    return out

  return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)
