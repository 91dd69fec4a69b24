"""``paperlab reproduce ID --check``: a record re-runs at its recorded config and must give the same numbers."""

from __future__ import annotations

import json
import shutil

import pytest

from paperlab import cli, papers

# Three entries that run in seconds at CI scale: a deterministic game (290), a PINN over 3 seeds (206), and a
# classification MLP over 3 seeds (17).
CHECKED = (290, 206, 17)


@pytest.mark.slow
@pytest.mark.parametrize("paper_id", CHECKED)
def test_recorded_entry_reproduces_its_numbers(paper_id, capsys):
  assert cli.main(["reproduce", str(paper_id), "--check", "--quiet"]) == 0, capsys.readouterr().out
  assert f"[SAME] {paper_id} " in capsys.readouterr().out


def _copy_record(tmp_path, monkeypatch, paper_id: int) -> dict:
  source = papers.records_dir() / f"{paper_id}.json"
  monkeypatch.setenv("PAPERLAB_RECORDS", str(tmp_path))
  shutil.copy(source, tmp_path / source.name)
  return json.loads(source.read_text())


def test_check_fails_when_a_recorded_number_differs(tmp_path, monkeypatch, capsys):
  record = _copy_record(tmp_path, monkeypatch, 290)
  record["result"]["gda"]["final_norm"] *= 1.01  # beyond rtol 1e-3
  (tmp_path / "290.json").write_text(json.dumps(record))
  assert cli.main(["reproduce", "290", "--check", "--quiet"]) == 1
  out = capsys.readouterr().out
  assert "[DIFFERENT] 290" in out and "/gda/final_norm" in out
  assert cli.main(["reproduce", "290", "--check", "--quiet", "--rtol", "0.05"]) == 0


def test_check_fails_when_the_verdict_differs(tmp_path, monkeypatch, capsys):
  record = _copy_record(tmp_path, monkeypatch, 290)
  record["result"]["claim"]["passed"] = False
  (tmp_path / "290.json").write_text(json.dumps(record))
  assert cli.main(["reproduce", "290", "--check", "--quiet"]) == 1
  assert "/claim/passed: recorded False, now True" in capsys.readouterr().out


def test_check_runs_the_recorded_config_not_the_default(tmp_path, monkeypatch, capsys):
  record = _copy_record(tmp_path, monkeypatch, 290)
  record["config"]["num_steps"] = 10  # the recorded numbers came from 3000 steps
  (tmp_path / "290.json").write_text(json.dumps(record))
  assert cli.main(["reproduce", "290", "--check", "--quiet"]) == 1
  assert "final_norm" in capsys.readouterr().out


def test_check_needs_a_complete_record_and_no_overrides(tmp_path, monkeypatch, capsys):
  record = _copy_record(tmp_path, monkeypatch, 290)
  assert cli.main(["reproduce", "290", "--check", "--config.num_steps=5"]) == 2
  assert "takes no --config overrides" in capsys.readouterr().err
  del record["config"]
  (tmp_path / "290.json").write_text(json.dumps(record))
  assert cli.main(["reproduce", "290", "--check"]) == 2
  assert "holds no config" in capsys.readouterr().err
  record["config"] = {"no_such_key": 1}
  (tmp_path / "290.json").write_text(json.dumps(record))
  assert cli.main(["reproduce", "290", "--check"]) == 2
  assert "no_such_key" in capsys.readouterr().err
  (tmp_path / "290.json").unlink()
  assert cli.main(["reproduce", "290", "--check"]) == 2
  assert "has no record to check" in capsys.readouterr().err
