"""The runner on several processes joined by jax.distributed (2 local CPU processes x 2 host devices, gloo).

Every process runs ``python -m paperlab.cli run ... --coordinator 127.0.0.1:PORT --num-processes 2
--process-id I``; the reference is one process with 4 host devices (the same global mesh size).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from _jax_procs import cpu_env as _env, free_port as _free_port
from paperlab.runner import distributed, store

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "experiments" / "runner_demo.py")
NUM_STEPS = 400  # long enough that process 1 is killed mid-run (a 20-step chunk takes well under a second)
ARGS = [f"--config.train.num_steps={NUM_STEPS}", "--config.train.log_every=20", "--config.train.checkpoint_every=20",
        "--config.train.data_parallel=True", "--quiet"]


def _launch(workdir: pathlib.Path, args, num_processes: int = 2, devices: int = 2):
  port = _free_port()
  return [subprocess.Popen([sys.executable, "-m", "paperlab.cli", "run", DEMO, "--workdir", str(workdir),
                            "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(num_processes),
                            "--process-id", str(i), *args],
                           env=_env(devices), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
          for i in range(num_processes)]


def _metric_lines(workdir: pathlib.Path) -> list[dict]:
  (trial,) = [p for p in (workdir / "runner_demo").iterdir() if p.is_dir()]
  return [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process_and_survive_a_killed_process(tmp_path):
  """2 processes x 2 devices, data parallel over the 4 global devices, against 1 process x 4 devices.

  Process 1 is SIGKILLed mid-run: process 0 exits non-zero within 60 s naming the dead task (JAX's heartbeat).
  The same command run again resumes from the last checkpoint; the loss curve then equals the 1-process run's
  to 1e-6, every metric line is written once (by process 0), and the checkpoint the 2 processes wrote together
  verifies against its SHA-256 manifest and restores in one process (this one).
  """
  single = subprocess.Popen([sys.executable, "-m", "paperlab.cli", "run", DEMO, "--workdir", str(tmp_path / "one"),
                             *ARGS], env=_env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
  procs = _launch(tmp_path / "two", ARGS)
  metrics = tmp_path / "two" / "runner_demo"
  deadline = time.monotonic() + 180
  while not any('"step": 40,' in p.read_text() for p in metrics.glob("*/metrics.jsonl")):
    assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[0][-3000:]
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  out = procs[0].communicate(timeout=120)[0]
  exit_s = time.monotonic() - killed_at
  print(f"process 0 exited {exit_s:.1f} s after process 1 was killed")
  assert procs[0].returncode == distributed.PEER_LOST_EXIT, out[-3000:]
  assert exit_s < 60
  procs[1].communicate()
  (trial,) = [p for p in metrics.iterdir() if p.is_dir()]
  last = store.checkpoint_steps(trial / "checkpoints")[-1]
  # One paperlab line (default heartbeat timeout, 30 s) naming the lost process and the step a relaunch resumes.
  assert out.strip().splitlines()[-1] == (
      f"paperlab: process 1 of 2 stopped responding (no heartbeat for 30 s); relaunch the same command to "
      f"resume from step {last}"), out[-3000:]
  assert "Traceback" not in out and "coordination_service" not in out, out[-3000:]
  # Interrupted: still "running", or "failed" when process 0's collective saw the dead peer first.
  assert json.loads((trial / "status.json").read_text())["status"] in ("running", "failed")

  procs = _launch(tmp_path / "two", ARGS)  # the same command again: resumes
  outs = [p.communicate(timeout=240)[0] for p in procs]
  outs.append(single.communicate(timeout=240)[0])
  for p, out in zip([*procs, single], outs):
    assert p.returncode == 0, out[-3000:]
  two, one = _metric_lines(tmp_path / "two"), _metric_lines(tmp_path / "one")
  steps = list(range(20, NUM_STEPS + 1, 20))
  assert [r["step"] for r in two] == steps  # each line exactly once, across the kill and the resume
  assert [r["step"] for r in one] == steps
  for a, b in zip(two, one):
    for k in ("loss", "accuracy", "grad_norm"):
      assert abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(b[k])), (a, b)
  result_two = json.loads((trial / "result.json").read_text())
  (trial_one,) = [p for p in (tmp_path / "one" / "runner_demo").iterdir() if p.is_dir()]
  result_one = json.loads((trial_one / "result.json").read_text())
  assert result_two.keys() == result_one.keys()
  for k, v in result_one.items():
    assert abs(result_two[k] - v) <= 1e-6 * max(1.0, abs(v)), (k, result_two[k], v)
  assert " done " in outs[0] and " done " not in outs[1]  # process 0 reports; the other stays silent

  from paperlab.runner import trainer
  assert store.checkpoint_steps(trial / "checkpoints")[-1] == NUM_STEPS
  assert store.verify_checkpoint(trial / "checkpoints", NUM_STEPS) is None
  config = json.loads((trial / "config.json").read_text())
  abstract = trainer.GroupTrainer(config).abstract_checkpoint()
  restored = store.restore_checkpoint(trial / "checkpoints", NUM_STEPS, abstract)
  assert int(restored["state"].step) == NUM_STEPS


def test_single_process_helpers_are_the_identity():
  assert not distributed.is_initialized()
  assert distributed.is_primary() and distributed.process_count() == 1 and distributed.process_index() == 0
  assert distributed.broadcast({"a": [1, 2]}) == {"a": [1, 2]}
  distributed.barrier("nothing")


def test_initialize_refuses_a_partial_explicit_setup():
  with pytest.raises(ValueError, match="go together"):
    distributed.initialize("127.0.0.1:1234", None, None)
  with pytest.raises(ValueError, match="process_id"):
    distributed.initialize("127.0.0.1:1234", 2, 5)


def test_cli_refuses_a_partial_explicit_setup(tmp_path):
  from paperlab import cli
  assert cli.main(["run", DEMO, "--workdir", str(tmp_path), "--coordinator", "127.0.0.1:1"]) == 2
  assert cli.main(["run", DEMO, "--workdir", str(tmp_path), "--coordinator", "x", "--num-processes", "2",
                   "--process-id", "0"]) == 2
  assert cli.main(["run", DEMO, "--workdir", str(tmp_path), "--coordinator", "127.0.0.1:1", "--num-processes",
                   "2", "--process-id", "2"]) == 2


TRIAL_SPLIT = """
import json, os, sys
n, pid, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
from paperlab.runner import distributed, trainer
if n > 1:
  distributed.initialize(f"127.0.0.1:{port}", n, pid)
import jax
sys.path.insert(0, os.path.dirname(sys.argv[5]))
import runner_demo
cfg = runner_demo.get_config().to_dict()
cfg["train"].update(num_steps=10)
tr = trainer.GroupTrainer(cfg)
configs = [dict(cfg, seed=s, optim=dict(cfg["optim"], learning_rate=lr)) for s in range(2)
           for lr in (3e-4, 1e-3, 3e-3, 1e-2)]
hp = tr.stack_hparams(configs)
ckpt = tr.init(hp)
per_device = sorted({s.data.shape[0] for s in jax.tree.leaves(ckpt)[0].addressable_shards})
ckpt, metrics = tr.chunk(hp, ckpt, 10)
loss = distributed.to_host(metrics)["loss"]
# The group's state sharded over 4 devices and one trial's host state (as the runner saves it), written by the
# single process and restored by the two (each onto its own layout: 2 trials per device, 2 devices per process).
import time, numpy as np
from paperlab.runner import store
root, own = sys.argv[6], distributed.to_host(ckpt)
if n == 1:
  store.save_checkpoint(root, 10, {"group": ckpt, "trial": jax.tree.map(lambda a: a[0], own)})
  dev = 0.0
else:
  while store.checkpoint_steps(root) != [10]:
    time.sleep(0.1)
  abstract = {"group": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), ckpt),
              "trial": tr.abstract_checkpoint()}
  restored = store.restore_checkpoint(root, 10, abstract)
  assert all(s.data.shape[0] == 2 for x in jax.tree.leaves(restored["group"]) for s in x.addressable_shards)
  group = distributed.to_host(restored["group"])
  dev = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
            for a, b in zip(jax.tree.leaves(group) + jax.tree.leaves(restored["trial"]),
                            jax.tree.leaves(own) + jax.tree.leaves(jax.tree.map(lambda a: a[0], own))))
