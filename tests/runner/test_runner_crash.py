"""Crash safety: a 16-trial sweep SIGKILLed at three random moments resumes to the uninterrupted results."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time

import pytest

from conftest import PYTHON, default_trainer_source, subprocess_env
from paperlab.runner import run_experiment

NUM_STEPS, LOG_EVERY = 60, 10


def _progress(root) -> int:
  """Grows with every checkpoint and result a runner writes (old checkpoints are deleted, so count steps)."""
  steps = [int(p.name) for p in root.glob("exp/*/checkpoints/*") if p.name.isdigit()]
  return sum(steps) + 10**6 * len(list(root.glob("exp/*/result.json")))


def _start(exp, root):
  env = subprocess_env(PAPERLAB_COMPILATION_CACHE=str(root.parent / "xla-cache"))  # restarts skip compiling
  return subprocess.Popen([PYTHON, "-m", "paperlab.cli", "run", str(exp), "--sweep", "--workdir", str(root),
                           "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkilled_sweep_resumes_to_the_uninterrupted_results(write_experiment, tmp_path):
  exp = write_experiment(default_trainer_source(num_steps=NUM_STEPS, checkpoint_every=20, log_every=LOG_EVERY,
                                                lrs=(1e-3, 3e-3, 1e-2, 3e-2), seeds=4))
  crashed, clean = tmp_path / "crashed", tmp_path / "clean"
  rng = random.Random(0)
  kills = 0
  while kills < 3:
    before = _progress(crashed)
    proc = _start(exp, crashed)
    # Kill at a random moment after this runner has made some progress (mid-chunk, mid-checkpoint, ...).
    deadline = time.monotonic() + 300
    while _progress(crashed) == before and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.5))
    if proc.poll() is not None:
      break  # finished before we could kill it
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
  final = _start(exp, crashed)
  _, err = final.communicate(timeout=600)
  assert final.returncode == 0, err.decode()[-2000:]
  assert kills >= 2  # the sweep really was interrupted

  reference = run_experiment(exp, sweep=True, workdir=clean, quiet=True)
  assert len(reference) == 16 and all(s["status"] == "done" for s in reference)
  for s in reference:
    trial = crashed / "exp" / s["trial_id"]
    status = json.loads((trial / "status.json").read_text())
    assert status["status"] == "done"
    steps = [json.loads(l)["step"] for l in (trial / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(LOG_EVERY, NUM_STEPS + 1, LOG_EVERY))  # none lost, none repeated
    assert json.loads((trial / "result.json").read_text()) == s["result"]
