"""Timing harness: warm-up, ``block_until_ready``, median of N, JSON out."""

from __future__ import annotations

import json
import pathlib
import platform
import statistics
import time
from typing import Any, Callable

import jax


def time_call(fn: Callable[..., Any], *args, warmup: int = 2, repeats: int = 10) -> float:
  """Median wall time in seconds of ``fn(*args)``, blocking on every output (after ``warmup`` calls)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def device_info() -> dict:
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
          "cpu": platform.processor() or platform.machine(), "jax": jax.__version__}


def compare(name: str, op: Callable[[], Any], baseline: Callable[[], Any], *, sizes: dict,
            op_name: str = "op", baseline_name: str = "baseline", target: float | None = None,
            warmup: int = 2, repeats: int = 10) -> dict:
  """Time ``op`` and ``baseline`` (zero-argument callables) in this process and return a result record.

  ``ratio = op_seconds / baseline_seconds``; ``target`` (optional) is the ratio the issue asks for, and
  ``meets_target`` says whether this run met it.
  """
  t_base = time_call(baseline, warmup=warmup, repeats=repeats)
  t_op = time_call(op, warmup=warmup, repeats=repeats)
  record = {"name": name, "op": op_name, "baseline": baseline_name, "sizes": sizes, "device": device_info(),
            "op_seconds": t_op, "baseline_seconds": t_base, "ratio": t_op / t_base}
  if target is not None:
    record["target"] = target
    record["meets_target"] = bool(t_op / t_base <= target)
  return record


def write(records: list[dict], out: str | pathlib.Path) -> pathlib.Path:
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(records, indent=2))
  return out
