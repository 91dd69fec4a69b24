"""The run store under damage: a damaged file costs its own trial (restored, restarted or failed with a reason
naming the file) and never another; checkpoints and results are verified before they are used; nothing is written
outside the work directory; a full disk fails trials with a reason instead of leaving them "running"."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import random
import shutil
import subprocess
import textwrap

import numpy as np
import pytest

from conftest import PYTHON, default_trainer_source, subprocess_env
from paperlab import cli
from paperlab.runner import run_experiment, store
from paperlab.runner.report import load_trials, report
from paperlab.runner.store import DamagedFile, TrialLocks

NUM_STEPS, EVERY = 20, 10


NUMPY_TRAINER = """
    import ml_collections
    import numpy as np

    def get_config():
      c = ml_collections.ConfigDict()
      c.seed = 0
      c.num_steps = 20
      c.checkpoint_every = 10
      return c

    def get_sweep():
      return [{"seed": s} for s in range(4)]

    def run(config, ctx):  # a deterministic toy "training" that checkpoints and resumes like a real one
      init = {"w": np.random.default_rng(config.seed).normal(size=8).astype(np.float32)}
      restored = ctx.restore(init)
      step, state = restored or (0, init)
      w = state["w"]
      while step < config.num_steps:
        w = (w * np.float32(0.9) + np.float32(0.01) * step).astype(np.float32)
        step += 1
        if step % 5 == 0:
          ctx.log(step, {"loss": float((w ** 2).sum())})
        if step % config.checkpoint_every == 0:
          ctx.checkpoint(step, {"w": w})
      return {"loss": float((w ** 2).sum()), "w": w.tolist()}
    """


def _finished_store(root: pathlib.Path, source: str):
  exp = root / "exp.py"
  exp.write_text(textwrap.dedent(source))
  summaries = run_experiment(exp, sweep=True, workdir=root / "runs", quiet=True)
  assert [s["status"] for s in summaries] == ["done"] * 4
  return exp, root / "runs", summaries


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 4-trial sweep of a toy custom ``run`` with checkpoints: ``(experiment, store, summaries)``."""
  return _finished_store(tmp_path_factory.mktemp("finished"), NUMPY_TRAINER)


@pytest.fixture(scope="module")
def finished_trainer(tmp_path_factory):
  """A finished 4-trial default-trainer sweep (2 learning rates x 2 seeds, one vmapped group).

  Run as a large group is (``KEEP_OPEN_TRIALS = 0``: every trial's files are closed between chunks), so the tests
  below also check that this loses no metric line."""
  from paperlab.runner import execute  # pylint: disable=g-import-not-at-top
  keep, execute.KEEP_OPEN_TRIALS = execute.KEEP_OPEN_TRIALS, 0
  try:
    finished = _finished_store(tmp_path_factory.mktemp("finished_trainer"), default_trainer_source(
        num_steps=NUM_STEPS, checkpoint_every=EVERY, log_every=5, widths=(8,), lrs=(1e-3, 3e-3), seeds=2))
  finally:
    execute.KEEP_OPEN_TRIALS = keep
  for s in finished[2]:
    steps = [r["step"] for r in store.metric_records(pathlib.Path(s["dir"]) / "metrics.jsonl")[0]]
    assert steps == list(range(5, NUM_STEPS + 1, 5))
  return finished


def _copy(finished, tmp_path, name="runs"):
  exp, runs, reference = finished
  copy = tmp_path / name
  shutil.copytree(runs, copy, symlinks=True)
  trials = [copy / "exp" / s["trial_id"] for s in reference]

  def rerun():
    return run_experiment(exp, sweep=True, workdir=copy, quiet=True)

  return copy, trials, reference, rerun


@pytest.fixture
def damaged(finished, tmp_path):
  """A copy of the finished custom-run store, and a helper that re-runs the sweep on it."""
  return _copy(finished, tmp_path)


@pytest.fixture
def damaged_trainer(finished_trainer, tmp_path):
  """A copy of the finished default-trainer store, and a helper that re-runs the sweep on it."""
  return _copy(finished_trainer, tmp_path, "trainer_runs")


