"""The README's commands, in the README's order, as a new user types them in an empty directory: the quickstart,
the sweep, `paperlab report runs` on their output, and the papers table."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_COMMANDS = ("paperlab run", "paperlab report", "paperlab papers")


def readme_commands() -> list[str]:
  """The ``paperlab run/report/papers`` commands of the README's bash blocks, in order (``a && b`` split)."""
  text = (ROOT / "README.md").read_text()
  tour_end = text.find("\n## ", text.index("## A short tour") + 1)  # later sections: other machines and inputs
  text = text[: tour_end if tour_end != -1 else len(text)]
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.splitlines():
      line = line.split("#", 1)[0].strip()
      commands += [c.strip() for c in line.split("&&") if c.strip().startswith(RUN_COMMANDS)]
  return commands


def test_the_readme_names_the_quickstart_the_sweep_and_the_report_in_that_order():
  commands = readme_commands()
  kinds = [c.split()[1] + (" --sweep" if "--sweep" in c else "") for c in commands]
  assert kinds.index("run") < kinds.index("run --sweep") < kinds.index("report")
  assert "paperlab run experiments/quickstart.py" in commands and "paperlab report runs" in commands


@pytest.mark.slow
def test_readme_commands_run_in_order_in_an_empty_directory(tmp_path):
  (tmp_path / "experiments").symlink_to(ROOT / "experiments")  # the paths the README uses, from a checkout
  bin_dir = pathlib.Path(sys.executable).parent
  env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "JAX_PLATFORMS": "cpu"}
  outputs = {}
  for command in readme_commands():
    proc = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{command}\n{proc.stderr[-3000:]}"
    outputs[command] = proc.stdout
  assert "test accuracy over 3 seeds" in outputs["paperlab run experiments/quickstart.py"]
  table = outputs["paperlab report runs"]
  assert "== quickstart (1 trials)" in table and "== runner_demo (16 trials)" in table
  assert "test_accuracy" in table
  runs = tmp_path / "runs"
  pngs = sorted(runs.glob("*.png"))
  assert (runs / "report.md").is_file() and pngs
  for png in pngs:  # metric names such as "adamw/train_loss" became file names inside runs/
    assert png.parent == runs and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert {p.name for p in tmp_path.iterdir()} == {"experiments", "runs"}
