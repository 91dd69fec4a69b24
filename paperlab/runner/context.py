"""What an experiment's ``run(config, ctx)`` receives from the runner."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import pathlib
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


def tensorboard_available() -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return importlib.util.find_spec("tensorboardX") is not None


def _summary_writer(logdir: str):
  """A tensorboardX ``SummaryWriter``, imported without dragging in PyTorch when nothing imported it yet.

  tensorboardX imports ``torch`` (seconds) only to accept torch tensors; we log Python floats.
  """
  import sys  # pylint: disable=g-import-not-at-top
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes ``import torch`` inside tensorboardX raise ImportError
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    finally:
      del sys.modules["torch"]
  else:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(logdir)


@dataclasses.dataclass
class Context:
  """Run-time services for one trial.

  Attributes:
    workdir: the trial's directory (exists); plots and artifacts go here.
    quiet: suppress progress output.
    tensorboard: also write every logged scalar to TensorBoard event files under ``workdir/tb`` (needs
      tensorboardX; the runner turns it on when tensorboardX is installed).
    wandb: also log to Weights & Biases (needs ``wandb`` and a configured account; off by default).
  """

  workdir: pathlib.Path
  quiet: bool = False
  tensorboard: bool = False
  wandb: bool = False

  def __post_init__(self):
    self.workdir = pathlib.Path(self.workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._tb = None
    self._wandb_run = None

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.workdir / "metrics.jsonl"

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Append one line ``{"step": step, **metrics}`` to ``metrics.jsonl`` (and to TensorBoard / W&B if on)."""
    record = to_jsonable(metrics)
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps({"step": int(step), **record}) + "\n")
    scalars = {k: float(v) for k, v in record.items()
               if isinstance(v, numbers.Real) and not isinstance(v, bool)}
    if self.tensorboard and scalars:
      if self._tb is None:
        self._tb = _summary_writer(str(self.workdir / "tb"))
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, int(step))
    if self.wandb and scalars:
      if self._wandb_run is None:
        import wandb  # pylint: disable=g-import-not-at-top
        self._wandb_run = wandb.init(dir=str(self.workdir), name=self.workdir.name, reinit=True)
      self._wandb_run.log(scalars, step=int(step))

  def print(self, *args) -> None:
    if not self.quiet:
      print(*args)

  def progress(self, total: int, desc: str = ""):
    """A progress bar (silent when stderr is not a terminal or the context is quiet)."""
    from paperlab.runner.progress import Progress  # pylint: disable=g-import-not-at-top
    return Progress(total, desc, quiet=self.quiet)

  def close(self) -> None:
    """Flush and close the TensorBoard / W&B writers (the runner calls this when the trial ends)."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb_run is not None:
      self._wandb_run.finish()
      self._wandb_run = None