def _interrupt(trial: pathlib.Path) -> None:
  """Make a finished trial look interrupted after its last checkpoint (as a SIGKILL before the result would)."""
  (trial / "result.json").unlink()
  (trial / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "step": NUM_STEPS}))


def _same_results(summaries, reference) -> None:
  assert [s["status"] for s in summaries] == ["done"] * len(reference), [s.get("reason") for s in summaries]
  assert [s["result"] for s in summaries] == [s["result"] for s in reference]


def _newest_checkpoint_file(trial: pathlib.Path) -> pathlib.Path:
  files = [p for p in (trial / "checkpoints" / str(NUM_STEPS)).rglob("*")
           if p.is_file() and p.name != store.MANIFEST and p.stat().st_size > 0]
  return max(files, key=lambda p: p.stat().st_size)  # the array data


def test_two_checkpoints_are_kept_and_each_has_a_manifest(damaged_trainer, damaged):
  _, trials, _, _ = damaged_trainer
  trials = trials + damaged[1]
  for trial in trials:
    assert store.checkpoint_steps(trial / "checkpoints") == [EVERY, NUM_STEPS]
    for step in (EVERY, NUM_STEPS):
      assert store.verify_checkpoint(trial / "checkpoints", step) is None


@pytest.mark.parametrize("kind", ["trainer", "custom"])
def test_truncated_newest_checkpoint_resumes_from_the_older_one(kind, request):
  runs, trials, reference, rerun = request.getfixturevalue("damaged_trainer" if kind == "trainer" else "damaged")
  _interrupt(trials[0])
  data = _newest_checkpoint_file(trials[0])
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  summaries = rerun()
  _same_results(summaries, reference)  # resumed at step 10, bit for bit the uninterrupted result
  (problem,) = summaries[0]["damaged_checkpoints"]
  assert str(data) in problem and "checksum mismatch" in problem
  steps = [r["step"] for r in store.metric_records(trials[0] / "metrics.jsonl")[0]]
  assert steps == list(range(5, NUM_STEPS + 1, 5))  # none lost, none repeated


def test_every_damaged_checkpoint_restarts_the_trial_alone(damaged):
  runs, trials, reference, rerun = damaged
  _interrupt(trials[1])
  for step in (EVERY, NUM_STEPS):
    manifest = trials[1] / "checkpoints" / str(step) / store.MANIFEST
    manifest.write_text("{not json")
  summaries = rerun()
  _same_results(summaries, reference)
  assert len(summaries[1]["damaged_checkpoints"]) == 2


def test_single_bit_flips_in_a_checkpoint_are_detected_and_never_loaded(damaged_trainer):
  import jax  # pylint: disable=g-import-not-at-top
  _, trials, _, _ = damaged_trainer
  root = trials[2] / "checkpoints"
  files = sorted(p for p in (root / str(NUM_STEPS)).rglob("*") if p.is_file() and p.stat().st_size)
  rng = random.Random(0)
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          store.restore_checkpoint(root, NUM_STEPS, None))
  for _ in range(60):
    path = rng.choice(files)
    raw = bytearray(path.read_bytes())
    pos, bit = rng.randrange(len(raw)), rng.randrange(8)
    raw[pos] ^= 1 << bit
    original = path.read_bytes()
    path.write_bytes(bytes(raw))
    try:
      problem = store.verify_checkpoint(root, NUM_STEPS)
      # A flip in the manifest itself can name the data file whose recorded checksum it changed.
      assert problem is not None and (str(path) in problem or path.name == store.MANIFEST), (path, pos, bit)
      with pytest.raises(DamagedFile):
        store.restore_checkpoint(root, NUM_STEPS, abstract)
    finally:
      path.write_bytes(original)
  assert store.verify_checkpoint(root, NUM_STEPS) is None


