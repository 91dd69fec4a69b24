"""The README's first command: `paperlab run experiments/quickstart.py` (acceptance of the Foundation issue)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_cli_reaches_95_percent_and_writes_a_png(tmp_path):
  env = {**os.environ, "PATH": str(pathlib.Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
  start = time.perf_counter()
  out = subprocess.run(["paperlab", "run", str(ROOT / "experiments" / "quickstart.py"), "--workdir", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  elapsed = time.perf_counter() - start
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert elapsed < 180, f"quickstart took {elapsed:.0f} s"
  (result_file,) = tmp_path.glob("quickstart/*/result.json")
  result = json.loads(result_file.read_text())
  results = result.get("result", result)["results"]
  assert set(results) == {"adamw", "adamp", "sam"}
  for name, r in results.items():
    assert r["test_accuracy_mean"] >= 0.95, (name, r)
    assert f"{name}" in out.stdout
  png = result_file.parent / "learning_curves.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  import matplotlib.image

  assert matplotlib.image.imread(png).shape[0] > 100
