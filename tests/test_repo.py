"""Repository contracts: README commands and code blocks, .ci/run, license, no machine paths."""

from __future__ import annotations

import pathlib
import re
import os
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TEST_COMMAND = 'pip install -e ".[test]" && pytest'
RUN_COMMAND = "pip install -e . && paperlab run experiments/quickstart.py"


def _env() -> dict:
  """The environment with this interpreter's scripts (the ``paperlab`` console script) first on PATH."""
  bindir = str(pathlib.Path(sys.executable).parent)
  return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def _blocks(lang: str, text: str = README) -> list[str]:
  return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _tour() -> str:
  """The README up to the end of "A short tour" (later sections show commands for other machines and inputs:
  several hosts, checkpoints of your own)."""
  start = README.index("## A short tour")
  end = README.find("\n## ", start + 1)
  return README[: end if end != -1 else len(README)]


def test_readme_has_exactly_the_two_setup_commands_first():
  bash = [b.strip() for b in _blocks("bash")]
  assert bash[:2] == [RUN_COMMAND, TEST_COMMAND]


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text()
  commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
  assert commands[-1] == TEST_COMMAND
  assert "set -euo pipefail" in ci  # any failure, including pytest's exit 5 (no tests), fails CI


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
  code = "\n\n".join(_blocks("python"))
  assert code.strip()
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_readme_tour_shell_commands_run(tmp_path):
  env = {**_env(), "PAPERLAB_RECORDS": str(tmp_path / "records")}  # keep `paperlab reproduce` out of the checkout
  (tmp_path / "experiments").symlink_to(ROOT / "experiments")  # commands run as from the repo root, runs/ in tmp
  for block in _blocks("bash", _tour())[2:]:
    for line in block.strip().splitlines():
      assert line.startswith("paperlab "), f"tour shell lines must be paperlab commands: {line!r}"
      result = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
      assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


def test_license_is_apache_2():
  text = (ROOT / "LICENSE").read_text()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_no_machine_paths_in_tracked_files():
  files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
  if not files:
    pytest.skip("not a git checkout")  # an sdist has no history; CI always runs from a clone
  pattern = re.compile("/" + r"work/main|/" + r"root/|/home/\w+/")
  offenders = []
  for name in files:
    path = ROOT / name
    if path.suffix in {".png", ".safetensors"} or not path.is_file():
      continue
    try:
      if pattern.search(path.read_text()):
        offenders.append(name)
    except UnicodeDecodeError:
      continue
  assert not offenders, f"machine-specific paths in {offenders}"


def test_test_module_basenames_are_unique():
  """tests/ has no packages (rootdir-relative imports), so two test modules with the same basename make pytest fail
  to collect the whole suite ("import file mismatch")."""
  import collections
  import pathlib

  root = pathlib.Path(__file__).resolve().parent
  names = collections.Counter(p.name for p in root.rglob("test_*.py"))
  assert not [n for n, c in names.items() if c > 1]