def test_malformed_metric_lines_are_dropped_and_the_trial_resumes(damaged):
  runs, trials, reference, rerun = damaged
  _interrupt(trials[0])
  with open(trials[0] / "metrics.jsonl", "ab") as f:
    f.write(b'[1, 2]\n{"step": "x", "loss": 1}\n\xff\xfe garbage\n{"step": 21, "loss": 0.')  # torn last line
  out = report(runs, plots=False)  # the report reads around them
  assert "exp (4 trials)" in out["table"]
  summaries = rerun()
  _same_results(summaries, reference)
  lines = (trials[0] / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == list(range(5, NUM_STEPS + 1, 5))


@pytest.mark.parametrize("damage", ["truncated", "edited", "status_list", "status_no_checksum"])
def test_a_damaged_result_or_status_is_reported_failed_then_run_again(damaged, damage):
  runs, trials, reference, rerun = damaged
  trial = trials[3]
  result, status = trial / "result.json", trial / "status.json"
  if damage == "truncated":
    result.write_bytes(result.read_bytes()[:7])
  elif damage == "edited":  # valid JSON, different numbers: only the checksum tells
    value = json.loads(result.read_text())
    value["test_accuracy"] = 1.0
    result.write_text(json.dumps(value, indent=2, sort_keys=True))
  elif damage == "status_list":
    status.write_text("[1, 2]")
  else:
    value = json.loads(status.read_text())
    del value["result_sha256"]
    status.write_text(json.dumps(value))
  out = report(runs, plots=False)
  (row,) = [t for t in load_trials(runs)["exp"] if t["id"] == trial.name]
  assert row["status"] == "failed"
  named = "status.json" if damage.startswith("status") else "result.json"
  assert named in row["reason"] and f"failed {trial.name}: " in out["table"]
  summaries = rerun()
  _same_results(summaries, reference)


def test_a_damaged_config_is_written_again(damaged):
  runs, trials, reference, rerun = damaged
  (trials[0] / "config.json").write_text('{"seed": ')
  (row,) = [t for t in load_trials(runs)["exp"] if t["id"] == trials[0].name]
  assert row["status"] == "failed" and "config.json" in row["reason"]
  summaries = rerun()
  _same_results(summaries, reference)
  assert json.loads((trials[0] / "config.json").read_text())["seed"] in (0, 1)


def test_a_trial_whose_directory_cannot_be_written_fails_alone(damaged):
  runs, trials, reference, rerun = damaged
  _interrupt(trials[2])
  (trials[2] / "status.json").unlink()
  (trials[2] / "status.json").mkdir()  # status.json cannot be replaced
  summaries = rerun()
  assert [s["status"] for s in summaries] == ["done", "done", "failed", "done"]
  assert "status.json" in summaries[2]["reason"] or "Is a directory" in summaries[2]["reason"]
  assert [s["result"] for i, s in enumerate(summaries) if i != 2] == [s["result"] for i, s in
                                                                       enumerate(reference) if i != 2]


def test_orphans_of_killed_writers_are_cleaned_and_stale_running_trials_resume(damaged):
  runs, trials, reference, rerun = damaged
  _interrupt(trials[1])
  dead = 2**22 + 4321  # above pid_max's default: no such process
  orphans = [trials[1] / f".status.json.{dead}.tmp", trials[1] / f".metrics.jsonl.{dead}.tmp",
             trials[1] / "checkpoints" / f"{NUM_STEPS + 10}.orbax-checkpoint-tmp-1234567"]
  orphans[0].write_text("{")
  orphans[1].write_text("")
  orphans[2].mkdir()
  (orphans[2] / "junk").write_text("x")
  unfinished = trials[1] / "checkpoints" / "15"  # finalized by orbax but killed before its manifest
  shutil.copytree(trials[1] / "checkpoints" / str(EVERY), unfinished)
  (unfinished / store.MANIFEST).unlink()
  summaries = rerun()
  _same_results(summaries, reference)
  assert not any(p.exists() for p in orphans) and not unfinished.exists()


def test_a_trial_directory_that_is_a_link_out_of_the_store_fails_alone(damaged, tmp_path):
  runs, trials, reference, rerun = damaged
  elsewhere = tmp_path / "elsewhere"
  shutil.move(trials[1], elsewhere)
  trials[1].symlink_to(elsewhere)
  _interrupt(elsewhere)
  before = sorted(p.name for p in elsewhere.iterdir())
  summaries = rerun()
  assert [s["status"] for s in summaries] == ["done", "failed", "done", "done"]
  assert "leads out of the store" in summaries[1]["reason"]
  assert sorted(p.name for p in elsewhere.iterdir()) == before  # nothing written there


def test_links_planted_in_a_trial_directory_are_not_written_through(damaged, tmp_path):
  runs, trials, reference, rerun = damaged
  _interrupt(trials[0])
  victims = {}
  for name in ("metrics.jsonl", "output.txt", "config.json", "status.json"):
    victim = tmp_path / f"victim-{name}"
    victim.write_text("untouched")
    (trials[0] / name).unlink(missing_ok=True)
    (trials[0] / name).symlink_to(victim)
    victims[name] = victim
  (trials[0] / f".status.json.{os.getpid()}.tmp").symlink_to(tmp_path / "victim-tmp")
  summaries = rerun()
  assert summaries[0]["status"] == "done" and summaries[0]["result"]["loss"] == reference[0]["result"]["loss"]
  assert all(v.read_text() == "untouched" for v in victims.values()) and not (tmp_path / "victim-tmp").exists()
  assert not any((trials[0] / name).is_symlink() for name in victims)


def test_a_lock_path_that_is_a_directory_or_a_link_is_moved_aside(damaged, tmp_path):
  runs, trials, reference, rerun = damaged
  for trial in trials:
    _interrupt(trial)
  (trials[0] / ".lock").mkdir()  # the old per-trial lock name, as a directory: ignored
  outside = tmp_path / "outside.txt"
  outside.write_text("keep me")
  lock = runs / ".locks" / "exp.lock"
  lock.parent.mkdir(exist_ok=True)
  lock.unlink(missing_ok=True)
  lock.symlink_to(outside)
  _same_results(rerun(), reference)
  assert outside.read_text() == "keep me" and not lock.is_symlink()
  shutil.rmtree(runs / ".locks")
  lock.mkdir(parents=True)  # the lock file itself is a directory
  (lock / "x").write_text("")
  for trial in trials:
    _interrupt(trial)
  _same_results(rerun(), reference)
  assert lock.is_file() and not lock.is_symlink()
  (runs / ".locks").rename(runs / "locks-elsewhere")
  (runs / ".locks").symlink_to(tmp_path)  # the lock directory leads out of the store
  for trial in trials:
    _interrupt(trial)
  _same_results(rerun(), reference)
  assert not (tmp_path / "exp.lock").exists() and not (runs / ".locks").is_symlink()


CUSTOM = """
    import math
    import ml_collections
    import numpy as np

    def get_config():
      c = ml_collections.ConfigDict()
      c.kind = "ok"
      return c

    def get_sweep():
      return [{"kind": k} for k in ("ok", "empty", "nan", "inf_array", "object", "none", "nested_nan")]

    def run(config, ctx):
      ctx.log(1, {"loss": 1.0})
      return {"ok": {"value": 1.5}, "empty": {}, "nan": {"loss": float("nan")},
              "inf_array": {"loss": np.float32("inf")}, "object": {"model": object()}, "none": None,
              "nested_nan": {"arms": {"diverged": {"norm": math.inf}}, "accuracy": 0.5}}[config.kind]
    """


def test_results_that_are_empty_not_finite_or_not_json_fail_their_trial(write_experiment, tmp_path):
  exp = write_experiment(CUSTOM, name="results")
  out = {s["point"]["kind"]: s for s in run_experiment(exp, sweep=True, workdir=tmp_path / "runs", quiet=True)}
  assert out["ok"]["status"] == "done" and out["ok"]["result"] == {"value": 1.5}
  assert out["empty"]["status"] == "failed" and "empty result" in out["empty"]["reason"]
  assert out["nan"]["status"] == "failed" and "result['loss'] is nan" in out["nan"]["reason"]
  assert out["inf_array"]["status"] == "failed" and "result['loss'] is inf" in out["inf_array"]["reason"]
  assert out["object"]["status"] == "failed" and "not JSON-serialisable" in out["object"]["reason"]
  assert out["none"]["status"] == "failed" and "returned None" in out["none"]["reason"]
  nested = out["nested_nan"]  # a diverged arm's norm is a measurement: kept, and listed
  assert nested["status"] == "done" and nested["result"]["arms"]["diverged"]["norm"] == "inf"
  assert nested["nonfinite"] == ["result['arms']['diverged']['norm']"]


def test_an_edited_experiment_runs_again_under_new_trial_ids(write_experiment, tmp_path):
  source = """
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.x = 1.0
        return c
      def run(config, ctx):
        return {"value": config.x * FACTOR}
      """
  exp = write_experiment("FACTOR = 2\n" + textwrap.dedent(source), name="edited")
  (first,) = run_experiment(exp, workdir=tmp_path / "runs", quiet=True)
  exp.write_text("FACTOR = 3\n" + textwrap.dedent(source))
  (second,) = run_experiment(exp, workdir=tmp_path / "runs", quiet=True)
  assert first["result"] == {"value": 2.0} and second["result"] == {"value": 3.0}
  assert first["trial_id"] != second["trial_id"]
  (again,) = run_experiment(exp, workdir=tmp_path / "runs", quiet=True)
  assert again["trial_id"] == second["trial_id"]


def test_nothing_is_written_outside_the_workdir(tmp_path):
  exp = tmp_path / "src" / "...py"  # its stem is ".."
  exp.parent.mkdir()
  exp.write_text(textwrap.dedent("""
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.x = 1.0
        return c
      def run(config, ctx):
        ctx.log(1, {"a/../../../escaped": 1.0, "train/loss": 0.5})
        ctx.log(2, {"a/../../../escaped": 2.0, "train/loss": 0.25})
        return {"x/../../y": config.x, "test/accuracy": 0.5}
      """))
  runs = tmp_path / "runs"
  before = set(tmp_path.iterdir())
  (summary,) = run_experiment(exp, workdir=runs, quiet=True)
  assert summary["status"] == "done"
  assert pathlib.Path(summary["dir"]).resolve().is_relative_to(runs.resolve())
  planted = runs / "report.md"
  outside = tmp_path / "victim.md"
  outside.write_text("untouched")
  planted.symlink_to(outside)
  out = report(runs)
  assert out["plots"] and all(p.parent.resolve() == runs.resolve() for p in out["plots"])
  assert outside.read_text() == "untouched" and not planted.is_symlink()
  assert set(tmp_path.iterdir()) == before | {outside, runs}
  assert [p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")] == ["experiment"]


def test_a_full_disk_fails_trials_with_the_reason_and_leaves_no_orphans(write_experiment, tmp_path, monkeypatch,
                                                                        capsys):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  exp = write_experiment("""
      import ml_collections
      import numpy as np
      def get_config():
        c = ml_collections.ConfigDict()
        c.seed = 0
        return c
      def get_sweep():
        return [{"seed": s} for s in range(4)]
      def run(config, ctx):
        ctx.log(1, {"loss": 1.0})
        ctx.checkpoint(1, {"w": np.ones(3, np.float32)})
        return {"value": 1.0}
      """, name="full")
  real_save, real_write = ocp.Checkpointer.save, store.write_json_atomic
  full = {"on": False}

  def save(self, directory, *args, **kwargs):  # orbax dies mid-save: its temporary directory stays behind
    tmp = pathlib.Path(str(directory) + ".orbax-checkpoint-tmp-99")
    tmp.mkdir(parents=True)
    (tmp / "partial").write_bytes(b"\0" * 10)
    full["on"] = True
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def write(path, data):
    if full["on"]:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return real_write(path, data)

  monkeypatch.setattr(ocp.Checkpointer, "save", save)
  monkeypatch.setattr(store, "write_json_atomic", write)
  code = cli.main(["run", str(exp), "--sweep", "--workdir", str(tmp_path / "runs")])
  err = capsys.readouterr().err
  messages = [line for line in err.splitlines() if not line.startswith("[paperlab] ")]  # not progress lines
  assert code == 1 and "Traceback" not in err and len(messages) <= 4 + 1  # one per trial and the count
  assert all("No space left on device" in line for line in messages[:-1])
  monkeypatch.setattr(ocp.Checkpointer, "save", real_save)
  leftovers = [p for p in (tmp_path / "runs").rglob("*") if "tmp" in p.name]
  assert leftovers == []
  full["on"] = False
  summaries = run_experiment(exp, sweep=True, workdir=tmp_path / "runs", quiet=True)  # space again: all finish
  assert [s["status"] for s in summaries] == ["done"] * 4


def test_locks_are_one_open_file_per_group_not_one_per_trial(tmp_path):
  """1100 trials locked by one runner under ``ulimit -n 256``; a second runner cannot take any of them."""
  script = textwrap.dedent(f"""
      import os, resource, sys
      resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
      from paperlab.runner import store
      root = {str(tmp_path / "runs")!r}
      ids = [f"{{i:012x}}" for i in range(1100)]
      locks = store.TrialLocks(os.path.join(root, "exp"))
      dirs = [store.TrialDir(root, "exp", t, locks) for t in ids]
      before = len(os.listdir("/proc/self/fd"))
      assert all(d.try_lock() for d in dirs)
      held = len(os.listdir("/proc/self/fd")) - before
      other = store.TrialLocks(os.path.join(root, "exp"))
      assert not any(other.lock(t) for t in ids[::50])  # another open file: excluded, like another process
      dirs[0].unlock()
      assert other.lock(ids[0])
      for d in dirs[1:]:
        d.unlock()
      print(held, len(os.listdir("/proc/self/fd")) - before)
      """)
  proc = subprocess.run([PYTHON, "-c", script], env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  held, after = map(int, proc.stdout.split())
  assert held <= 1 and after <= 1


def test_lock_files_are_opened_without_following_links(tmp_path):
  target = tmp_path / "target"
  target.write_text("x")
  link = tmp_path / "link"
  link.symlink_to(target)
  with pytest.raises(OSError):
    store.open_nofollow(link, os.O_RDWR | os.O_CREAT)
  assert target.read_text() == "x"
  np.testing.assert_equal(store.TrialLocks(tmp_path / "exp").lock("abc"), True)


def test_editing_a_shared_helper_gives_the_experiments_on_it_new_trial_ids(write_experiment, tmp_path):
  """Experiments that load a sibling helper with load_experiment (as experiments/quant/*.py load ptq_char.py)
  hash the helper's bytes too, transitively; a cached import whose helper changed is imported again."""
  helper_src = """
      import ml_collections
      FACTOR = {factor}
      def get_config():
        return ml_collections.ConfigDict()
      """
  inner = write_experiment(helper_src.format(factor=2), name="helper_inner")
  write_experiment("""
      import pathlib
      import ml_collections
      from paperlab.runner.config import load_experiment
      inner = load_experiment(pathlib.Path(__file__).with_name("helper_inner.py"))
      def get_config():
        return ml_collections.ConfigDict()
      def factor():
        return inner.FACTOR
      """, name="helper_outer")
  exp = write_experiment("""
      import pathlib
      import ml_collections
      from paperlab.runner.config import load_experiment
      helper = load_experiment(pathlib.Path(__file__).with_name("helper_outer.py"))
      def get_config():
        c = ml_collections.ConfigDict()
        c.x = 1.0
        return c
      def run(config, ctx):
        return {"value": config.x * helper.factor()}
      """, name="uses_helper")
  (first,) = run_experiment(exp, workdir=tmp_path / "runs", quiet=True)
  (again,) = run_experiment(exp, workdir=tmp_path / "runs", quiet=True)
  assert again["trial_id"] == first["trial_id"]  # nothing changed: the done trial is reused
  inner.write_text(textwrap.dedent(helper_src.format(factor=5)))  # two levels down
  (second,) = run_experiment(exp, workdir=tmp_path / "runs", quiet=True)
  assert first["result"] == {"value": 2.0} and second["result"] == {"value": 5.0}
  assert second["trial_id"] != first["trial_id"]
