"""What an experiment's ``run(config, ctx)`` receives from the runner."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import pathlib
import weakref
from typing import Any, Mapping

import numpy as np


def to_jsonable(value: Any) -> Any:
  """Convert arrays and NumPy/JAX scalars inside a nested structure to plain JSON values."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
    return to_jsonable(np.asarray(value).tolist())
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)  # JSON has no NaN/Inf; keep them readable
  return value


def _open_append(path: pathlib.Path):
  """``open(path, "a")`` that refuses to follow a symbolic link planted at ``path`` (so that a crafted run
  directory cannot make a trial write outside it)."""
  import os  # pylint: disable=g-import-not-at-top
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
  return os.fdopen(fd, "a")


def tensorboard_available() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("tensorboardX") is not None


def _event_writer(logdir: str):
  """A tensorboardX ``FileWriter``, imported without dragging in PyTorch when nothing imported it yet.

  tensorboardX imports ``torch`` (seconds) only to accept torch tensors; we log Python floats.
  """
  import sys  # pylint: disable=g-import-not-at-top
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes ``import torch`` inside tensorboardX raise ImportError
    try:
      from tensorboardX import FileWriter  # pylint: disable=g-import-not-at-top
    finally:
      del sys.modules["torch"]
  else:
    from tensorboardX import FileWriter  # pylint: disable=g-import-not-at-top
  return FileWriter(logdir)


def _scalar_summary(scalars: Mapping[str, float]):
  """One TensorBoard ``Summary`` holding every scalar of a step (one event per step, not one per scalar)."""
  from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top
  return Summary(value=[Summary.Value(tag=name, simple_value=value) for name, value in scalars.items()])


def _plain_config(config: Any) -> dict:
  if config is None:
    return {}
  return to_jsonable(config.to_dict() if hasattr(config, "to_dict") else dict(config))


def _abstract(template: Any) -> Any:
  """Shapes and dtypes of a pytree of arrays (or of ``jax.ShapeDtypeStruct``), for orbax restore."""
  import jax  # pylint: disable=g-import-not-at-top

  def leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    x = x if hasattr(x, "dtype") else np.asarray(x)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None))

  return jax.tree.map(leaf, template)


def _for_multihost_save(state: Any) -> Any:
  """A pytree for a collective orbax save: global arrays as they are, everything else on the host."""
  import jax  # pylint: disable=g-import-not-at-top

  def leaf(x):
    if isinstance(x, jax.Array):
      return x if not x.is_fully_addressable else np.asarray(jax.device_get(x))
    return np.asarray(x)

  return jax.tree.map(leaf, state)


