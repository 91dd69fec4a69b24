"""The paper registry: integrity against the catalogue, resolvable functions, computed status, CLI table."""

from __future__ import annotations

import json
import pathlib

import pytest

from paperlab import papers
from paperlab.runner.config import load_experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_registry_holds_every_catalogue_entry():
  ps = papers.load()
  assert len(ps) >= 150
  assert len({p.id for p in ps}) == len(ps) and len({p.slug for p in ps}) == len(ps)
  for p in ps:
    assert p.family in papers.FAMILIES, p
    assert p.priority in ("A", "B", "C"), p
    assert p.title and p.proposed_api, p
    assert p.arxiv is None or len(p.arxiv.split(".")[0]) == 4, p


def test_every_listed_function_resolves_and_is_documented():
  for p in papers.load():
    assert not papers.missing_functions(p), f"paper {p.id} lists functions that do not import"
    for name in p.functions:
      fn = papers.resolve(name)
      assert fn.__doc__ and len(fn.__doc__) > 40, f"{name} (paper {p.id}) needs a docstring citing the paper"


def test_listed_experiments_follow_the_contract():
  for p in papers.load():
    if p.experiment is None:
      continue
    path = ROOT / p.experiment
    assert path.is_file(), f"paper {p.id}: experiment {p.experiment} does not exist"
    module = load_experiment(path)
    assert callable(module.get_config) and callable(module.run), p.experiment
    assert getattr(module, "PAPER_ID", p.id) == p.id, p.experiment


def test_status_is_computed_from_functions_and_records(tmp_path, monkeypatch):
  monkeypatch.setenv("PAPERLAB_RECORDS", str(tmp_path))
  base = papers.get(17)
  fake = papers.Paper(**{**base.__dict__, "functions": ("paperlab.train.make_train_step",),
                         "experiment": "experiments/quickstart.py"})
  assert papers.status(papers.Paper(**{**base.__dict__, "functions": ()})) == "planned"
  assert papers.status(papers.Paper(**{**base.__dict__, "functions": ("paperlab.nope.f",)})) == "missing"
  assert papers.status(fake) == "implemented"
  (tmp_path / "17.json").write_text(json.dumps({"claim": {"passed": False}}))
  assert papers.status(fake) == "not-reproduced"
  with pytest.raises(ValueError, match="claim.passed"):
    papers.record_result(17, {"accuracy": 1.0})


def _record(tmp_path, claim: str, passed: bool = True, deviations=(), seeds=3, per_seed=True) -> dict:
  result = {"claim": {"passed": passed, "statement": claim},
            "arm": {"accuracy": [0.9] * seeds if per_seed else 0.9}}
  path = papers.record_result(17, result, deviations=list(deviations), config={"seeds": seeds, "lr": 1e-3},
                              wall_time_s=1.5)
  return json.loads(path.read_text())


def test_only_the_catalogue_claim_without_deviations_reads_reproduced(tmp_path, monkeypatch):
  monkeypatch.setenv("PAPERLAB_RECORDS", str(tmp_path))
  paper = papers.get(17)
  spaced = "  " + paper.claim.replace(" ", "\n ", 3) + " "
  record = _record(tmp_path, spaced)
  assert record["status"] == papers.status(paper) == "reproduced" and record["deviations"] == []
  assert record["catalogue_claim"] == paper.claim and record["seeds"] == [0, 1, 2]
  for key in ("config", "commit", "version", "device", "recorded", "wall_time_s", "result"):
    assert key in record, key
  record = _record(tmp_path, paper.claim, deviations=["lr 1e-3 -> 1e-2: norms did not grow at 1e-3"])
  assert record["status"] == papers.status(paper) == "reproduced-with-deviations"
  record = _record(tmp_path, "a weaker claim")  # a different claim cannot hide behind an empty list
  assert record["status"] == "reproduced-with-deviations" and record["deviations"] == [papers.UNITEMISED]
  record = _record(tmp_path, paper.claim, seeds=2)
  assert record["status"] == "reproduced-with-deviations" and "2 seed(s)" in record["deviations"][0]
  record = _record(tmp_path, paper.claim, per_seed=False)
  assert record["deviations"] == [papers.PER_SEED_MISSING]
  record = _record(tmp_path, paper.claim, passed=False)
  assert record["status"] == papers.status(paper) == "not-reproduced"


