"""The benchmark harness writes the JSON record it promises (timings themselves are never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_python_m_benchmarks_writes_json(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks", "train_step", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  (record,) = json.loads((tmp_path / "train_step.json").read_text())
  assert {"name", "sizes", "device", "op_seconds", "baseline_seconds", "ratio"} <= set(record)
  assert record["ratio"] == record["op_seconds"] / record["baseline_seconds"] > 0


def test_unknown_benchmark_is_an_error(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks", "nope", "--out", str(tmp_path)],
                       capture_output=True, text=True)
  assert out.returncode != 0 and "unknown benchmark" in out.stderr
