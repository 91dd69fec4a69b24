"""The paper registry: paper -> public functions -> experiment -> claim status.

Entries live in one data file, ``paperlab/papers.json`` (seeded from the catalogue by
``tools/seed_registry.py``). Status is computed, never typed by hand:

- ``planned``: no function is listed yet;
- ``missing``: a listed function does not import (a defect: the registry test fails on it);
- ``implemented``: every listed function imports;
- ``reproduced`` / ``not-reproduced``: implemented, and the last recorded result of its experiment passed / failed.

Results are recorded by ``paperlab reproduce`` (:func:`record_result`) as ``<records dir>/<id>.json``; the records
dir is ``$PAPERLAB_RECORDS``, else ``experiments/records`` of a source checkout, else ``~/.cache/paperlab/records``.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib
import json
import os
import pathlib
from typing import Any

_DATA = pathlib.Path(__file__).with_name("papers.json")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = ("optim", "losses", "merge", "quant", "prune", "peft", "param", "scaling", "analysis")
STATUSES = ("planned", "missing", "implemented", "reproduced", "not-reproduced")


@dataclasses.dataclass(frozen=True)
class Paper:
  id: int
  slug: str
  title: str
  authors: str
  year: int | None
  arxiv: str | None
  family: str
  kind: str
  priority: str
  proposed_api: str
  claim: str
  functions: tuple[str, ...]
  experiment: str | None

  @property
  def url(self) -> str | None:
    return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None


@functools.lru_cache(maxsize=1)
def load() -> tuple[Paper, ...]:
  """Every catalogued paper, in catalogue order."""
  raw = json.loads(_DATA.read_text())
  return tuple(Paper(**{**p, "functions": tuple(p["functions"])}) for p in raw)


def get(key: int | str) -> Paper:
  """A paper by catalogue id (``17`` or ``"17"``) or slug (``"adamp"``)."""
  papers = load()
  for p in papers:
    if str(p.id) == str(key) or p.slug == str(key).lower():
      return p
  import difflib

  close = difflib.get_close_matches(str(key).lower(), [p.slug for p in papers], n=3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise KeyError(f"no paper with id or slug {key!r}.{hint} (`paperlab papers` lists them)")


def resolve(name: str) -> Any:
  """Import a dotted public name such as ``paperlab.optim.adamp``."""
  module, _, attr = name.rpartition(".")
  return getattr(importlib.import_module(module), attr)


def missing_functions(paper: Paper) -> list[str]:
  out = []
  for name in paper.functions:
    try:
      resolve(name)
    except (ImportError, AttributeError):
      out.append(name)
  return out


def records_dir() -> pathlib.Path:
  if os.environ.get("PAPERLAB_RECORDS"):
    return pathlib.Path(os.environ["PAPERLAB_RECORDS"])
  if (REPO_ROOT / "experiments").is_dir():
    return REPO_ROOT / "experiments" / "records"
  return pathlib.Path.home() / ".cache" / "paperlab" / "records"


def last_result(paper: Paper) -> dict | None:
  path = records_dir() / f"{paper.id}.json"
  return json.loads(path.read_text()) if path.exists() else None


def status(paper: Paper) -> str:
  """The computed status of a paper (see the module docstring)."""
  if not paper.functions:
    return "planned"
  if missing_functions(paper):
    return "missing"
  record = last_result(paper) if paper.experiment else None
  if record is None:
    return "implemented"
  return "reproduced" if record.get("claim", {}).get("passed") else "not-reproduced"


def record_result(paper_id: int | str, result: dict) -> pathlib.Path:
  """Record an experiment result (with ``result["claim"]["passed"]``) as the paper's last result."""
  from paperlab.runner.context import to_jsonable

  paper = get(paper_id)
  if "claim" not in result or "passed" not in result["claim"]:
    raise ValueError("result must contain claim.passed, as returned by a reproduction's run(config, ctx).")
  path = records_dir() / f"{paper.id}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  record = {"paper": paper.id, "slug": paper.slug, "experiment": paper.experiment,
            "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **to_jsonable(result)}
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(record, indent=1) + "\n")
  tmp.replace(path)
  return path


def select(family: str | None = None, status_: str | None = None, priority: str | None = None) -> list[Paper]:
  if family is not None and family not in FAMILIES:
    raise ValueError(f"family must be one of {list(FAMILIES)}, got {family!r}.")
  if status_ is not None and status_ not in STATUSES:
    raise ValueError(f"status must be one of {list(STATUSES)}, got {status_!r}.")
  if priority is not None and priority.upper() not in ("A", "B", "C"):
    raise ValueError(f"priority must be one of ['A', 'B', 'C'], got {priority!r}.")
  return [p for p in load()
          if (family is None or p.family == family) and (priority is None or p.priority == priority.upper())
          and (status_ is None or status(p) == status_)]


def print_table(family: str | None = None, status: str | None = None, priority: str | None = None) -> int:
  """Print the registry as a table; returns the number of rows."""
  from rich.console import Console
  from rich.table import Table

  rows = select(family, status, priority)
  table = Table(title=f"paperlab papers ({len(rows)} of {len(load())})", show_lines=False)
  for col in ("id", "slug", "family", "prio", "status", "arXiv", "title"):
    table.add_column(col, overflow="fold" if col == "title" else "ellipsis", no_wrap=col != "title")
  counts: dict[str, int] = {}
  for p in rows:
    s = _status_of(p)
    counts[s] = counts.get(s, 0) + 1
    table.add_row(str(p.id), p.slug, p.family, p.priority, s, p.arxiv or "-", p.title)
  console = Console(width=max(Console().width, 160))
  console.print(table)
  console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
  return len(rows)


_status_of = status
