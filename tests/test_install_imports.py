"""Using the library without the runner: importing the leaf families pulls in neither the runner nor heavy
corner dependencies (matplotlib, scikit-learn, cma, torch); those load only where they are used."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys


ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "sklearn", "cma", "torch", "ray", "wandb", "tensorboardX", "orbax")  # (flax imports rich)


def _imported_after(statement: str) -> list[str]:
  code = (f"import sys, json\n{statement}\n"
          "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} | "
          "{m for m in sys.modules if m.startswith('paperlab.')})))")
  env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.splitlines()[-1])


def test_leaf_families_import_no_runner_and_no_heavy_dependency():
  loaded = _imported_after("import paperlab.optim, paperlab.losses")  # one interpreter: JAX starts once
  assert not [m for m in loaded if m.startswith("paperlab.runner")], loaded
  assert not [m for m in HEAVY if m in loaded], [m for m in HEAVY if m in loaded]


def test_the_runner_package_imports_without_jax_or_plotting():
  loaded = _imported_after("import paperlab.runner")
  assert not [m for m in ("jax", "matplotlib", "sklearn", "rich", "orbax") if m in loaded]


def test_digits_without_scikit_learn_says_how_to_install_it():
  code = ("import sys\nsys.modules['sklearn'] = None\nfrom paperlab import data\n"
          "try:\n  data.digits()\nexcept ImportError as e:\n  print(e)\n")
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "pip install scikit-learn" in proc.stdout
