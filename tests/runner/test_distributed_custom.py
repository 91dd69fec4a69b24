"""A custom ``run(config, ctx)`` experiment (not the default trainer) under jax.distributed: its checkpoints.

Three launches of the same command on one trial: 1 process x 4 host devices crashes right after its checkpoint
at step 4, then 2 processes x 2 devices resume from step 4 (restoring what 1 process wrote; their
``Context.checkpoint`` at step 6 is collective, process 0 writes the store) until process 0 crashes after step 6
(process 1 must then stop with the one-line message), then 1 process resumes from step 6 (restoring what 2
processes wrote) and finishes. The state holds a global array sharded over all devices
(orbax reshards it between the layouts), a process-local array and a host value; the result is checked against
the closed form of gradient descent on ``0.5 * |w - t|^2``: ``w_k = t (1 - (1 - lr)^k)``.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from _jax_procs import cpu_env as _env, free_port as _free_port
from paperlab.runner import distributed, store

ROOT = pathlib.Path(__file__).resolve().parents[2]


EXPERIMENT = '''
"""Gradient descent on 0.5 * |w - t|^2 with w sharded over the global device mesh (test fixture)."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils


def get_config():
  c = ml_collections.ConfigDict()
  c.num_steps = 8
  c.every = 2
  c.learning_rate = 0.25
  return c


def run(config, ctx):
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  target = np.arange(2 * jax.device_count(), dtype=np.float32)
  zeros = np.zeros_like(target)
  state = {"w": jax.make_array_from_callback(zeros.shape, sharded, lambda i: zeros[i]),  # global
           "key": jax.random.key_data(jax.random.key(0)),  # process-local, equal on every process
           "steps_seen": np.zeros((), np.int32)}  # a host value
  restored = ctx.restore(state)
  start, state = restored or (0, state)
  t = jax.make_array_from_callback(target.shape, sharded, lambda i: target[i])

  @jax.jit
  def chunk(w, t):
    for _ in range(config.every):
      w = w - config.learning_rate * (w - t)
    return w, 0.5 * jnp.sum((w - t) ** 2)

  step = start
  while step < config.num_steps:
    w, loss = chunk(state["w"], t)
    step += config.every
    key = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(state["key"]), step))
    state = {"w": w, "key": key, "steps_seen": np.asarray(state["steps_seen"]) + config.every}
    ctx.log(step, {"loss": loss, "start": start})
    ctx.checkpoint(step, state)
    if step == int(os.environ.get("STOP_AT", "-1")) and jax.process_index() == 0:
      os._exit(3)  # a crash of process 0 right after the checkpoint
  w = np.asarray(multihost_utils.process_allgather(state["w"], tiled=True))
  return {"loss": float(loss), "w_sum": float(w.sum()), "steps_seen": int(state["steps_seen"]),
          "key": [int(k) for k in np.asarray(state["key"]).ravel()]}
'''


def _launch(experiment: pathlib.Path, workdir: pathlib.Path, num_processes: int, stop_at: int) -> list[str]:
  port = _free_port()
  dist = lambda i: (["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
                    if num_processes == 2 else [])
  procs = [subprocess.Popen([sys.executable, "-m", "paperlab.cli", "run", str(experiment), "--workdir",
                             str(workdir), "--quiet", *dist(i)],
                            env=dict(_env(4 // num_processes), STOP_AT=str(stop_at)), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  outs = [procs[0].communicate(timeout=240)[0]]
  crashed_at = time.monotonic()
  outs += [p.communicate(timeout=240)[0] for p in procs[1:]]
  if num_processes == 2:
    exit_s = time.monotonic() - crashed_at
    print(f"process 1 exited {exit_s:.1f} s after process 0 crashed")
    assert exit_s < 60
  assert procs[0].returncode == (3 if stop_at > 0 else 0), outs[0][-3000:]
  for p, out in zip(procs[1:], outs[1:]):
    assert p.returncode == distributed.PEER_LOST_EXIT, out[-3000:]
  return outs


@pytest.mark.slow
def test_a_custom_run_checkpoints_and_resumes_across_1_and_2_processes(tmp_path):
  experiment = tmp_path / "custom_dp.py"
  experiment.write_text(EXPERIMENT)
  workdir = tmp_path / "runs"
  _launch(experiment, workdir, 1, stop_at=4)
  (trial,) = [p for p in (workdir / "custom_dp").iterdir() if p.is_dir()]
  assert store.checkpoint_steps(trial / "checkpoints") == [2, 4]
  outs = _launch(experiment, workdir, 2, stop_at=6)
  # Process 0 (the coordination service's host) crashed: JAX aborts process 1 at once, from C++; the supervising
  # command turns that into one line naming process 0 and the step to resume from.
  lines = outs[1].strip().splitlines()
  assert lines[-1] == ("paperlab: process 0 of 2 stopped responding (JAX's coordination service reported it "
                       "lost); relaunch the same command to resume from step 6"), outs[1][-3000:]
  assert not any("Terminating process" in line or "Check failure" in line for line in lines), outs[1][-3000:]
  assert store.checkpoint_steps(trial / "checkpoints") == [4, 6]
  assert (trial / "checkpoints" / "6" / "ocdbt.process_1").is_dir()  # both processes took part in the save
  assert store.verify_checkpoint(trial / "checkpoints", 6) is None  # process 0 wrote the manifest
  _launch(experiment, workdir, 1, stop_at=-1)

  lines = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["start"]) for r in lines] == [(2, 0), (4, 0), (6, 4), (8, 6)]  # once each, resumed
  lr, target = 0.25, np.arange(8, dtype=np.float64)
  for r in lines:  # closed form of gradient descent on 0.5 |w - t|^2
    expected = 0.5 * np.sum(target**2) * (1 - lr) ** (2 * r["step"])
    assert abs(r["loss"] - expected) <= 1e-6 * max(1.0, expected), (r, expected)
  result = json.loads((trial / "result.json").read_text())
  assert abs(result["w_sum"] - target.sum() * (1 - (1 - lr) ** 8)) <= 1e-5
  assert result["steps_seen"] == 8  # the host value carried through both restores

  import jax  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  for step in (2, 4, 6, 8):
    key = jax.random.fold_in(key, step)
  assert result["key"] == [int(k) for k in np.asarray(jax.random.key_data(key)).ravel()]