def test_seeds_are_read_from_the_config():
  assert papers.seeds_of({"seeds": 3}) == [0, 1, 2]
  assert papers.seeds_of({"seeds": [4, 5]}) == [4, 5]
  assert papers.seeds_of({"num_seeds": 2}) == [0, 1]
  assert papers.seeds_of({"seed": 7}) == [7]
  assert papers.seeds_of({"pool": {"seeds": [0, 1, 2]}, "lr": 0.1}) == [0, 1, 2]
  assert papers.seeds_of({"lr": 0.1}) == []


def _records() -> list[tuple[papers.Paper, dict]]:
  out = []
  for path in sorted(papers.records_dir().glob("*.json")):
    record = json.loads(path.read_text())
    out.append((papers.get(record["paper"]), record))
  return out


def test_every_record_can_be_checked_on_its_own():
  records = _records()
  assert len(records) >= 70
  for paper, record in records:
    for key in ("status", "catalogue_claim", "tested_claim", "deviations", "config", "seeds", "commit",
                "version", "recorded", "result"):
      assert key in record, f"record {paper.id} has no {key!r}"
    assert isinstance(record["config"], dict) and record["config"], paper.id
    assert record["commit"] and len(record["commit"]) == 40, paper.id
    assert record["seeds"] == papers.seeds_of(record["config"]), paper.id
    assert papers.has_per_seed_metrics(record), f"record {paper.id}: no metric with one value per seed"
    assert record["wall_time_s"] and record["device"] and "backfilled" not in record, paper.id
    assert record["catalogue_claim"] == paper.claim, f"record {paper.id}: catalogue claim out of date"
    assert record["status"] == papers.status_of_record(paper, record) == papers.status(paper), paper.id
    assert record["deviations"] == papers.deviations_of(paper, record), paper.id
    if record["status"] == "reproduced":
      assert papers.normalize_claim(record["tested_claim"]) == papers.normalize_claim(paper.claim), paper.id
      assert not record["deviations"], paper.id
    elif record["status"] == "reproduced-with-deviations":
      assert record["deviations"], paper.id


def test_papers_counts_match_the_records(capsys):
  counts = {}
  for paper, record in _records():
    counts[record["status"]] = counts.get(record["status"], 0) + 1
  for status, n in counts.items():
    assert len(papers.select(status_=status)) == n, status
  papers.print_table(status="reproduced-with-deviations")
  out = capsys.readouterr().out
  assert f"reproduced-with-deviations: {counts.get('reproduced-with-deviations', 0)}" in out
  assert " dev " in out or "dev" in out.splitlines()[2]


def test_get_by_id_or_slug_with_hint():
  assert papers.get("17") is papers.get("adamp")
  with pytest.raises(KeyError, match="Did you mean adamp"):
    papers.get("adampp")


def test_print_table_lists_all_and_filters(capsys):
  assert papers.print_table() == len(papers.load())
  out = capsys.readouterr().out
  assert "adamp" in out and "Sharpness-Aware" in out
  assert papers.print_table(family="merge") == sum(p.family == "merge" for p in papers.load())
  with pytest.raises(ValueError, match="family must be one of"):
    papers.print_table(family="optimizers")
  with pytest.raises(ValueError, match="status must be one of"):
    papers.print_table(status="done")


def test_provenance_is_dirty_for_code_changes_not_for_records(tmp_path, monkeypatch):
  """Re-recording papers one after another must not mark the later records dirty: experiments/records/ holds
  outputs; any other tracked change is dirty."""
  import subprocess

  git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
  (tmp_path / "experiments" / "records").mkdir(parents=True)
  (tmp_path / "experiments" / "records" / "1.json").write_text("{}\n")
  (tmp_path / "code.py").write_text("x = 1\n")
  git("init", "-q")
  git("add", ".")
  git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "init")
  monkeypatch.setattr(papers, "REPO_ROOT", tmp_path)
  assert papers.provenance()["dirty"] is False
  (tmp_path / "experiments" / "records" / "1.json").write_text('{"status": "reproduced"}\n')
  assert papers.provenance()["dirty"] is False
  (tmp_path / "code.py").write_text("x = 2\n")
  assert papers.provenance()["dirty"] is True
