"""Progress of long work: a live ``rich`` display on a terminal, plain periodic lines otherwise (CI logs, pipes).

Each :class:`Progress` is one line: what it counts (trials of an experiment, steps of a vmapped group), done of
total, rate, ETA and the last loss it was given. On a terminal every open ``Progress`` is a row of one shared
``rich`` live display; elsewhere a line is written every ``$PAPERLAB_PROGRESS_SECONDS`` seconds (default 30) and
one when the work ends. ``quiet=True`` (``--quiet``) silences it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO, Any

DEFAULT_INTERVAL = 30.0


def _interval() -> float:
  try:
    value = float(os.environ.get("PAPERLAB_PROGRESS_SECONDS", DEFAULT_INTERVAL))
  except ValueError:
    return DEFAULT_INTERVAL
  return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Board:
  """The one ``rich`` live display shared by the open terminal progress rows (rich allows one at a time)."""

  def __init__(self):
    self.progress = None
    self.rows = 0

  def add(self, stream: IO[str], desc: str, total: int, completed: int):
    if self.progress is None:
      from rich.console import Console  # pylint: disable=g-import-not-at-top
      from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,  # pylint: disable=g-import-not-at-top
                                 TextColumn, TimeRemainingColumn)
      self.progress = RichProgress(
          TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
          TextColumn("ETA"), TimeRemainingColumn(compact=True), TextColumn("{task.fields[info]}"),
          console=Console(file=stream), transient=False, refresh_per_second=4)
      self.progress.start()
    self.rows += 1
    return self.progress.add_task(desc, total=total or None, completed=completed, rate="", info="")

  def update(self, task, **kwargs) -> None:
    if self.progress is not None:
      self.progress.update(task, **kwargs)

  def remove(self, task) -> None:
    if self.progress is None:
      return
    self.progress.refresh()
    self.rows -= 1
    if self.rows <= 0:
      self.progress.stop()
      self.progress, self.rows = None, 0


_BOARD = _Board()


class Progress:
  """``with Progress(total, "trials") as bar: ... bar.update(n, loss=x)``.

  Args:
    total: units of work (0 if unknown).
    desc: what is counted, e.g. ``"runner_demo: group of 16 trials"``.
    stream: where to draw (default stderr).
    quiet: draw nothing.
    unit: the unit's name in the rate (``"steps"`` gives ``steps/s``).
    start: units already done before this run (a resumed trial); not counted in the rate.
    interval: seconds between plain lines when ``stream`` is not a terminal (default
      ``$PAPERLAB_PROGRESS_SECONDS`` or 30).
    live: force the terminal display on or off (default: whether ``stream`` is a terminal).
  """

  def __init__(self, total: int, desc: str = "", *, stream: IO[str] | None = None, quiet: bool = False,
               unit: str = "", start: int = 0, interval: float | None = None, live: bool | None = None,
               width: int = 24, min_interval: float = 0.1):
    del width, min_interval  # accepted for compatibility; rich sizes the bar
    self.total = max(int(total), 0)
    self.desc = desc
    self.unit = unit
    self.stream = sys.stderr if stream is None else stream
    isatty = getattr(self.stream, "isatty", None)
    self.live = bool(isatty and isatty()) if live is None else live
    self.enabled = not quiet
    self.interval = _interval() if interval is None else interval
    self.start = max(int(start), 0)
    self.count = self.start
    self.step: int | None = None
    self.loss: float | None = None
    self._t0 = time.monotonic()
    self._last_line = self._t0
    self._written = self.count  # the count the last plain line showed
    self._task = None
    if self.enabled and self.live:
      self._task = _BOARD.add(self.stream, desc, self.total, self.count)

  # What is shown.
  def rate(self) -> float:
    elapsed = time.monotonic() - self._t0
    return (self.count - self.start) / elapsed if elapsed > 0 else 0.0

  def eta(self) -> float:
    rate = self.rate()
    if not self.total or rate <= 0:
      return float("inf") if self.count < self.total else 0.0
    return max(self.total - self.count, 0) / rate

  def _info(self) -> str:
    parts = []
    if self.step is not None:
      parts.append(f"step {self.step}")
    if self.loss is not None:
      parts.append(f"loss {self.loss:.4g}")
    return "  ".join(parts)

  def line(self) -> str:
    """The plain-text form of the current state (what non-terminal streams get)."""
    done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
    pct = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
    unit = f" {self.unit}" if self.unit else ""
    text = f"{self.desc}: {done}{unit}{pct}  {self.rate():.3g} {self.unit or 'units'}/s  ETA {_duration(self.eta())}"
    info = self._info()
    return f"{text}  {info}" if info else text

  def update(self, n: int = 1, *, step: int | None = None, loss: Any = None) -> None:
    """``n`` more units done; ``step`` and ``loss`` (optional) are shown as the latest values."""
    self.count = min(self.count + n, self.total) if self.total else self.count + n
    if step is not None:
      self.step = int(step)
    if loss is not None:
      try:
        self.loss = float(loss)
      except (TypeError, ValueError):
        pass
    if not self.enabled:
      return
    if self._task is not None:
      rate = self.rate()
      _BOARD.update(self._task, completed=self.count, rate=f"{rate:.3g} {self.unit or 'units'}/s" if rate else "",
                    info=self._info())
      return
    now = time.monotonic()
    if now - self._last_line >= self.interval:
      self._write_line()
      self._last_line = now

  def _write_line(self) -> None:
    self._written = self.count
    try:
      self.stream.write(f"[paperlab] {self.line()}\n")
      self.stream.flush()
    except (OSError, ValueError):
      self.enabled = False  # a closed pipe must not stop the run

  def close(self) -> None:
    if not self.enabled:
      return
    if self._task is not None:
      _BOARD.update(self._task, completed=self.count, info=self._info())
      _BOARD.remove(self._task)
      self._task = None
    elif self.count > self._written:
      self._write_line()
    self.enabled = False

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
