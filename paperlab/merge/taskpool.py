"""A pool of per-task fine-tunes of one base, the substrate of the multi-task merging reproductions.

ROT-DIGITS (the merging catalogue's substrate; the protocol of task arithmetic, Ilharco et al., "Editing Models with
Task Arithmetic", arXiv:2212.04089, Sec. 3, and of TIES-Merging, Yadav et al., arXiv:2306.01708, Sec. 5): one base
MLP per seed is pre-trained on upright digits; every task (the digits under one fixed image transform) fine-tunes the
whole backbone plus its own 10-way head, initialised from the base head, like CLIP's per-task zero-shot heads. Only
backbones are merged; a merged backbone is scored on each task with that task's head.

:func:`finetune_task_pool` trains everything in two jitted, vmapped calls (bases over seeds, fine-tunes over seeds x
tasks); the returned :class:`TaskPool` carries jitted evaluators so every experiment shares one protocol: per-task
accuracy of a backbone with the task heads, and a vmapped validation sweep over a grid of ``base + lam * delta``
(one grid for every method compared, the scale picked on validation and reported on test).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import _checks, models, train
from paperlab.merge.task_vectors import apply_task_vector, task_vector

PyTree = Any

__all__ = ["TaskPool", "PoolMember", "MethodScores", "finetune_task_pool", "backbone_of", "scores_summary",
           "format_scores"]

_SPLITS = ("fit", "val", "test")
_NORMS = (None, "layer")


class PoolMember(NamedTuple):
  """One seed of a :class:`TaskPool`: the base backbone and head, the fine-tuned backbones (a list over tasks) and
  the task heads (stacked over tasks, leading axis ``T``)."""

  base_backbone: PyTree
  base_head: PyTree
  finetuned: list
  heads: PyTree


def backbone_of(params: PyTree) -> PyTree:
  """The mergeable backbone of MLP parameters: every top-level entry except ``"head"``."""
  return {k: v for k, v in params.items() if k != "head"}


class MethodScores(NamedTuple):
  """A merge method's scores on a :class:`TaskPool`: the validation-picked scale per seed and the test accuracy
  ``(S, T)`` per seed and task; ``mean`` is the mean task accuracy over seeds."""

  lam: list
  accuracy: np.ndarray

  @property
  def mean(self) -> float:
    return float(np.mean(self.accuracy))

  @property
  def per_seed(self) -> list:
    return [float(a) for a in np.mean(self.accuracy, axis=1)]


def scores_summary(scores: Mapping[str, MethodScores]) -> dict:
  """JSON-able summary of :meth:`TaskPool.compare`'s scores: mean task accuracy (over seeds and tasks), its value
  per seed, per task (mean over seeds) and the picked scales."""
  return {
      "mean_task_accuracy": {k: v.mean for k, v in scores.items()},
      "mean_task_accuracy_per_seed": {k: v.per_seed for k, v in scores.items()},
      "per_task_accuracy": {k: np.mean(v.accuracy, axis=0).tolist() for k, v in scores.items()},
      "lam": {k: list(v.lam) for k, v in scores.items()},
  }


def format_scores(scores: Mapping[str, MethodScores], extra: Mapping[str, str] | None = None) -> list[str]:
  """One line per method: mean task accuracy in percent, per seed, the picked scales and ``extra[name]``."""
  extra = extra or {}
  return [f"{k:>20s} {v.mean * 100:5.1f} (seeds " + " ".join(f"{a * 100:.1f}" for a in v.per_seed)
          + f") lam={list(v.lam)} {extra.get(k, '')}".rstrip() for k, v in scores.items()]


class TaskPool(NamedTuple):
  """Fine-tunes of one base per seed on every task, with jitted evaluators.

  Attributes:
    graphdef: the MLP's graph definition (``nnx.merge(graphdef, params, {})`` rebuilds a model).
    tasks: task names, in the order of the ``T`` axes.
    base: full base parameters (backbone and base head), leading axis ``S`` (seeds).
    backbones: fine-tuned backbones, leading axes ``(S, T)``.
    heads: fine-tuned task heads, leading axes ``(S, T)``.
    finetune_loss: ``(S, T, finetune_steps)`` training losses of the fine-tunes.
    splits: ``{"fit"|"val"|"test": (x (T, N, 64), y (N,))}`` as jax arrays.
    task_accuracy: jitted ``(backbone, heads, xs, y) -> (T,)`` accuracy on each task of ``backbone`` with that
      task's head (``heads`` stacked over tasks, ``xs`` ``(T, N, 64)``).
    val_sweep: jitted ``(base_backbone, delta, heads, lams, xs, y) -> (L,)`` mean task accuracy of
      ``base_backbone + lam * delta`` for every ``lam`` in ``lams`` (vmapped over ``lams``).
  """

  graphdef: Any
  tasks: tuple
  base: PyTree
  backbones: PyTree
  heads: PyTree
  finetune_loss: jax.Array
  splits: dict
  task_accuracy: Callable
  val_sweep: Callable

  @property
  def num_seeds(self) -> int:
    return int(self.finetune_loss.shape[0])

  def member(self, seed_index: int) -> PoolMember:
    """The base and fine-tunes of seed ``seed_index`` (an index into the pool's seeds, not the seed itself)."""
    pick = lambda tree, *i: jax.tree.map(lambda x: x[i], tree)
    base = pick(self.base, seed_index)
    fts = [pick(self.backbones, seed_index, t) for t in range(len(self.tasks))]
    return PoolMember(backbone_of(base), base["head"], fts, pick(self.heads, seed_index))

  def accuracy(self, backbone: PyTree, heads: PyTree, split: str = "test") -> np.ndarray:
    """Per-task accuracy ``(T,)`` of ``backbone`` with the task ``heads`` on ``split``."""
    _checks.check_choice("split", split, _SPLITS)
    return np.asarray(self.task_accuracy(backbone, heads, *self.splits[split]))

  def tune(self, member: PoolMember, delta: PyTree, lams: Sequence[float],
           tasks: Sequence[int] | None = None) -> tuple[float, np.ndarray]:
    """Pick ``lam`` in ``lams`` maximizing the mean validation accuracy of ``base + lam * delta`` (first best: ties
    go to the earlier grid value) over the task indices ``tasks`` (default: all); return it and the per-task test
    accuracy ``(T,)`` (every task) at it."""
    if len(lams) == 0:
      raise ValueError("lams must be a non-empty grid of scaling coefficients, got an empty sequence.")
    xs, y = self.splits["val"]
    heads = member.heads
    if tasks is not None:
      idx = np.asarray(tasks, np.int32)
      if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= len(self.tasks):
        raise ValueError(f"tasks must be non-empty indices into the pool's {len(self.tasks)} tasks, got {tasks!r}.")
      xs, heads = xs[idx], jax.tree.map(lambda h: h[idx], heads)
    scores = np.asarray(self.val_sweep(member.base_backbone, delta, heads, jnp.asarray(lams, jnp.float32), xs, y))
    lam = float(lams[int(np.argmax(scores))])
    return lam, self.accuracy(apply_task_vector(member.base_backbone, delta, lam), member.heads, "test")

  def compare(self, methods: Mapping[str, Callable[[PoolMember, int], PyTree]],
              lams: Sequence[float]) -> dict[str, MethodScores]:
    """Score merge methods under one protocol: for every seed, ``methods[name](member, seed_index)`` returns the
    merged backbone at scale 1 (e.g. ``merge.ties(m.base_backbone, m.finetuned, 0.2, 1.0)``); its task vector is
    scaled by the ``lam`` in ``lams`` (one grid for every method) that is best on validation, and scored on test."""
    out: dict[str, MethodScores] = {}
    for name, fn in methods.items():
      picked, accs = [], []
      for si in range(self.num_seeds):
        member = self.member(si)
        lam, acc = self.tune(member, task_vector(member.base_backbone, fn(member, si)), lams)
        picked.append(lam)
        accs.append(acc)
      out[name] = MethodScores(picked, np.stack(accs))
    return out


def _check_int(name: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
  return int(value)


def finetune_task_pool(task_data, *, seeds: Sequence[int] = (0, 1, 2), width: int = 128, base_steps: int = 300,
                       finetune_steps: int = 300, batch_size: int = 64, learning_rate: float = 1e-3,
                       norm: str | None = None, pretrain_task_fraction: float = 0.0) -> TaskPool:
  """Pre-train one base MLP (64-width-width-10) per seed on upright digits, then fine-tune every (seed, task) from
  its seed's base with its own head: the catalogue's ROT-DIGITS substrate (300 Adam steps, lr 1e-3, batch 64), the
  per-task-head protocol of task arithmetic (arXiv:2212.04089, Sec. 3) and TIES-Merging (arXiv:2306.01708, Sec. 5).

  Seed ``s`` uses ``jax.random.key(s)``: the base is initialised from it and trained with data key
  ``fold_in(key, 1)``; fine-tune ``t`` uses ``split(fold_in(key, 2), T)[t]`` and a fresh Adam state. The base trains
  on upright fit inputs plus the first ``pretrain_task_fraction`` of every task's fit inputs (0: upright only, the
  catalogue's base).

  Args:
    task_data: a :class:`paperlab.data.TaskDigits` (``paperlab.data.transformed_digits(...)``).
    seeds: base seeds (non-empty).
    width: hidden width; base_steps / finetune_steps: Adam steps (>= 0); batch_size (>= 1); learning_rate (> 0).
    norm: ``None`` or ``"layer"`` (LayerNorm after each hidden layer; part of the backbone).
    pretrain_task_fraction: in [0, 1].

  Returns:
    A :class:`TaskPool`.
  """
  if not hasattr(task_data, "x_fit") or not hasattr(task_data, "upright_fit"):
    raise TypeError(f"task_data must be a paperlab.data.TaskDigits, got {type(task_data).__name__}.")
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise ValueError("seeds must be a non-empty sequence of integers, got an empty sequence.")
  width = _check_int("width", width, 1)
  base_steps = _check_int("base_steps", base_steps, 0)
  finetune_steps = _check_int("finetune_steps", finetune_steps, 0)
  batch_size = _check_int("batch_size", batch_size, 1)
  _checks.check_positive("learning_rate", learning_rate)
  _checks.check_choice("norm", norm, _NORMS)
  _checks.check_range("pretrain_task_fraction", pretrain_task_fraction, 0.0, 1.0)

  splits = {k: (jnp.asarray(getattr(task_data, f"x_{k}")), jnp.asarray(getattr(task_data, f"y_{k}")))
            for k in _SPLITS}
  num_tasks = int(splits["fit"][0].shape[0])
  in_features = int(splits["fit"][0].shape[-1])
  opt = optax.adam(learning_rate)
  graphdef, init = train.make_init(
      lambda r: models.MLP(in_features, [width, width], 10, norm=norm, rngs=r), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))

  x_up, y_fit = jnp.asarray(task_data.upright_fit), splits["fit"][1]
  n_mix = int(pretrain_task_fraction * len(y_fit))
  pretrain = (jnp.concatenate([x_up] + [splits["fit"][0][t, :n_mix] for t in range(num_tasks)]),
              jnp.concatenate([y_fit] + [y_fit[:n_mix]] * num_tasks))
  base_states, _ = jax.jit(jax.vmap(lambda k: train.run_steps(
      step, init(k), pretrain, jax.random.fold_in(k, 1), batch_size=batch_size, num_steps=base_steps)))(keys)

  def finetune(params, x, k):
    state = train.TrainState(jnp.zeros((), jnp.int32), params, {}, opt.init(params))
    return train.run_steps(step, state, (x, y_fit), k, batch_size=batch_size, num_steps=finetune_steps)

  ft_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 2), num_tasks))(keys)
  finetuned, metrics = jax.jit(jax.vmap(jax.vmap(finetune, in_axes=(None, 0, 0)), in_axes=(0, None, 0)))(
      base_states.params, splits["fit"][0], ft_keys)

  @jax.jit
  def task_accuracy(backbone, heads, xs, y):
    def one(head, x):
      model = nnx.merge(graphdef, {**backbone, "head": head}, {})
      return jnp.mean(jnp.argmax(model(x), -1) == y)
    return jax.vmap(one)(heads, xs)

  @jax.jit
  def val_sweep(base_backbone, delta, heads, lams, xs, y):
    return jax.vmap(lambda lam: jnp.mean(task_accuracy(
        jax.tree.map(lambda b, d: b + lam * d, base_backbone, delta), heads, xs, y)))(lams)

  return TaskPool(graphdef, tuple(task_data.tasks), base_states.params, backbone_of(finetuned.params),
                  finetuned.params["head"], metrics["loss"], splits, task_accuracy, val_sweep)