if pid == 0:
  json.dump({"per_device": per_device, "devices": jax.device_count(), "loss": loss.tolist(), "restore_dev": dev},
            open(out, "w"))
"""


@pytest.mark.slow
def test_an_8_trial_group_splits_2_trials_per_device_over_both_processes(tmp_path):
  """The vmapped trial axis of an 8-trial group is spread over the 4 global devices (2 trials each) and the
  losses equal those of one process with 4 devices.

  The other direction of test 1's restore: the state the single process wrote (the group sharded over its 4
  devices, and one trial's host state as the runner checkpoints it) restores in the 2 processes (orbax reshards
  it onto 2 devices per process) and equals the state they computed themselves.
  """
  script = tmp_path / "split.py"
  script.write_text(TRIAL_SPLIT)
  port = _free_port()
  runs = [([2, i, port], _env(2)) for i in range(2)] + [([1, 0, 0], _env(4))]
  procs = [subprocess.Popen([sys.executable, str(script), *map(str, a), str(tmp_path / f"out{a[0]}.json"), DEMO,
                             str(tmp_path / "ckpt")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for a, env in runs]
  for p in procs:
    out = p.communicate(timeout=240)[0]
    assert p.returncode == 0, out[-3000:]
  two, one = (json.loads((tmp_path / f"out{n}.json").read_text()) for n in (2, 1))
  assert two["devices"] == one["devices"] == 4
  assert two["per_device"] == one["per_device"] == [2]
  diff = max(abs(a - b) for ra, rb in zip(two["loss"], one["loss"]) for a, b in zip(ra, rb))
  assert len(two["loss"]) == 8 and diff <= 1e-6
  print(f"8-trial group: 2 vs 1 process loss deviation {diff:.2e}; 1-process checkpoint restored in 2 processes: "
        f"max deviation {two['restore_dev']:.2e}")
  assert two["restore_dev"] <= 1e-6  # the 1-process checkpoint restores in 2 processes, values equal


def test_cli_refuses_a_heartbeat_timeout_that_is_not_a_positive_number(tmp_path, monkeypatch, capsys):
  from paperlab import cli
  explicit = ["run", DEMO, "--workdir", str(tmp_path), "--coordinator", "127.0.0.1:1", "--num-processes", "2",
              "--process-id", "0"]
  assert cli.main([*explicit, "--heartbeat-timeout", "0"]) == 2
  assert "--heartbeat-timeout must be a positive number of seconds, got 0.0" in capsys.readouterr().err
  monkeypatch.setenv(distributed.HEARTBEAT_ENV_VAR, "soon")
  assert cli.main(explicit) == 2
  assert "PAPERLAB_HEARTBEAT_TIMEOUT must be a positive number of seconds, got 'soon'" in capsys.readouterr().err
  monkeypatch.setenv(distributed.HEARTBEAT_ENV_VAR, "12.5")
  assert distributed.heartbeat_timeout_from_env() == 12.5
  monkeypatch.delenv(distributed.HEARTBEAT_ENV_VAR)
  assert distributed.heartbeat_timeout_from_env() == distributed.DEFAULT_HEARTBEAT_TIMEOUT == 30


class _KeyValueStore:
  """The two calls of the coordination service's client that the watchdog uses, in memory."""

  def __init__(self):
    self.values, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: failed to connect")
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError("UNAVAILABLE: failed to connect")
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def _watch(monkeypatch, client, index, peer_beats, timeout=0.4, seconds=1.5):
  """Run a watchdog for ``seconds`` while ``peer_beats(i)`` plays the peer (returns its next value or None);
  the exit it would make is recorded instead."""
  import threading
  exits, lock = [], threading.Lock()

  def fake_exit(code):
    with lock:
      exits.append(code)
    watchdog.finished = True

  monkeypatch.setattr(distributed.os, "_exit", fake_exit)
  watchdog = distributed._Watchdog(client, index, 2, timeout, lambda: "step 7")
  watchdog.start()
  peer = 1 - index
  for i in range(int(seconds / 0.05)):
    value = peer_beats(i)
    if value is not None and not client.down:
      client.values[f"paperlab/heartbeat/{peer}"] = value
    time.sleep(0.05)
  watchdog.finished = True
  return exits


