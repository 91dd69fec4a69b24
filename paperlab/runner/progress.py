"""A dependency-free progress bar that stays silent when its stream is not a terminal (CI logs, pipes)."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
  """``with Progress(total, "trials") as bar: ... bar.update(n)``; draws on ``stream`` only if it is a TTY."""

  def __init__(self, total: int, desc: str = "", *, stream: IO[str] | None = None, quiet: bool = False,
               width: int = 24, min_interval: float = 0.1):
    self.total = max(int(total), 0)
    self.desc = desc
    self.stream = sys.stderr if stream is None else stream
    isatty = getattr(self.stream, "isatty", None)
    self.enabled = not quiet and bool(isatty and isatty())
    self.width = width
    self.min_interval = min_interval
    self.count = 0
    self._start = time.monotonic()
    self._last_draw = 0.0

  def update(self, n: int = 1) -> None:
    self.count = min(self.count + n, self.total) if self.total else self.count + n
    now = time.monotonic()
    if self.enabled and (now - self._last_draw >= self.min_interval or self.count >= self.total):
      self._draw(now)

  def _draw(self, now: float) -> None:
    frac = self.count / self.total if self.total else 1.0
    filled = int(round(frac * self.width))
    bar = "#" * filled + "." * (self.width - filled)
    self.stream.write(f"\r{self.desc} [{bar}] {self.count}/{self.total} {now - self._start:5.1f}s")
    self.stream.flush()
    self._last_draw = now

  def close(self) -> None:
    if self.enabled:
      self._draw(time.monotonic())
      self.stream.write("\n")
      self.stream.flush()
      self.enabled = False

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
