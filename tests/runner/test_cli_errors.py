"""Bad invocations of the ``paperlab`` command and of the runner's Python API: one line, exit status 2, no
traceback, nothing run and nothing created; and what the CLI shows a user (version, help, papers)."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from conftest import PYTHON, default_trainer_source, subprocess_env
from paperlab import cli
from paperlab.runner import ConfigError, run_experiment


def _cli(capsys, *argv) -> tuple[int, str, str]:
  try:
    code = cli.main(list(argv))
  except SystemExit as e:  # argparse's own errors
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def _assert_usage_error(capsys, *argv, says: str = "") -> str:
  code, _, err = _cli(capsys, *argv)
  assert code == 2, (argv, err)
  assert len(err.strip().splitlines()) == 1 and err.startswith("paperlab: error: "), err
  assert "Traceback" not in err and says in err, err
  return err


@pytest.fixture
def exp(write_experiment):
  return write_experiment(default_trainer_source())


@pytest.mark.parametrize("override, says", [
    ("--config.train.batch_size=0", "config.train.batch_size=0: expected a positive integer"),
    ("--config.optim.learning_rate=-0.01", "config.optim.learning_rate=-0.01: expected a finite number >= 0"),
    ("--config.optim.learning_rate=nan", "expected a finite number >= 0"),
    ("--config.optim.weight_decay=-1", "unknown config key 'optim.weight_decay'"),
    ("--config.train.num_steps=-10", "config.train.num_steps=-10: expected a positive integer"),
    ("--config.train.checkpoint_every=-5", "config.train.checkpoint_every=-5: expected a positive integer"),
    ("--config.train.log_every=0", "expected a positive integer"),
    ("--config.train.num_steps=abc", "expected int"),
    ("--config.model.widths=abc", "expected a tuple of int"),
    ("--config.model.widths=(16,'x')", "expected a tuple of int"),
    ("--config.seed=1.5", "expected int"),
    ("--config.optim.learnin_rate=1e-3", "did you mean 'optim.learning_rate'"),
    ("--config.model.name=", "expected a non-empty name"),
])
def test_bad_config_values_are_one_line_errors_before_anything_runs(capsys, exp, tmp_path, override, says):
  _assert_usage_error(capsys, "run", str(exp), "--workdir", str(tmp_path / "runs"), override, says=says)
  assert not (tmp_path / "runs").exists()


def test_weight_decay_below_zero_is_rejected(write_experiment, capsys, tmp_path):
  exp = write_experiment(default_trainer_source(extra="c.optim.weight_decay = 1e-4"))
  _assert_usage_error(capsys, "run", str(exp), "--config.optim.weight_decay=-1", "--workdir", str(tmp_path / "r"),
                      says="config.optim.weight_decay=-1.0: expected a finite number >= 0")


def test_a_sweep_point_out_of_range_is_named(write_experiment, capsys, tmp_path):
  exp = write_experiment(default_trainer_source(lrs=(1e-3, -1e-3)))
  _assert_usage_error(capsys, "run", str(exp), "--sweep", "--workdir", str(tmp_path / "r"),
                      says="sweep point 2: config.optim.learning_rate=-0.001")


@pytest.mark.parametrize("argv, says", [
    (["--config.data.name", "--sweep"], "--config.data.name needs a value"),
    (["--config.data.name"], "--config.data.name needs a value"),
    (["--config.=3"], "expected --config.KEY=VALUE"),
    (["--config..x=3"], "expected --config.KEY=VALUE"),
    (["--max-parallel", "0"], "expected a positive integer"),
    (["--backend", "spark"], "invalid choice"),
])
def test_bad_run_flags(capsys, exp, tmp_path, argv, says):
  _assert_usage_error(capsys, "run", str(exp), "--workdir", str(tmp_path / "runs"), *argv, says=says)


def test_a_workdir_that_is_a_file_or_read_only(capsys, exp, tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("")
  _assert_usage_error(capsys, "run", str(exp), "--workdir", str(a_file), says="is not a directory")
  read_only = tmp_path / "ro"
  read_only.mkdir()
  read_only.chmod(0o555)
  if os.access(read_only, os.W_OK):  # root ignores permission bits; sysfs refuses new directories to anyone
    read_only = pathlib.Path("/sys/paperlab-read-only-test")
  _assert_usage_error(capsys, "run", str(exp), "--workdir", str(read_only / "runs"), says="is not writable")


@pytest.mark.parametrize("source, argv, says", [
    ("def get_config():\n  return {'x': 1}\n", [], "must return an ml_collections.ConfigDict, got dict"),
    ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'x': 1})\n"
     "def get_sweep():\n  return []\n", ["--sweep"], "returned no points"),
    ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'x': 1})\n"
     "def get_sweep():\n  return [1, 2]\n", ["--sweep"], "point 0 is a int"),
    ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'x': 1})\n",
     ["--sweep"], "defines no get_sweep()"),
    ("x = 1\n", [], "defines no get_config()"),
    ("import ml_collections\ndef get_config(:\n  pass\n", [], "SyntaxError: "),
    ("import no_such_module_xyz\n", [], "ModuleNotFoundError: No module named 'no_such_module_xyz' (bad.py, line 1)"),
    ("def get_config():\n  return 1 / 0\n", [], "get_config() of"),
    ("import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'x': 1})\n"
     "def get_sweep():\n  raise KeyError('lr')\n", ["--sweep"], "get_sweep() of"),
])
def test_malformed_experiments(capsys, write_experiment, tmp_path, source, argv, says):
  exp = write_experiment(source, name="bad")
  _assert_usage_error(capsys, "run", str(exp), "--workdir", str(tmp_path / "runs"), *argv, says=says)


def test_missing_experiment_suggests_the_nearest_file(capsys, exp, tmp_path):
  _assert_usage_error(capsys, "run", str(exp.with_name("exq.py")), says="did you mean")


def test_report_of_a_missing_directory_creates_nothing(capsys, tmp_path):
  missing = tmp_path / "no" / "such" / "dir"
  _assert_usage_error(capsys, "report", str(missing), says="run directory not found")
  assert not (tmp_path / "no").exists()
  a_file = tmp_path / "f"
  a_file.write_text("")
  _assert_usage_error(capsys, "report", str(a_file), says="is not a directory")


@pytest.mark.parametrize("argv, says", [
    (["papers", "--family", "vision"], "--family 'vision': expected one of optim, losses, merge"),
    (["papers", "--status", "done"], "--status 'done': expected one of"),
    (["papers", "no-such-paper"], "unknown paper 'no-such-paper'"),
    (["papers", "--config.x=1"], "papers takes no --config overrides"),
    (["reproduce", "no-such-paper"], "unknown paper"),
    (["reproduce", "17", "--rtol", "-1"], "expected a finite number >= 0"),
    (["reproduce", "17", "--ci", "--config.seeds=3"], "--ci runs the experiment's CI_CONFIG"),
    (["reproduce", "17", "--ci", "--check"], "--ci runs the experiment's CI_CONFIG"),
    (["frobnicate"], "invalid choice"),
    ([], "required: command"),
])
def test_bad_commands(capsys, argv, says):
  _assert_usage_error(capsys, *argv, says=says)


def test_papers_family_is_case_insensitive_and_lists_functions(capsys):
  code, out, _ = _cli(capsys, "papers", "--family", "Merge")
  assert code == 0 and "merge.uniform_soup" in out and "functions" in out
  code, out, _ = _cli(capsys, "papers", "--family", "optim")
  assert code == 0 and "optim.adamp" in out


def test_papers_id_shows_functions_experiment_and_record(capsys):
  code, out, _ = _cli(capsys, "papers", "17")
  assert code == 0
  assert "paperlab.optim.adamp" in out and "experiments/optim/adamp.py" in out and "17.json" in out


def test_version_and_run_help(capsys):
  from paperlab import __version__  # pylint: disable=g-import-not-at-top
  code, out, _ = _cli(capsys, "--version")
  assert code == 0 and out.strip() == f"paperlab {__version__}"
  code, out, _ = _cli(capsys, "run", "--help")
  assert code == 0 and "--config.KEY=VALUE" in out and "get_sweep()" in out and "--sweep" in out


def test_no_traceback_escapes_the_command_line(tmp_path, write_experiment):
  """The installed entry point, as a user runs it: a bad override, a bad family, a missing report directory."""
  exp = write_experiment(default_trainer_source())
  for argv in (["run", str(exp), "--config.train.batch_size=0"], ["papers", "--family", "vision"],
               ["report", str(tmp_path / "nope")], ["run", str(exp), "--config.data.name", "--sweep"]):
    proc = subprocess.run([PYTHON, "-m", "paperlab.cli", *argv], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, (
        argv, proc.stderr)
  assert not (tmp_path / "nope").exists() and not (tmp_path / "runs").exists()


def test_run_experiment_rejects_a_string_of_overrides(exp, tmp_path):
  with pytest.raises(TypeError, match=r"wrap it in a list: \['a=b'\]"):
    run_experiment(exp, overrides="a=b", workdir=tmp_path)
  with pytest.raises(ConfigError, match="--max-parallel=0"):
    run_experiment(exp, workdir=tmp_path, max_parallel=0)


def test_a_finished_experiment_prints_its_table_again(write_experiment, tmp_path, capsys):
  exp = write_experiment("""
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.x = 2.0
        return c
      def run(config, ctx):
        ctx.print("arm     score")
        ctx.print(f"method  {config.x:.2f}")
        return {"score": config.x}
      """, name="table")
  first = _cli(capsys, "run", str(exp), "--workdir", str(tmp_path / "runs"))
  again = _cli(capsys, "run", str(exp), "--workdir", str(tmp_path / "runs"))
  assert first[0] == again[0] == 0
  assert "arm     score\nmethod  2.00\n" in first[1] and "arm     score\nmethod  2.00\n" in again[1]
  quiet = _cli(capsys, "run", str(exp), "--workdir", str(tmp_path / "runs"), "--quiet")
  assert "method  2.00" not in quiet[1]


def test_a_finished_sweep_prints_its_table_again(write_experiment, tmp_path, capsys):
  exp = write_experiment("""
      import ml_collections
      def get_config():
        c = ml_collections.ConfigDict()
        c.seed = 0
        c.lr = 0.1
        return c
      def get_sweep():
        return [{"lr": lr, "seed": s} for lr in (0.1, 0.2) for s in (0, 1)]
      def run(config, ctx):
        return {"score": config.lr * 10 + config.seed}
      """, name="sweep_table")
  outputs = [_cli(capsys, "run", str(exp), "--sweep", "--workdir", str(tmp_path / "runs"))[1] for _ in range(2)]
  for out in outputs:
    header, *rows = [line for line in out.splitlines() if line.startswith(("lr", "0."))]
    assert header.split()[:4] == ["lr", "n", "failed", "score"]
    assert [r.split()[:4] for r in rows] == [["0.1", "2", "0", "1.5"], ["0.2", "2", "0", "2.5"]]


def test_merge_is_a_subcommand(capsys):
  code, out, _ = _cli(capsys, "merge", "--help")
  assert code == 0 and "usage: paperlab merge" in out and "--dry-run" in out
  code, out, _ = _cli(capsys, "--help")
  assert code == 0 and "merge" in out