def _restore_multihost(root: pathlib.Path, template: Any) -> tuple[int, Any, list[str]]:
  """Several processes: process 0 picks the newest checkpoint that verifies (removing damaged ones) and
  broadcasts its step; every process restores it onto ``template``'s shardings (host leaves stay on the host)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from paperlab.runner import distributed, store  # pylint: disable=g-import-not-at-top
  decision = [0, []]
  if distributed.is_primary():
    for step in reversed(store.checkpoint_steps(root)):
      problem = store.verify_checkpoint(root, step)
      if problem is None:
        decision[0] = step
        break
      decision[1].append(problem)
      store._remove(pathlib.Path(root) / str(step))  # pylint: disable=protected-access
  step, problems = distributed.broadcast(decision)
  if not step:
    return 0, None, problems

  def leaf(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return np.zeros(np.shape(x), np.asarray(x).dtype)  # restored as a NumPy array on every process

  checkpointer = ocp.StandardCheckpointer()
  try:
    state = checkpointer.restore((pathlib.Path(root) / str(step)).absolute(), jax.tree.map(leaf, template))
  finally:
    checkpointer.close()
  return step, state, problems


@dataclasses.dataclass
class Context:
  """Run-time services for one trial: metrics, checkpoints, progress bars.

  Metrics go to ``workdir/metrics.jsonl`` (one JSON object per :meth:`log` call, with ``step``) and, when on, to
  TensorBoard and Weights & Biases. A custom ``run(config, ctx)`` survives a crash by checkpointing its state
  and restoring it when the runner starts the trial again::

    restored = ctx.restore(init_state)            # None on a fresh start
    step, state = restored or (0, init_state)
    while step < num_steps:
      state, loss = train_chunk(state)            # e.g. a lax.scan over `every` steps
      step += every
      ctx.log(step, {"loss": loss})               # log first, then checkpoint
      ctx.checkpoint(step, state)

  Attributes:
    workdir: the trial's directory (exists); plots and artifacts go here.
    quiet: suppress progress output.
    tensorboard: also write every logged scalar to TensorBoard event files under ``workdir/tb`` (needs
      tensorboardX; the runner turns it on when tensorboardX is installed).
    wandb: also log to Weights & Biases (needs ``wandb``; the runner turns it on with ``config.runner.wandb``
      or ``$PAPERLAB_WANDB``). One W&B run per trial attempt, named by the trial directory and grouped by
      the experiment; ``$WANDB_PROJECT`` (default ``paperlab``) and ``$WANDB_MODE`` (e.g. ``offline``) apply.
    config: the trial's resolved config (plain dict), recorded as the W&B run's config.
    resume_step: set by the runner: the step of the trial's newest checkpoint when the trial starts again.
      If the experiment then calls :meth:`restore`, metric lines up to that step are kept; if it logs
      without restoring (it starts over), the earlier lines are dropped first. ``None``: plain appending.

  Under ``jax.distributed`` (several processes) only process 0 writes metrics, output and TensorBoard / W&B
  records; on the others :meth:`log` and :meth:`print` write nothing (``on_log`` still runs).
  """

  workdir: pathlib.Path
  quiet: bool = False
  tensorboard: bool = False
  wandb: bool = False
  config: Mapping[str, Any] | None = None
  resume_step: int | None = None
  on_log: Any = None

  def __post_init__(self):
    from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
    self.workdir = pathlib.Path(self.workdir)
    self._writer = distributed.is_primary()
    if self._writer:
      self.workdir.mkdir(parents=True, exist_ok=True)
    self._tb = None
    self._wandb_run = None
    self._metrics_file = None
    self._decided = self.resume_step is None  # whether this attempt resumes or starts over is known
    self.restore_problems: list[str] = []  # damaged checkpoints restore() skipped (each naming its file)

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.workdir / "metrics.jsonl"

  @property
  def checkpoint_dir(self) -> pathlib.Path:
    return self.workdir / "checkpoints"

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Append one line ``{"step": step, **metrics}`` to ``metrics.jsonl`` (and to TensorBoard / W&B if on)."""
    if not self._decided:  # logging before any restore: this attempt starts over
      self._drop_metrics_after(-1)
    record = to_jsonable(metrics)
    if not self._writer:  # another process than 0 of a jax.distributed run
      if self.on_log is not None:
        scalars = {k: float(v) for k, v in record.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        self.on_log(int(step), {"loss": next((v for k, v in scalars.items() if k.endswith("loss")), None)})
      return
    if self._metrics_file is None:
      self._metrics_file = _open_append(self.metrics_path)
      weakref.finalize(self, self._metrics_file.close)
    # Flushed per line: the OS has it even if the process is killed right after.
    self._metrics_file.write(json.dumps({"step": int(step), **record}) + "\n")
    self._metrics_file.flush()
    scalars = {k: float(v) for k, v in record.items()
               if isinstance(v, numbers.Real) and not isinstance(v, bool)}
    if self.tensorboard and scalars:
      if self._tb is None:
        self._tb = _event_writer(str(self.workdir / "tb"))
      self._tb.add_summary(_scalar_summary(scalars), int(step))
    if self.wandb and scalars:
      self._wandb().log({"step": int(step), **scalars})
    if self.on_log is not None:
      loss = next((v for k, v in scalars.items() if k == "loss" or k.endswith("loss")), None)
      self.on_log(int(step), {"loss": loss})

  def log_curve(self, name: str, values: Any, *, every: int = 1, first_step: int = 0) -> None:
    """Log ``values[i]`` as ``{name: values[i]}`` at step ``first_step + i`` for every ``every``-th ``i``.

    For a curve computed in one program (e.g. the per-step losses a ``lax.scan`` returns): ``every=k`` logs
    steps ``first_step, first_step + k, ...`` like a loop ``for i in range(0, len(values), k)``.
    """
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
      raise ValueError(f"log_curve: every must be a positive integer, got {every!r}.")
    values = np.asarray(values)
    if values.ndim != 1:
      raise ValueError(f"log_curve: values must be one-dimensional (one value per step), got shape "
                       f"{values.shape}; average over seeds first, e.g. values.mean(axis=0).")
    for i in range(0, len(values), int(every)):
      self.log(first_step + i, {name: values[i].item()})

  def checkpoint(self, step: int, state: Any, *, keep: int = 2) -> None:
    """Save ``state`` (a pytree of arrays: train state, RNG keys, data position...) as of ``step``.

    An orbax checkpoint under ``workdir/checkpoints/<step>`` with a SHA-256 manifest of its files, in the same
    store as the default trainer's; only the newest ``keep`` are kept (two by default, so a damaged newest one
    still leaves one to resume from). Log a step's metrics before checkpointing it.

    Under ``jax.distributed`` (several processes) every process must call it at the same step (the save is
    collective; process 0 writes the manifest): global arrays (sharded over the devices of all processes) are
    saved shard by shard by the processes that hold them and restore onto any sharding, also with another
    number of processes; process-local arrays and host values must be equal on every process (process 0's copy
    is saved).
    """
    import jax  # pylint: disable=g-import-not-at-top
    from paperlab.runner import store  # pylint: disable=g-import-not-at-top
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
      raise ValueError(f"checkpoint: step must be a non-negative integer, got {step!r}.")
    if keep < 1:
      raise ValueError(f"checkpoint: keep must be at least 1, got {keep!r}.")
    from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
    if distributed.process_count() == 1:
      store.save_checkpoint(self.checkpoint_dir, int(step), jax.device_get(state), keep=keep)
      return
    store.save_checkpoint(self.checkpoint_dir, int(step), _for_multihost_save(state), keep=keep)

  def restore(self, template: Any) -> tuple[int, Any] | None:
    """The newest intact checkpoint as ``(step, state)``, or ``None`` when there is none.

    ``template`` gives the structure, shapes and dtypes (e.g. the freshly initialized state, or
    ``jax.eval_shape`` of its initializer). A checkpoint whose files do not match their checksums (or that orbax
    cannot read) is never loaded: it is removed, named in :attr:`restore_problems`, and the next older one is
    tried. Metric lines past the restored step are dropped, so the resumed run logs no step twice. Call it
    before logging.

    Under ``jax.distributed`` every process calls it: process 0 picks the checkpoint (verifying it) and tells
    the others, and each restores it onto ``template``'s shardings (a global array's sharding may differ from the
    one it was saved with, e.g. 2 processes resuming what 1 process saved).
    """
    from paperlab.runner import distributed, store  # pylint: disable=g-import-not-at-top
    if distributed.process_count() == 1:
      step, state, problems = store.restore_newest(self.checkpoint_dir, _abstract(template))
    else:
      step, state, problems = _restore_multihost(self.checkpoint_dir, template)
    self.restore_problems += problems
    if state is None:
      self._drop_metrics_after(-1) if (not self._decided or problems) else None
      self._decided = True
      return None
    self._drop_metrics_after(step)
    return step, state

  def _drop_metrics_after(self, step: int) -> None:
    from paperlab.runner import store  # pylint: disable=g-import-not-at-top
    if self._metrics_file is not None:
      self._metrics_file.close()
      self._metrics_file = None
    self._decided = True
    if not self._writer:
      return
    if step < 0:
      self.metrics_path.unlink(missing_ok=True)
    else:
      store.truncate_metrics(self.metrics_path, step)
    self._decided = True

  def _settle(self) -> None:
    """After a finished attempt that neither logged nor restored: the earlier attempt's lines are stale."""
    if not self._decided:
      self._drop_metrics_after(-1)

  def _wandb(self):
    if self._wandb_run is None:
      import os  # pylint: disable=g-import-not-at-top
      import wandb  # pylint: disable=g-import-not-at-top
      self._wandb_run = wandb.init(
          dir=str(self.workdir), name=self.workdir.name, group=self.workdir.parent.name,
          project=os.environ.get("WANDB_PROJECT", "paperlab"), config=_plain_config(self.config),
          reinit="create_new")  # the trials of a vmapped group log side by side
      self._wandb_run.define_metric("step")
      self._wandb_run.define_metric("*", step_metric="step")  # steps of custom runs need not increase
    return self._wandb_run

  def print(self, *args) -> None:
    """Print (unless quiet) and keep the text in ``workdir/output.txt``; the runner prints it again when the
    finished trial is skipped on a re-run."""
    text = " ".join(str(a) for a in args)
    if not self.quiet and self._writer:
      print(text)
    if not self._writer:
      return
    try:
      with _open_append(self.workdir / "output.txt") as f:
        f.write(text + "\n")
    except OSError:
      pass

  def progress(self, total: int, desc: str = ""):
    """A progress bar (silent when stderr is not a terminal or the context is quiet)."""
    from paperlab.runner.progress import Progress  # pylint: disable=g-import-not-at-top
    return Progress(total, desc, quiet=self.quiet)

  def release(self) -> None:
    """Close the metrics and TensorBoard files until the next :meth:`log` (which opens them again; TensorBoard
    then starts a new event file in the same directory). The runner calls this between chunks of large groups
    so that a sweep of thousands of trials does not hold thousands of open files."""
    if self._metrics_file is not None:
      self._metrics_file.close()
      self._metrics_file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def close(self) -> None:
    """Close the metrics file and flush and close the TensorBoard / W&B writers (the runner calls this when
    the trial ends)."""
    if self._metrics_file is not None:
      self._metrics_file.close()
      self._metrics_file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb_run is not None:
      self._wandb_run.finish()
      self._wandb_run = None