def test_watchdog_exits_when_a_peer_falls_silent_and_not_while_it_beats_or_after_it_finished(monkeypatch, capsys):
  assert _watch(monkeypatch, _KeyValueStore(), 0, lambda i: str(i)) == []  # beating: no exit
  assert _watch(monkeypatch, _KeyValueStore(), 0, lambda i: str(i) if i < 5 else "done") == []  # finished
  assert _watch(monkeypatch, _KeyValueStore(), 0, lambda i: str(i) if i < 5 else "5") == [75]  # fell silent
  assert capsys.readouterr().err.strip() == ("paperlab: process 1 of 2 stopped responding (no heartbeat for 0.4 s); "
                                             "relaunch the same command to resume from step 7")


def test_watchdog_exits_when_the_coordinator_process_is_unreachable(monkeypatch, capsys):
  client = _KeyValueStore()

  def peer(i):
    client.down = i >= 5  # process 0, which holds the coordination service, dies
    return str(i)

  assert _watch(monkeypatch, client, 1, peer) == [75]
  assert capsys.readouterr().err.strip() == (
      "paperlab: process 0 of 2 stopped responding (its coordination service has not answered for 0.4 s); "
      "relaunch the same command to resume from step 7")


ABORTING_WORKER = r"""
import os, sys
print("paperlab-distributed-worker: process 1 of 2", file=sys.stderr, flush=True)
print("training...", file=sys.stderr, flush=True)
print("W1205 02:49:31.608699    1392 preemption_sync_manager.cc:147] Failed to retrieve preemption notice from "
      "coordination service: UNAVAILABLE: Socket closed", file=sys.stderr, flush=True)
print("Additional GRPC error information from remote target coordination_service", file=sys.stderr, flush=True)
print("F1205 02:49:31.630663    1392 client.h:80] Terminating process because the JAX distributed service detected "
      "fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination service. Either the leader task "
      "was preempted/died/restarted unexpectedly", file=sys.stderr, flush=True)
print("*** Check failure stack trace: ***", file=sys.stderr, flush=True)
os.abort()
"""


def test_supervise_turns_jax_abort_into_one_line_and_passes_everything_else_through(capfd):
  assert distributed.supervise(["-c", ABORTING_WORKER], lambda: "step 6") == distributed.PEER_LOST_EXIT
  assert capfd.readouterr().err.splitlines() == [
      "training...",
      "paperlab: process 0 of 2 stopped responding (JAX's coordination service reported it lost); relaunch the "
      "same command to resume from step 6"]
  warning = "W1205 02:49:31.608699    1392 preemption_sync_manager.cc:147] a warning"
  script = f"import sys; print({warning!r}, file=sys.stderr); print('out'); sys.exit(3)"
  assert distributed.supervise(["-c", script]) == 3  # no abort: its status, every line
  captured = capfd.readouterr()
  assert captured.err.splitlines() == [warning] and captured.out == "out\n"
