"""``python -m benchmarks quant`` (issue 15) runs at quick sizes and writes well-formed records (timings are not
asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_quant_benchmark_records(tmp_path):
  out = subprocess.run([sys.executable, "-m", "benchmarks", "quant", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-2000:]
  records = {r["name"]: r for r in json.loads((tmp_path / "quant.json").read_text())}
  for fmt in ("mxfp8_e4m3", "mxfp4_e2m1"):  # the quick run's formats
    assert records[f"mx_quantize_{fmt}_vs_read_write"]["baseline"] == "jit(x * 2) float32"
  for name in ("qdot_int4_g128_vs_bf16_matmul", "qdot_mxfp4_e2m1_vs_f32_matmul", "df11_decode_vs_copy",
               "df11_decode_jax_vs_read_write"):
    r = records[name]
    assert r["ratio"] == r["op_seconds"] / r["baseline_seconds"] > 0
  sizes = records["qdot_int4_g128_vs_bf16_matmul"]["sizes"]
  assert sizes["qw_nbytes"] < sizes["bf16_w_nbytes"] / 3
  assert records["df11_decode_vs_copy"]["sizes"]["size_ratio"] < 0.75
