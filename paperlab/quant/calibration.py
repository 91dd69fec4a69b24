"""Calibration capture for post-training quantization: the inputs of every Dense layer of a Flax NNX model.

GPTQ (arXiv:2210.17323), AWQ (arXiv:2306.00978), SmoothQuant (arXiv:2211.10438) and the other layer-wise PTQ
methods need, for each linear layer, the inputs it sees on a few calibration batches (or their second moment
``H = 2 X^T X / n``). The official PyTorch code registers forward hooks; here a *copy* of the model has each
selected ``nnx.Linear`` wrapped in a module that ``sow``\\ s its input as ``nnx.Intermediate`` and the copy runs
under ``nnx.capture`` inside one ``jax.jit`` program, so the user's model is never mutated and no class is patched.
Layers are keyed by their ``/``-joined module path (``blocks/0/attn/qkv``), the same path the kernel has in the
model's ``nnx.State`` (``blocks/0/attn/qkv/kernel``).

:func:`sequential` is the layer-by-layer driver shared by GPTQ, AWQ and the others: it visits layers in the order
the forward pass calls them and measures each layer on the model whose earlier layers are already quantized
(GPTQ's ``--true-sequential``). The walk over layers is a host loop; each forward pass is jitted once.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paperlab.quant.rtn import check_finite

__all__ = ["linear_paths", "layer_order", "capture_inputs", "capture_hessians", "capture", "sequential",
           "replace_kernels", "pad_outputs"]

_STATISTICS = ("inputs", "hessian")
_ORDER: list | None = None  # the trace-time recorder of layer_order


class _Tap(nnx.Module):
  """Wraps a layer; sows its (flattened, float32) input before calling it."""

  def __init__(self, layer: nnx.Module, path: str):
    self.layer = layer
    self.path = path

  def __call__(self, x, *args, **kwargs):
    if _ORDER is not None:
      _ORDER.append(self.path)
    self.sow(nnx.Intermediate, "inputs", x.reshape(-1, x.shape[-1]).astype(jnp.float32))
    return self.layer(x, *args, **kwargs)


def pad_outputs(kernel: jax.Array, multiple: int = 256, limit: int = 1024) -> jax.Array:
  """Zero-pad a kernel's output columns (below ``limit``) to a multiple of ``multiple``.

  GPTQ and AWQ treat output channels independently (AWQ's loss only gains zero terms, a constant factor), so the
  layer-wise solvers may run on the padded kernel and slice the result: layers of a model that share an input
  width then share one compiled program. Wide layers are left alone.
  """
  out = kernel.shape[1]
  if out >= limit or out % multiple == 0:
    return kernel
  return jnp.pad(kernel, ((0, 0), (0, -(-out // multiple) * multiple - out)))


def _path_str(path: Sequence[Any]) -> str:
  return "/".join(str(p) for p in path)


def _selected(path: str, include: str | None, exclude: str | None) -> bool:
  return (include is None or re.search(include, path) is not None) and (
      exclude is None or re.search(exclude, path) is None)


def linear_paths(model: nnx.Module, *, include: str | None = None, exclude: str | None = None,
                 layer_types: tuple = (nnx.Linear,)) -> list[str]:
  """Paths of the model's Dense layers (``nnx.Linear`` by default) selected by the ``include``/``exclude`` regexes,
  in module-tree order."""
  if not isinstance(model, nnx.Module):
    raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}.")
  return [_path_str(p) for p, m in nnx.iter_modules(model)
          if isinstance(m, layer_types) and _selected(_path_str(p), include, exclude)]


def _tapped_copy(model: nnx.Module, paths: Sequence[str], layer_types: tuple) -> nnx.Module:
  """A copy of ``model`` (same arrays, new Variables) whose layers at ``paths`` are wrapped in :class:`_Tap`."""
  copy = nnx.merge(*nnx.split(model))
  wanted = set(paths)
  found = [(p, m) for p, m in nnx.iter_modules(copy) if isinstance(m, layer_types) and _path_str(p) in wanted]
  for path, layer in found:
    parent = copy
    for part in path[:-1]:
      parent = parent[part] if isinstance(part, int) else getattr(parent, part)
    if isinstance(path[-1], int):
      parent[path[-1]] = _Tap(layer, _path_str(path))
    else:
      setattr(parent, path[-1], _Tap(layer, _path_str(path)))
  return copy


def _resolve(model, include, exclude, layer_types, paths):
  paths = linear_paths(model, include=include, exclude=exclude, layer_types=layer_types) if paths is None else list(
      paths)
  if not paths:
    raise ValueError(f"no layer of types {[t.__name__ for t in layer_types]} matches include={include!r}, "
                     f"exclude={exclude!r}.")
  return paths


def layer_order(model: nnx.Module, batch: Any, *, include: str | None = None, exclude: str | None = None,
                layer_types: tuple = (nnx.Linear,)) -> list[str]:
  """Selected layer paths in the order ``model(batch)`` first calls them (found by an abstract trace,
  ``jax.eval_shape``: nothing is computed). Layers the forward pass never calls are left out."""
  global _ORDER
  paths = _resolve(model, include, exclude, layer_types, None)
  graphdef, state = nnx.split(_tapped_copy(model, paths, layer_types))

  def forward(state, batch):
    return nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(batch)[0]

  _ORDER = []
  try:
    jax.eval_shape(forward, state, batch)
    order = list(dict.fromkeys(_ORDER))
  finally:
    _ORDER = None
  return order


@functools.lru_cache(maxsize=32)
def _make_capture_fn(graphdef, statistic: str):
  """One jitted capture program per (tapped graphdef, statistic): models of one architecture share it."""

  @jax.jit
  def run(state, batch):
    _, inter = nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(batch)
    out = {}
    for key, var in nnx.to_flat_state(inter):
      path = _path_str(key[:-1])
      x = jnp.concatenate(list(var.get_value()), axis=0)  # a layer called several times sows several inputs
      out[path] = (x.T @ x, jnp.asarray(x.shape[0], jnp.float32)) if statistic == "hessian" else x
    return out
  return run


def _accumulate(run, state, batches, statistic: str) -> dict:
  acc: dict = {}
  any_batch = False
  for batch in batches:
    any_batch = True
    for path, value in run(state, batch).items():
      if statistic == "hessian":
        xtx, n = value
        if path in acc:
          acc[path] = (acc[path][0] + xtx, acc[path][1] + n)
        else:
          acc[path] = (xtx, n)
      else:
        acc.setdefault(path, []).append(value)
  if not any_batch:
    raise ValueError("batches must hold at least one calibration batch, got none.")
  if statistic == "hessian":
    out = {p: 2.0 / n * xtx for p, (xtx, n) in acc.items()}
  else:
    out = {p: jnp.concatenate(v, axis=0) for p, v in acc.items()}
  for p, v in out.items():
    check_finite(f"captured inputs of layer {p!r}", v)
  return out


def capture(model: nnx.Module, batches: Iterable[Any], *, statistic: str = "inputs", include: str | None = None,
            exclude: str | None = None, layer_types: tuple = (nnx.Linear,), paths: Sequence[str] | None = None
            ) -> dict[str, jax.Array]:
  """Capture each selected layer's inputs over calibration ``batches``.

  Args:
    model: a Flax NNX model (not modified); ``model(batch)`` must run.
    batches: an iterable of calibration inputs.
    statistic: ``"inputs"`` -> ``{path: X}`` with ``X`` of shape ``(tokens, in)`` (float32, every token of every
      batch); ``"hessian"`` -> ``{path: H}`` with GPTQ's ``H = 2 X^T X / tokens`` accumulated batch by batch
      (memory independent of the number of batches).
    include, exclude: regexes on the layer path.
    layer_types: module types to capture (``nnx.Linear``; any module whose first call argument has the input
      features on its last axis works, e.g. ``nnx.Einsum``).
    paths: explicit layer paths instead of the regexes.

  Returns:
    a dict keyed by layer path.

  Raises:
    ValueError: unknown ``statistic``, no layer selected, no batch, or non-finite captured inputs.
  """
  if statistic not in _STATISTICS:
    raise ValueError(f"statistic must be one of {list(_STATISTICS)}, got {statistic!r}.")
  paths = _resolve(model, include, exclude, layer_types, paths)
  graphdef, state = nnx.split(_tapped_copy(model, paths, layer_types))
  return _accumulate(_make_capture_fn(graphdef, statistic), state, batches, statistic)


def capture_inputs(model: nnx.Module, batches: Iterable[Any], **kwargs: Any) -> dict[str, jax.Array]:
  """``capture(model, batches, statistic="inputs", ...)``: ``{path: (tokens, in) float32 inputs}``."""
  return capture(model, batches, statistic="inputs", **kwargs)


def capture_hessians(model: nnx.Module, batches: Iterable[Any], **kwargs: Any) -> dict[str, jax.Array]:
  """``capture(model, batches, statistic="hessian", ...)``: ``{path: 2 X^T X / tokens}`` (GPTQ's H)."""
  return capture(model, batches, statistic="hessian", **kwargs)


def replace_kernels(model: nnx.Module, kernels: dict[str, jax.Array]) -> nnx.Module:
  """A copy of ``model`` whose layers at the given paths have the given kernels (shape and dtype checked)."""
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  for path, kernel in kernels.items():
    key = tuple(int(p) if p.isdigit() else p for p in path.split("/")) + ("kernel",)
    if key not in flat:
      raise ValueError(f"kernels: the model has no kernel at {path!r}/kernel.")
    old = flat[key].get_value()
    if tuple(kernel.shape) != tuple(old.shape):
      raise ValueError(f"kernels[{path!r}] must have shape {tuple(old.shape)}, got {tuple(kernel.shape)}.")
    flat[key] = flat[key].replace(jnp.asarray(kernel, old.dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(list(flat.items())))


def sequential(model: nnx.Module, batches: Iterable[Any], solve: Callable[[str, jax.Array, jax.Array], Any], *,
               statistic: str = "hessian", include: str | None = None, exclude: str | None = None,
               layer_types: tuple = (nnx.Linear,), true_sequential: bool = True):
  """Quantize layer by layer: ``solve(path, kernel, stat) -> QuantizedWeight`` for each selected layer.

  With ``true_sequential`` (GPTQ's ``--true-sequential``) the layers are visited in forward order and each
  layer's ``stat`` (:func:`capture`'s ``statistic``) is measured on the model whose earlier layers already hold
  their quantized kernels; otherwise every statistic comes from the full-precision model.

  Returns:
    ``(quantized_model, {path: QuantizedWeight})``: a copy of ``model`` with the dequantized kernels.
  """
  batches = list(batches)
  if not batches:
    raise ValueError("batches must hold at least one calibration batch, got none.")
  paths = _resolve(model, include, exclude, layer_types, None)
  order = layer_order(model, batches[0], include=include, exclude=exclude, layer_types=layer_types)
  graphdef, state = nnx.split(_tapped_copy(model, paths, layer_types))
  run = _make_capture_fn(graphdef, statistic)
  flat = dict(nnx.to_flat_state(state))
  results, stats = {}, None
  for path in order:
    if stats is None or true_sequential:
      stats = _accumulate(run, nnx.from_flat_state(list(flat.items())), batches, statistic)
    key = tuple(int(p) if p.isdigit() else p for p in path.split("/")) + ("layer", "kernel")
    kernel = flat[key].get_value()
    qw = solve(path, kernel, stats[path])
    results[path] = qw
    flat[key] = flat[key].replace(jnp.asarray(qw.w_hat, kernel.dtype))
  return replace_kernels(model, {p: q.w_hat for p, q in results.items()}), results
