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
  papers.record_result(17, {"claim": {"passed": True, "statement": "x"}})
  assert papers.status(fake) == "reproduced"
  with pytest.raises(ValueError, match="claim.passed"):
    papers.record_result(17, {"accuracy": 1.0})


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
