"""Coordinate check: the typical size of every layer's output against width over the first training steps.

Yang et al., "Tensor Programs V" (arXiv:2203.03466), Sec. 5 / Fig. 5 and the ``mup`` package's ``get_coord_data``:
train models of several widths for a few steps and record, for every layer, the mean absolute value of its output
(the "l1" statistic of ``mup``'s ``_record_coords``) on a fixed batch. Under a parametrization with well-defined
feature learning (muP) the curves are flat in width; under SP the coordinates of layers fed by width-sized
updates grow with width (and blow up with a large enough learning rate).

Layer outputs are taken from every module's ``__call__`` with ``nnx.capture(..., method_outputs=nnx.Intermediate)``,
so any Flax NNX model works unchanged; the model computes with ``multiplier * w`` (:func:`multiplied`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab._tree import path_str
from paperlab.param.parametrization import Parametrization, init_params, multiplied

__all__ = ["layer_outputs", "coord_check", "plot_coord_check"]


def _layer_name(path: tuple) -> str:
  parts = [p for p in path_str(path).split("/") if p not in ("__call__", "value")]
  if parts and parts[-1].isdigit():  # the capture's tuple index of a single output
    parts = parts[:-1]
  return "/".join(parts) or "output"


def layer_outputs(model: nnx.Module, *inputs: Any) -> dict[str, jax.Array]:
  """``{layer path: output}`` of every submodule's ``__call__`` (``"output"`` for the model's own output), from
  ``nnx.capture(model, method_outputs=nnx.Intermediate)``. Jittable; the model is not modified."""
  _, captured = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(*inputs)
  leaves = jax.tree_util.tree_flatten_with_path(captured)[0]
  return {_layer_name(path): x for path, x in leaves if hasattr(x, "shape")}


_STATISTICS = {"l1": lambda v: jnp.mean(jnp.abs(v)), "rms": lambda v: jnp.sqrt(jnp.mean(jnp.square(v)))}


def _run_one(graphdef, params, rest, p, tx, loss_fn, batch, inputs, steps, key, statistic) -> dict:
  """One width as one compiled program: (re-)initialization, ``steps`` steps and the statistics of every step."""

  def effective(params):
    m = nnx.merge(graphdef, params, rest)
    return multiplied(m, p) if p is not None else m

  def stats(params):
    outs = layer_outputs(effective(params), *inputs(batch))
    return {k: _STATISTICS[statistic](v.astype(jnp.float32)) for k, v in outs.items()}

  def body(carry, _):
    params, opt_state = carry
    grads = jax.grad(lambda q: loss_fn(effective(q), batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), stats(params)

  @jax.jit
  def run(key, given):
    # the model may come from nnx.eval_shape: the parametrization then draws every parameter
    params = init_params(key, shapes, p) if p is not None else given
    (params, _), history = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    last = stats(params)
    return jax.tree.map(lambda h, x: jnp.concatenate([h, x[None]]), history, last)

  shapes = params
  given = None if p is not None else params
  return run(key, given)


def coord_check(make_model: Callable[[int], nnx.Module], make_parametrization: Callable[[nnx.Module],
                Parametrization] | None, make_optimizer: Callable[[Parametrization | None],
                optax.GradientTransformation], loss_fn: Callable[[nnx.Module, Any], jax.Array], batch: Any, *,
                widths: Sequence[int], steps: int = 3, key: jax.Array | None = None,
                inputs: Callable[[Any], tuple] = lambda batch: (batch[0],), statistic: str = "l1"
                ) -> dict[str, np.ndarray]:
  """Mean ``|output|`` (or RMS) of every layer, per width and step: ``{layer: (len(widths), steps + 1)}``.

  Entry ``[i, t]`` is measured on ``batch`` after ``t`` optimizer steps on the same batch (``t = 0`` is the
  initialization), at width ``widths[i]`` -- the coordinate check of TP5 (arXiv:2203.03466, Fig. 5).

  Args:
    make_model: ``width -> nnx.Module`` (its own initialization; re-drawn by the parametrization when given, so
      ``nnx.eval_shape(lambda: Model(width))`` is enough then).
    make_parametrization: ``model -> Parametrization`` (e.g. ``lambda m: parametrize(m, base)``), or ``None``
      for the model as it is (SP with the model's own init and no multipliers).
    make_optimizer: ``parametrization_or_None -> optax transformation`` (e.g. ``lambda p: mu_adam(1e-2, p)``).
    loss_fn: ``loss_fn(model, batch) -> scalar``; the model it receives already applies the multipliers.
    batch: the fixed batch.
    widths: the widths to compare.
    steps: optimizer steps (TP5 and ``mup`` use 3-5).
    key: PRNG key of the parametrization's init (default ``PRNGKey(0)``).
    inputs: ``batch -> model inputs`` (default ``(batch[0],)``).
    statistic: ``"l1"`` (mean absolute value, ``mup``'s default) or ``"rms"``.

  Returns:
    ``{layer path: float64 array (len(widths), steps + 1)}``; layers are the module paths of
    :func:`layer_outputs`.
  """
  if not widths:
    raise ValueError("widths must hold at least one width, got an empty sequence.")
  if statistic not in _STATISTICS:
    raise ValueError(f"statistic must be one of {sorted(_STATISTICS)}, got {statistic!r}.")
  if int(steps) != steps or steps < 0:
    raise ValueError(f"steps must be a non-negative integer, got {steps!r}.")
  key = jax.random.PRNGKey(0) if key is None else key
  per_width = []
  for width in widths:
    model = make_model(int(width))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    p = make_parametrization(model) if make_parametrization is not None else None
    tx = make_optimizer(p)
    per_width.append(jax.tree.map(np.asarray, _run_one(graphdef, params, rest, p, tx, loss_fn, batch, inputs,
                                                       int(steps), key, statistic)))
  return {k: np.stack([w[k] for w in per_width]) for k in per_width[0]}


def plot_coord_check(data: Mapping[str, np.ndarray], widths: Sequence[int], path: str, *,
                     title: str | None = None, layers: Sequence[str] | None = None) -> str:
  """Write a PNG of :func:`coord_check`'s result: one panel per step ``t``, mean ``|output|`` against width
  (log-log), one line per layer (TP5 Fig. 5's layout). Needs matplotlib (imported here only). Returns ``path``."""
  # A Figure without pyplot: writing a PNG must not switch the caller's matplotlib backend (e.g. a notebook's).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  layers = list(layers) if layers is not None else sorted(data)
  missing = [k for k in layers if k not in data]
  if missing:
    raise ValueError(f"layers {missing} are not in the coordinate-check data ({sorted(data)}).")
  steps = next(iter(data.values())).shape[1]
  fig = Figure(figsize=(3.2 * steps, 3.0))
  axes = fig.subplots(1, steps, sharey=True, squeeze=False)
  for t, ax in enumerate(axes[0]):
    for name in layers:
      ax.plot(widths, data[name][:, t], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_title(f"t = {t}")
    ax.set_xlabel("width")
  axes[0, 0].set_ylabel("mean |output|")
  axes[0, -1].legend(fontsize="small")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
