"""``python -m benchmarks optim`` writes the AdamP-vs-AdamW records issue 20 asks for (timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_optim_benchmark_records_both_issue_trees(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks", "optim", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-2000:]
  records = {r["name"]: r for r in json.loads((tmp_path / "optim.json").read_text())}
  for name in ("adamp_vs_adamw_mixed", "adamp_vs_adamw_dense"):
    r = records[name]
    assert r["op"] == "paperlab.optim.adamp" and r["baseline"] == "optax.adamw" and r["target"] == 1.5
    assert r["ratio"] == r["op_seconds"] / r["baseline_seconds"] > 0
    assert r["ratio_cpu"] == r["op_cpu_seconds"] / r["baseline_cpu_seconds"] > 0
  assert records["adamp_vs_adamw_mixed"]["sizes"]["leaves"] == 16
  assert records["adamp_vs_adamw_dense"]["sizes"]["leaves"] == 12
