"""Reports (table with mean ± std over seeds, PNG plots, report.md), progress bars and the CLI commands."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest

from paperlab import cli
from paperlab.runner import Progress, report, run_experiment
from paperlab.runner.report import is_log_spaced

SWEEP_EXPERIMENT = """
    import ml_collections

    def get_config():
      c = ml_collections.ConfigDict()
      c.seed = 0
      c.optim = dict(learning_rate=1e-3)
      return c

    def get_sweep():
      return [{"optim.learning_rate": lr, "seed": s} for lr in (1e-3, 1e-2, 1e-1) for s in range(3)]

    def run(config, ctx):
      lr, s = config.optim.learning_rate, config.seed
      for step in range(1, 4):
        ctx.log(step, {"loss": lr / step + s})
      return {"accuracy": lr * 10 + s * 0.01, "claim": {"passed": lr > 1e-3}}
    """


@pytest.fixture
def store(write_experiment, tmp_path):
  run_experiment(write_experiment(SWEEP_EXPERIMENT), sweep=True, workdir=tmp_path / "runs", quiet=True)
  return tmp_path / "runs"


def test_report_table_has_mean_and_std_over_seeds(store):
  out = report(store)
  rows = out["experiments"]["exp"]
  assert [r["hparams"]["optim.learning_rate"] for r in rows] == [1e-3, 1e-2, 1e-1]
  for r in rows:
    lr = r["hparams"]["optim.learning_rate"]
    expected = np.array([lr * 10 + s * 0.01 for s in range(3)])
    assert r["n"] == 3 and r["failed"] == 0
    np.testing.assert_allclose(sorted(r["values"]["accuracy"]), expected)
    cell = f"{expected.mean():.4g} ± {expected.std(ddof=1):.2g}"
    assert cell in out["table"]
    assert cell in out["markdown"].read_text()
  assert "claim.passed" in out["table"] and "seed" not in out["table"].splitlines()[1]


def test_report_writes_valid_pngs(store):
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  out = report(store)
  names = {p.name for p in out["plots"]}
  assert "exp_curves_loss.png" in names and "exp_accuracy_vs_optim.learning_rate.png" in names
  for path in out["plots"]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert f"]({path.name})" in out["markdown"].read_text()


def test_log_axis_only_for_log_spaced_sweeps():
  assert is_log_spaced([1e-3, 1e-2, 1e-1])
  assert is_log_spaced([1e-4, 3e-4, 1e-3, 3e-3])
  assert not is_log_spaced([0.1, 0.2, 0.3])
  assert not is_log_spaced([-1.0, 1.0, 10.0])


def test_progress_draws_live_on_a_terminal_and_plain_lines_elsewhere():
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  pipe, tty = io.StringIO(), Terminal()
  for stream in (pipe, tty):
    with Progress(4, "trials", stream=stream, interval=3600.0, unit="trials") as bar:
      for _ in range(4):
        bar.update(loss=0.5)
  (line,) = pipe.getvalue().splitlines()  # no line within the interval, one when the work ends
  assert line.startswith("[paperlab] trials: 4/4 trials (100%)") and "trials/s" in line and "loss 0.5" in line
  assert "\r" not in pipe.getvalue() and "\x1b" not in pipe.getvalue()
  assert "4/4" in tty.getvalue() and "trials" in tty.getvalue()
  periodic = io.StringIO()
  with Progress(10, "group of 2 trials", stream=periodic, interval=0.0, unit="steps") as bar:
    for step in range(1, 11):
      bar.update(1, step=step, loss=1.0 / step)
  lines = periodic.getvalue().splitlines()
  assert len(lines) == 10 and "10/10 steps" in lines[-1]  # one per update, the last not repeated by close()
  assert "ETA" in lines[0] and "step 10" in lines[-1]
  quiet = Terminal()
  with Progress(2, stream=quiet, quiet=True) as bar:
    bar.update(2)
  assert quiet.getvalue() == ""


def test_cli_run_and_report(write_experiment, tmp_path, capsys):
  exp = write_experiment(SWEEP_EXPERIMENT)
  assert cli.main(["run", str(exp), "--sweep", "--workdir", str(tmp_path / "r"), "--quiet",
                   "--config.optim.learning_rate=0.5"]) == 0
  printed = capsys.readouterr().out
  assert printed.count(" done ") == 9
  assert cli.main(["report", str(tmp_path / "r")]) == 0
  assert "±" in capsys.readouterr().out and (tmp_path / "r" / "report.md").exists()
  assert cli.main(["run", str(exp), "--workdir", str(tmp_path / "r"), "--config.optim.lr=1"]) == 2
  assert "unknown config key 'optim.lr'; keys under 'optim': 'optim.learning_rate'" in capsys.readouterr().err


@pytest.mark.parametrize("passed,status", [(True, 0), (False, 1)])
def test_reproduce_runs_the_paper_experiment_records_and_checks_its_claim(write_experiment, tmp_path, capsys,
                                                                          monkeypatch, passed, status):
  exp = write_experiment(f"""
      import ml_collections
      PAPER_ID = 999
      CLAIM = "x is large"
      def get_config():
        c = ml_collections.ConfigDict()
        c.x = 3.0
        return c
      def run(config, ctx):
        ctx.log(1, {{"x": config.x}})
        return {{"claim": {{"passed": {passed}, "statement": CLAIM, "x": config.x}}}}
      """, name=f"paper_{passed}")
  from paperlab import papers  # pylint: disable=g-import-not-at-top
  recorded = []
  paper = types.SimpleNamespace(id=999, slug="fake-paper", title="Fake", experiment=str(exp))
  monkeypatch.setattr(papers, "get", lambda key: paper if key in (999, "fake-paper") else papers.get(key))
  monkeypatch.setattr(papers, "record_result", lambda pid, result, **kw: recorded.append((pid, result)))
  assert cli.main(["reproduce", "fake-paper", "--workdir", str(tmp_path / "r")]) == status
  out = capsys.readouterr().out
  assert ("[PASS]" if passed else "[FAIL]") in out and "x is large" in out
  assert recorded == [(999, {"claim": {"passed": passed, "statement": "x is large", "x": 3.0}})]


def test_papers_command_prints_the_registry(capsys):
  assert cli.main(["papers"]) == 0
  assert len(capsys.readouterr().out.splitlines()) > 3
