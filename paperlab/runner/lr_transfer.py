"""LR-TRANSFER: the learning-rate sweep across model size shared by the parametrization reproductions (muTransfer
[359], u-muP [270], depth-muP [361]).

Every (parametrization, size) is an arm of :mod:`paperlab.runner.protocol` whose grid is a learning-rate grid
``2^k`` (the hyperparameter ``"log2_lr"``); the arms of one size share shapes, so one vmapped program trains all of
them (parametrization x learning rate x seed) and the protocol reads its result point by point. The pieces:

* :func:`classification_trial`: one training run of a model under one of several
  :class:`paperlab.param.Parametrization` (selected by a traced index) -- final full-train loss, test loss and
  accuracy;
* :func:`sweep_program`: that trial over every parametrization x learning rate x seed as one ``jax.jit`` program;
* :func:`compare_lrs`: the protocol's bookkeeping -- arms, the per-size program run once, the best learning rate of
  each arm chosen on the final training loss;
* :func:`log_sweeps`, :func:`plot_loss_vs_lr`: training loss vs learning rate to the context's log and a PNG.

The vmapped program's floats depend on its set and order of grid points: each reproduction passes its own grids.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import param, train
from paperlab.runner import protocol
from paperlab.runner.trainer import FAST_COMPILE_CPU

__all__ = ["classification_trial", "compare_lrs", "fast_compile_options", "log_sweeps", "plot_loss_vs_lr", "select",
           "sweep_program"]


def fast_compile_options() -> dict | None:
  """The runner's fast CPU compile (XLA's expensive LLVM passes off) on CPU, else ``None``: compiling is most of a
  sweep's CPU time."""
  return dict(FAST_COMPILE_CPU) if jax.default_backend() == "cpu" else None


def select(index, trees: Sequence[Any]):
  """The ``index``-th of several pytrees of the same structure, as float32 (``index`` may be traced)."""
  return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(l, jnp.float32) for l in leaves])[index], *trees)


def classification_trial(model_fn: Callable[[nnx.Rngs], nnx.Module], ps: Sequence[param.Parametrization],
                         optimizer: Callable[..., optax.GradientTransformation], ds, *, batch_size: int, steps: int,
                         shared_init: bool = False) -> Callable:
  """``trial(kind, lr, key)``: ``steps`` minibatch steps of ``optimizer(lr, lr_multipliers)`` (e.g.
  :func:`paperlab.param.mu_adam`) on the classification loss of ``model_fn``'s model under ``ps[kind]``.

  Args:
    model_fn: builds the model from ``nnx.Rngs``.
    ps: the parametrizations (same shapes); ``kind`` indexes them and may be traced.
    optimizer: ``optimizer(lr, lr_multipliers) -> GradientTransformation``.
    ds: a dataset with ``x_train``, ``y_train``, ``x_test``, ``y_test``.
    batch_size: minibatch size.
    steps: number of training steps.
    shared_init: initialise every kind with ``ps[0]``'s rule (same weights in every arm) instead of its own.

  Returns:
    ``trial(kind, lr, key) -> {"train_loss", "test_loss", "test_accuracy"}``: the final loss on the whole training
    split, and the test loss and accuracy.
  """
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

  def trial(kind, lr, key):
    mults = select(kind, [p.multipliers for p in ps])
    tx = optimizer(lr, select(kind, [p.lr_multipliers for p in ps]))
    loss_fn = lambda model, batch, rng: train.classification_loss(param.multiplied(model, mults), batch, rng)
    graphdef, init = train.make_init(model_fn, tx)
    step = train.make_train_step(graphdef, loss_fn, tx)
    state = init(key)
    if shared_init:
      params = param.init_params(key, state.params, ps[0])
    else:
      params = select(kind, [param.init_params(key, state.params, p) for p in ps])
    state = state._replace(params=params)
    state, _ = train.run_steps(step, state, (x, y), key, batch_size=batch_size, num_steps=steps)
    model = param.multiplied(nnx.merge(graphdef, state.params, state.model_state), mults)
    logits, logits_test = model(x), model(xt)
    return {"train_loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
            "test_loss": optax.softmax_cross_entropy_with_integer_labels(logits_test, yt).mean(),
            "test_accuracy": jnp.mean(jnp.argmax(logits_test, -1) == yt)}

  return trial


