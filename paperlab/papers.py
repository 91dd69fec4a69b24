"""The paper registry: paper -> public functions -> experiment -> claim status.

Entries live in one data file, ``paperlab/papers.json`` (seeded from the catalogue by
``tools/seed_registry.py``). Status is computed, never typed by hand:

- ``planned``: no function is listed yet;
- ``missing``: a listed function does not import (a defect: the registry test fails on it);
- ``implemented``: every listed function imports;
- ``not-reproduced``: implemented, and the last recorded result of its experiment failed;
- ``reproduced``: the last recorded result passed, it tested the catalogue's claim line itself (same text, whitespace
  aside) and lists no deviation;
- ``reproduced-with-deviations``: it passed, but the tested claim differs from the catalogue's (metric, threshold,
  hyperparameters, data, seeds or baselines), each deviation listed in the record. A tested claim that differs from
  the catalogue's without itemised deviations gets the deviation :data:`UNITEMISED`, and fewer than 3 seeds one of
  its own, so a passing record can never read as plain ``reproduced`` by omission.

Results are recorded by ``paperlab reproduce`` (:func:`record_result`) as ``<records dir>/<id>.json``; the records
dir is ``$PAPERLAB_RECORDS``, else ``experiments/records`` of a source checkout, else ``~/.cache/paperlab/records``.
A record holds ``status``, ``catalogue_claim``, ``tested_claim``, ``deviations``, ``config``, ``seeds``, the
``result`` (what the experiment returned: per-seed metrics and ``claim``), ``version``, ``commit``, ``recorded`` (the date),
``wall_time_s`` and ``device``, so that ``paperlab reproduce ID --check`` can re-run it and compare.
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
STATUSES = ("planned", "missing", "implemented", "reproduced", "reproduced-with-deviations", "not-reproduced")
UNITEMISED = ("the tested claim differs from the catalogue's claim line and its deviations are not itemised yet "
              "(audit pending)")
PER_SEED_MISSING = "per-seed metrics not recorded: the spread over seeds cannot be checked"
MIN_SEEDS = 3


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


def normalize_claim(text: str | None) -> str:
  """A claim's text with runs of whitespace collapsed (what 'the same claim' compares)."""
  return " ".join(str(text or "").split())


def seeds_of(config: dict | None) -> list[int]:
  """The seeds a config runs: the first of ``seeds`` (a count or a list), ``num_seeds`` (a count) or ``seed`` (one),
  at the top level or else in a sub-config (e.g. ``pool.seeds``); ``[]`` for a deterministic experiment."""
  config = config or {}
  if "seeds" in config:
    s = config["seeds"]
    return list(range(int(s))) if isinstance(s, (int, float)) else [int(v) for v in s]
  if "num_seeds" in config:
    return list(range(int(config["num_seeds"])))
  if "seed" in config:
    return [int(config["seed"])]
  for value in config.values():
    if isinstance(value, dict) and (found := seeds_of(value)):
      return found
  return []


def _list_lengths(tree, out: set[int]) -> set[int]:
  if isinstance(tree, dict):
    for v in tree.values():
      _list_lengths(v, out)
  elif isinstance(tree, list):
    if tree and all(isinstance(v, (int, float, str)) for v in tree):
      out.add(len(tree))
    for v in tree:
      _list_lengths(v, out)
  return out


def has_per_seed_metrics(record: dict) -> bool:
  """Whether the record's result holds a list of numbers with one entry per seed (or there is one seed or none)."""
  n = len(record.get("seeds") or [])
  return n <= 1 or n in _list_lengths(record.get("result", {}), set())


def claim_of(record: dict) -> dict:
  """The ``claim`` dict of a record (``record["result"]["claim"]``)."""
  claim = record.get("result", record).get("claim")
  return claim if isinstance(claim, dict) else {}


def deviations_of(paper: Paper, record: dict) -> list[str]:
  """The record's listed deviations, plus the ones implied by what it holds (see the module docstring)."""
  devs = [str(d) for d in record.get("deviations") or []]
  tested = record.get("tested_claim", claim_of(record).get("statement"))
  if not devs and normalize_claim(tested) != normalize_claim(paper.claim):
    devs.append(UNITEMISED)
  seeds = record.get("seeds")
  if seeds and len(seeds) < MIN_SEEDS and not any("seed" in d for d in devs):
    devs.append(f"{len(seeds)} seed(s): the protocol asks for >= {MIN_SEEDS}")
  if seeds is not None and not has_per_seed_metrics(record) and PER_SEED_MISSING not in devs:
    devs.append(PER_SEED_MISSING)
  return devs


