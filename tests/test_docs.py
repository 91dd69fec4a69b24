"""The docs build with warnings as errors, list every public name, and index every paper with its status.

Issue 18's acceptance: ``sphinx-build -W`` passes; every name of every family's ``__all__`` appears in the built API
reference with its docstring; the paper index shows every catalogue entry with the same status as
``paperlab papers``.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import paperlab_docs  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("html")
  done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                         str(out)], capture_output=True, text=True, cwd=ROOT)
  assert done.returncode == 0, f"sphinx-build -W failed:\n{done.stderr[-6000:]}"
  return out


@pytest.mark.slow
def test_every_public_name_is_documented_with_its_docstring(built):
  import importlib
  import inspect

  missing = []
  for package in paperlab_docs.packages():
    page = (built / "api" / f"{package}.html").read_text()
    module = importlib.import_module(f"paperlab.{package}")
    for name in paperlab_docs.public_names(package):
      anchor = f'id="paperlab.{package}.{name}"'
      if anchor not in page:
        missing.append(f"paperlab.{package}.{name}")
        continue
      obj = getattr(module, name)
      doc = inspect.getdoc(obj) if (callable(obj) or inspect.isclass(obj)) else None
      if doc:  # the first words of its own docstring are on the page after its anchor
        words = [t.strip(",.;") for t in doc.split("\n")[0].split() if re.fullmatch(r"[A-Za-z]+[,.;]?", t)][:3]
        section = html.unescape(re.sub(r"<[^>]+>", "", page[page.index(anchor):][:20000]))
        if not all(w in section for w in words):
          missing.append(f"paperlab.{package}.{name} (docstring not rendered)")
  assert not missing, missing


def test_api_pages_list_exactly_all(tmp_path):
  for package in paperlab_docs.packages():
    page = paperlab_docs.api_page(package)
    listed = set(re.findall(r"^\.\. (?:autofunction|autoclass|py:data):: (\S+)$", page, re.M))
    assert listed == set(paperlab_docs.public_names(package)), package


def _cli_statuses() -> dict[int, str]:
  env = {**os.environ, "COLUMNS": "400", "TERM": "dumb"}
  out = subprocess.run([sys.executable, "-m", "paperlab.cli", "papers"], capture_output=True, text=True, env=env,
                       cwd=ROOT, check=True).stdout
  statuses, column = {}, None
  for line in out.splitlines():
    cells = [c.strip() for c in re.split(r"[│┃|]", line)]
    if column is None and "status" in cells:
      column = cells.index("status")
    elif column is not None and len(cells) > column and cells[1].isdigit():
      statuses[int(cells[1])] = cells[column]
  return statuses


def test_paper_index_matches_paperlab_papers():
  from paperlab import papers

  page = paperlab_docs.papers_page()
  rows = {int(m.group(1)): m.group(2) for m in
          re.finditer(r"^\| <span id='paper-(\d+)'></span>\d+ \|.*\| ([a-z-]+)(?:<br>deviations:.*)? \|$", page, re.M)}
  cli = _cli_statuses()
  assert len(cli) == len(papers.load()), "could not read every row of `paperlab papers`"
  assert rows == cli


def test_reproduced_with_deviations_rows_list_their_deviations():
  rows = [r for r in paperlab_docs.paper_rows() if r["status"] == "reproduced-with-deviations"]
  assert rows and all(r["deviations"] for r in rows)