def sweep_program(trial: Callable, kinds: Sequence[str], log2_lrs, seeds: int,
                  compiler_options: dict | None = None) -> dict:
  """``trial`` over every kind x learning rate ``2^k`` x seed as one jitted, vmapped program.

  Args:
    trial: ``trial(kind_index, lr, key) -> dict of scalars``.
    kinds: the kinds' names, in index order.
    log2_lrs: one grid shared by every kind (1-D), or one grid per kind (``(len(kinds), grid)``, same length).
    seeds: number of seeds (keys ``0 .. seeds - 1``).
    compiler_options: passed to ``jax.jit``.

  Returns:
    ``{kind: {metric: array (grid, seeds)}}``.
  """
  lrs = 2.0 ** jnp.asarray(log2_lrs, jnp.float32)
  keys = jax.vmap(jax.random.key)(jnp.arange(seeds))
  if lrs.ndim == 1:
    run = jax.vmap(jax.vmap(jax.vmap(trial, (None, None, 0)), (None, 0, None)), (0, None, None))
    out = jax.jit(run, compiler_options=compiler_options)(jnp.arange(len(kinds)), lrs, keys)
  else:
    per_kind = lambda kind, lrs: jax.vmap(jax.vmap(trial, (None, None, 0)), (None, 0, None))(kind, lrs, keys)
    out = jax.jit(jax.vmap(per_kind), compiler_options=compiler_options)(jnp.arange(len(kinds)), lrs)
  out = jax.tree.map(np.asarray, out)
  return {kind: {k: v[i] for k, v in out.items()} for i, kind in enumerate(kinds)}


def compare_lrs(sweep: Callable[[int], dict], kinds: Sequence[str], sizes: Sequence[int],
                grids: Mapping[str, Sequence[int]], seeds: int, *, sep: str,
                validate: Callable[[np.ndarray], np.ndarray]) -> tuple[protocol.Comparison, dict, dict]:
  """The protocol over arms ``f"{kind}{sep}{size}"`` with grids ``{"log2_lr": k}``, lowest training loss wins.

  Args:
    sweep: ``sweep(size) -> {kind: {metric: array (grid, seeds)}}`` (e.g. from :func:`sweep_program`), run once per
      size, when the protocol first asks for one of its arms.
    kinds: the parametrizations.
    sizes: the model sizes (widths or depths).
    grids: each kind's log2 learning-rate grid.
    seeds: number of seeds.
    sep: separator of kind and size in the arm names (``"_w"``, ``"_L"``).
    validate: maps a grid point's per-seed final training losses to the validation scores (lower is better), e.g.
      non-finite losses to the worst score.

  Returns:
    ``(comparison, sweeps, best)``: the protocol's comparison, ``{(kind, size): {metric: array (grid, seeds)}}``,
    and ``{kind: [best log2 learning rate per size]}``.
  """
  sweeps = {}

  def fit(arm, hparams, seeds):
    kind, size = arm.name.split(sep)
    key = (kind, int(size))
    if key not in sweeps:  # one program trains the grids of every arm of a size; the protocol reads point by point
      for k, result in sweep(int(size)).items():
        sweeps[(k, int(size))] = result
    i = list(grids[kind]).index(hparams["log2_lr"])
    return {k: v[i] for k, v in sweeps[key].items()}

  arms = [protocol.Arm(f"{kind}{sep}{size}", [{"log2_lr": k} for k in grids[kind]]) for kind in kinds for size in sizes]
  comparison = protocol.compare(arms, range(seeds), fit, validate=lambda out: validate(out["train_loss"]),
                                test=lambda out: {"test_loss": out["test_loss"], "test_accuracy": out["test_accuracy"],
                                                  "train_loss": out["train_loss"]},
                                maximize=False)
  best = {kind: [comparison[f"{kind}{sep}{s}"].chosen["log2_lr"] for s in sizes] for kind in kinds}
  return comparison, sweeps, best


def log_sweeps(ctx, sweeps: dict, grids: Mapping[str, Sequence[int]], sep: str) -> None:
  """Logs every arm's seed-mean training loss at each log2 learning rate (the step) as ``"{kind}{sep}{size}/train_loss"``."""
  for (kind, size), sweep in sorted(sweeps.items()):
    for k, loss in zip(grids[kind], sweep["train_loss"].mean(axis=1)):
      ctx.log(k, {f"{kind}{sep}{size}/train_loss": float(loss)})


def plot_loss_vs_lr(sweeps: dict, grids: Mapping[str, Sequence[int]], sizes: Sequence[int], path, *,
                    panels: tuple[str, str], size_label: Callable[[int], str], title: Callable[[str], str],
                    xlabel: Callable[[str], str] = lambda kind: "log2 learning rate") -> None:
  """Two panels (``panels``' kinds) of seed-mean training loss vs log2 learning rate, one line per size, to ``path``."""
  # A Figure without pyplot: writing a PNG must not switch the caller's matplotlib backend (e.g. a notebook's).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(10, 4))
  axes = fig.subplots(1, 2, sharey=True)
  for ax, kind in zip(axes, panels):
    for size in sizes:
      loss = sweeps[(kind, size)]["train_loss"].mean(axis=1)
      ax.plot(grids[kind], np.where(np.isfinite(loss), loss, np.nan), marker="o", label=size_label(size))
    ax.set_yscale("log")
    ax.set_title(title(kind))
    ax.set_xlabel(xlabel(kind))
  axes[0].set_ylabel("training loss (mean of seeds)")
  axes[1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
