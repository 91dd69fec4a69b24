"""``paperlab reproduce ID --check``: a record re-runs at its recorded config and must give the same numbers."""

from __future__ import annotations

import json

import pytest

from paperlab import cli, papers

# Three entries that run in seconds at CI scale: FRUGAL's projected-Adam comparison (225), AdAdaGrad's adaptive
# batch sizes (513) and the WSD convex bound (432).
CHECKED = (225, 513, 432)


@pytest.mark.slow
@pytest.mark.parametrize("paper_id", CHECKED)
def test_recorded_entry_reproduces_its_numbers(paper_id, capsys):
  assert cli.main(["reproduce", str(paper_id), "--check", "--quiet"]) == 0, capsys.readouterr().out
  assert f"[SAME] {paper_id} " in capsys.readouterr().out


@pytest.fixture
def fake_paper(write_experiment, tmp_path, monkeypatch):
  """A registry entry 999 whose experiment (3 seeds, one number per seed, a claim) takes milliseconds, and a
  records directory of its own; returns the path of its record after one `paperlab reproduce`."""
  exp = write_experiment("""
      import ml_collections
      import numpy as np
      PAPER_ID = 999
      CLAIM = "the method's mean is at least 1"
      DEVIATIONS = ("scale: a toy",)
      def get_config():
        c = ml_collections.ConfigDict()
        c.seeds = 3
        c.shift = 1.5
        return c
      def run(config, ctx):
        values = np.arange(config.seeds) * 0.25 + config.shift
        ctx.log(1, {"mean": float(values.mean())})
        return {"method": {"value": values.tolist()},
                "claim": {"passed": bool(values.mean() >= 1), "statement": CLAIM, "mean": float(values.mean())}}
      """, name="fake_paper_exp")
  base = papers.get(17)
  paper = papers.Paper(**{**base.__dict__, "id": 999, "slug": "fake-paper", "experiment": str(exp)})
  real_get = papers.get
  monkeypatch.setattr(papers, "get", lambda key: paper if str(key) in ("999", "fake-paper") else real_get(key))
  monkeypatch.setenv("PAPERLAB_RECORDS", str(tmp_path / "records"))
  assert cli.main(["reproduce", "999", "--quiet", "--workdir", str(tmp_path / "runs")]) == 0
  path = tmp_path / "records" / "999.json"
  record = json.loads(path.read_text())
  assert record["status"] == "reproduced-with-deviations" and record["deviations"] == ["scale: a toy"]
  assert record["config"] == {"seeds": 3, "shift": 1.5} and record["seeds"] == [0, 1, 2]
  return path


def _edit(path, change) -> None:
  record = json.loads(path.read_text())
  change(record)
  path.write_text(json.dumps(record))


def test_check_passes_on_an_untouched_record(fake_paper, capsys):
  assert cli.main(["reproduce", "999", "--check", "--quiet"]) == 0
  assert "[SAME] 999 fake-paper" in capsys.readouterr().out


def test_check_fails_when_a_recorded_number_differs(fake_paper, capsys):
  _edit(fake_paper, lambda r: r["result"]["method"]["value"].__setitem__(1, 1.76))  # 1.75 recorded: beyond rtol 1e-3
  assert cli.main(["reproduce", "999", "--check", "--quiet"]) == 1
  out = capsys.readouterr().out
  assert "[DIFFERENT] 999" in out and "/method/value[1]: recorded 1.76, now 1.75" in out
  assert cli.main(["reproduce", "999", "--check", "--quiet", "--rtol", "0.01"]) == 0


def test_check_fails_when_the_verdict_differs(fake_paper, capsys):
  _edit(fake_paper, lambda r: r["result"]["claim"].__setitem__("passed", False))
  assert cli.main(["reproduce", "999", "--check", "--quiet"]) == 1
  assert "/claim/passed: recorded False, now True" in capsys.readouterr().out


def test_check_runs_the_recorded_config_not_the_default(fake_paper, capsys):
  _edit(fake_paper, lambda r: r["config"].__setitem__("shift", 0.5))  # the recorded numbers came from shift 1.5
  assert cli.main(["reproduce", "999", "--check", "--quiet"]) == 1
  assert "/claim/mean: recorded 1.75, now 0.75" in capsys.readouterr().out


def test_check_needs_a_complete_record_and_no_overrides(fake_paper, capsys):
  assert cli.main(["reproduce", "999", "--check", "--config.shift=5"]) == 2
  assert "takes no --config overrides" in capsys.readouterr().err
  _edit(fake_paper, lambda r: r.pop("config"))
  assert cli.main(["reproduce", "999", "--check"]) == 2
  assert "holds no config" in capsys.readouterr().err
  _edit(fake_paper, lambda r: r.__setitem__("config", {"no_such_key": 1}))
  assert cli.main(["reproduce", "999", "--check"]) == 2
  assert "no_such_key" in capsys.readouterr().err
  fake_paper.unlink()
  assert cli.main(["reproduce", "999", "--check"]) == 2
  assert "has no record to check" in capsys.readouterr().err