def status_of_record(paper: Paper, record: dict) -> str:
  """``reproduced``, ``reproduced-with-deviations`` or ``not-reproduced`` for one record of ``paper``."""
  if not claim_of(record).get("passed"):
    return "not-reproduced"
  return "reproduced-with-deviations" if deviations_of(paper, record) else "reproduced"


def status(paper: Paper) -> str:
  """The computed status of a paper (see the module docstring)."""
  if not paper.functions:
    return "planned"
  if missing_functions(paper):
    return "missing"
  record = last_result(paper) if paper.experiment else None
  if record is None:
    return "implemented"
  return status_of_record(paper, record)


def provenance() -> dict:
  """``version``, ``commit`` (with ``dirty`` when tracked files differ from it) and ``device`` of this process.

  The records themselves (``experiments/records/``) are outputs, not code: re-recording several papers in a row
  leaves the tree clean for the next one."""
  import subprocess  # pylint: disable=g-import-not-at-top

  from paperlab import __version__  # pylint: disable=g-import-not-at-top
  commit, dirty = None, None
  try:
    run = lambda *a: subprocess.run(["git", "-C", str(REPO_ROOT), *a], capture_output=True, text=True, timeout=20)
    head = run("rev-parse", "HEAD")
    if head.returncode == 0:
      commit = head.stdout.strip()
      dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", ".",
                       ":(exclude)experiments/records").stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  device = None
  try:
    import jax  # pylint: disable=g-import-not-at-top
    devices = jax.devices()
    device = f"{len(devices)} x {devices[0].platform}:{devices[0].device_kind}"
  except Exception:  # pylint: disable=broad-except
    pass
  return {"version": __version__, "commit": commit, "dirty": dirty, "device": device}


def record_result(paper_id: int | str, result: dict, *, tested_claim: str | None = None,
                  deviations: list[str] | tuple[str, ...] | None = None, config: dict | None = None,
                  wall_time_s: float | None = None, info: dict | None = None) -> pathlib.Path:
  """Record an experiment result (with ``result["claim"]["passed"]``) as the paper's last result.

  Args:
    paper_id: catalogue id or slug.
    result: what the experiment's ``run(config, ctx)`` returned (per-seed metrics and ``claim``).
    tested_claim: the claim the experiment tested (default: ``result["claim"]["statement"]``).
    deviations: each change from the catalogue's claim, with why (the experiment's ``DEVIATIONS``).
    config: the full resolved config it ran (``seeds`` are read from it).
    wall_time_s: the run's wall time.
    info: provenance (``version``, ``commit``, ``device``); default :func:`provenance` of this process.
  """
  from paperlab.runner.context import to_jsonable

  paper = get(paper_id)
  if "claim" not in result or "passed" not in result["claim"]:
    raise ValueError("result must contain claim.passed, as returned by a reproduction's run(config, ctx).")
  path = records_dir() / f"{paper.id}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  config = to_jsonable(dict(config)) if config is not None else None
  record = {"paper": paper.id, "slug": paper.slug, "experiment": paper.experiment, "status": None,
            "catalogue_claim": paper.claim,
            "tested_claim": tested_claim if tested_claim is not None else result["claim"].get("statement"),
            "deviations": [str(d) for d in deviations or []],
            "config": config, "seeds": seeds_of(config) if config is not None else None,
            "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": wall_time_s, **(info if info is not None else provenance()),
            "result": to_jsonable(result)}
  record["deviations"] = deviations_of(paper, record)
  record["status"] = status_of_record(paper, record)
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
  for col in ("id", "slug", "family", "prio", "status", "dev", "arXiv", "title"):
    table.add_column(col, overflow="fold" if col == "title" else "ellipsis", no_wrap=col != "title")
  counts: dict[str, int] = {}
  for p in rows:
    s = _status_of(p)
    counts[s] = counts.get(s, 0) + 1
    record = last_result(p) if s in ("reproduced", "reproduced-with-deviations", "not-reproduced") else None
    devs = str(len(deviations_of(p, record))) if record is not None else "-"
    table.add_row(str(p.id), p.slug, p.family, p.priority, s, devs, p.arxiv or "-", p.title)
  console = Console(width=max(Console().width, 160))
  console.print(table)
  console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
  return len(rows)


_status_of = status
