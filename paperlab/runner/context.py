"""What an experiment's ``run(config, ctx)`` receives from the runner."""

from __future__ import annotations

import dataclasses
import json
import math
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


@dataclasses.dataclass
class Context:
  """Run-time services for one trial.

  Attributes:
    workdir: the trial's directory (exists); plots and artifacts go here.
    quiet: suppress progress output.
  """

  workdir: pathlib.Path
  quiet: bool = False

  def __post_init__(self):
    self.workdir = pathlib.Path(self.workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)

  @property
  def metrics_path(self) -> pathlib.Path:
    return self.workdir / "metrics.jsonl"

  def log(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Append one line ``{"step": step, **metrics}`` to ``metrics.jsonl``."""
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps({"step": int(step), **to_jsonable(metrics)}) + "\n")

  def print(self, *args) -> None:
    if not self.quiet:
      print(*args)
