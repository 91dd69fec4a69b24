"""Generate the API reference, the CLI reference and the paper index when the docs build starts.

* ``api/<family>.md``: one page per public package (every name of its ``__all__``, documented by autodoc);
* ``cli.md``: ``paperlab --help`` and the help of every subcommand, from the CLI's own argparse parser;
* ``papers.md``: every catalogue entry (paper -> functions -> experiment -> status, with the deviations of each
  reproduction), from :mod:`paperlab.papers`.

The same functions are used by ``tests/test_docs.py`` to check that the pages list exactly ``__all__`` and the
registry's statuses.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import pathlib

# Public packages in the order of the reference; a family that does not exist yet is skipped.
PACKAGES = ("optim", "losses", "merge", "quant", "prune", "peft", "param", "scaling", "analysis", "models", "data",
            "runner")
TITLES = {"optim": "Optimizers", "losses": "Losses", "merge": "Model merging and weight averaging",
          "quant": "Quantization", "prune": "Pruning", "peft": "Parameter-efficient fine-tuning",
          "param": "Parametrizations and initializations", "scaling": "Scaling laws", "analysis": "Analysis",
          "models": "Models", "data": "Data", "runner": "Runner"}


def packages() -> list[str]:
  """The public packages that exist in this checkout."""
  return [p for p in PACKAGES if importlib.util.find_spec(f"paperlab.{p}") is not None]


def public_names(package: str) -> list[str]:
  module = importlib.import_module(f"paperlab.{package}")
  return sorted(getattr(module, "__all__", ()))


def _directive(package: str, name: str) -> str:
  obj = getattr(importlib.import_module(f"paperlab.{package}"), name)
  if inspect.isclass(obj):
    return "autoclass"
  if callable(obj):
    return "autofunction"
  return "autodata"


def _data_line(value) -> str:
  text = " ".join(repr(value).split())
  return text if len(text) <= 100 else text[:97] + "..."


def api_page(package: str) -> str:
  module = importlib.import_module(f"paperlab.{package}")
  summary = (inspect.getdoc(module) or "").strip()
  names = public_names(package)
  code = [n for n in names if _directive(package, n) != "autodata"]
  data = [n for n in names if n not in code]
  lines = [f"# {TITLES.get(package, package)}: `paperlab.{package}`", "", summary, "",
           "```{eval-rst}", f".. currentmodule:: paperlab.{package}", "", ".. list-table::", "   :widths: 30 70",
           ""]
  for n in code:  # the whole first paragraph: autosummary's first-sentence cut can split inline markup
    paragraph = " ".join((inspect.getdoc(getattr(module, n)) or "").split("\n\n")[0].split())
    if paragraph.endswith("::"):  # it introduces a literal block that the table does not carry
      paragraph = paragraph[:-1]
    lines += [f"   * - :py:obj:`{n}`", f"     - {paragraph or '-'}"]
  lines.append("")
  for n in code:
    lines += [f".. {_directive(package, n)}:: {n}", ""]
  for n in data:  # constants: their value (a dict's or tuple's own docstring is the type's, not ours)
    value = getattr(module, n)
    lines += [f".. py:data:: {n}", f"   :value: {_data_line(value)}", ""]
  lines.append("```")
  return "\n".join(lines) + "\n"


def cli_page() -> str:
  from paperlab import cli

  try:
    parser = cli._parser(["merge"])  # with the merge subcommand's own arguments (loaded only when asked for)
  except TypeError:
    parser = cli._parser()
  lines = ["# Command line: `paperlab`", "",
           "Generated from the CLI's own parser. Every subcommand runs with `paperlab SUBCOMMAND --help`.", "",
           "```text", parser.format_help().rstrip(), "```", ""]
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for name, sub in action.choices.items():
        lines += [f"## `paperlab {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
  return "\n".join(lines)


def _cell(text: str) -> str:
  return " ".join(str(text).split()).replace("|", "\\|")


def paper_rows() -> list[dict]:
  """One row per catalogue entry: id, title, family, functions, experiment, status, deviations."""
  from paperlab import papers

  rows = []
  for p in papers.load():
    status = papers.status(p)
    record = papers.last_result(p) if p.experiment and status not in ("planned", "missing") else None
    deviations = tuple(papers.deviations_of(p, record)) if record and status == "reproduced-with-deviations" else ()
    rows.append({"id": p.id, "title": p.title, "arxiv": p.arxiv, "family": p.family, "functions": p.functions,
                 "experiment": p.experiment, "status": status, "deviations": deviations})
  return rows


def papers_page() -> str:
  rows = paper_rows()
  counts: dict[str, int] = {}
  for r in rows:
    counts[r["status"]] = counts.get(r["status"], 0) + 1
  lines = ["# Paper index", "",
           "Every catalogued paper with the functions that implement it, its reproduction and the status of its "
           "last record (the same as `paperlab papers`). `reproduced` means the experiment tested the catalogue's "
           "claim line as stated; `reproduced-with-deviations` lists each change from it; `not-reproduced` is a "
           "claim that failed at small scale and is kept as stated.", "",
           "Status counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", ""]
  for family in PACKAGES:
    fam = [r for r in rows if r["family"] == family]
    if not fam:
      continue
    lines += [f"## {TITLES.get(family, family)}", "", "| id | paper | functions | experiment | status |",
              "|---|---|---|---|---|"]
    for r in fam:
      title = _cell(r["title"])
      if r["arxiv"]:
        title = f"[{title}](https://arxiv.org/abs/{r['arxiv']})"
      funcs = "<br>".join(f"`{f}`" for f in r["functions"]) or "-"
      exp = f"`{r['experiment']}`" if r["experiment"] else "-"
      status = r["status"]
      if r["deviations"]:
        status += "<br>deviations: " + "; ".join(_cell(d) for d in r["deviations"])
      lines.append(f"| <span id='paper-{r['id']}'></span>{r['id']} | {title} | {funcs} | {exp} | {status} |")
    lines.append("")
  return "\n".join(lines)


def _write(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if not path.exists() or path.read_text() != text:  # unchanged pages keep their mtime (incremental builds)
    path.write_text(text)


def generate(srcdir: pathlib.Path) -> None:
  api = srcdir / "api"
  for package in packages():
    _write(api / f"{package}.md", api_page(package))
  toc = ["# API reference", "", "```{toctree}", ":maxdepth: 1", ""] + [p for p in packages()] + ["```", ""]
  _write(api / "index.md", "\n".join(toc))
  _write(srcdir / "cli.md", cli_page())
  _write(srcdir / "papers.md", papers_page())


def notebooks(srcdir: pathlib.Path) -> list[pathlib.Path]:
  """The repository's ``notebooks/*.ipynb`` (the docs render them as stored; the test suite executes them)."""
  return sorted((srcdir.parent / "notebooks").glob("*.ipynb"))


def copy_notebooks(srcdir: pathlib.Path) -> None:
  out = srcdir / "notebooks"
  out.mkdir(exist_ok=True)
  found = notebooks(srcdir)
  for nb in found:
    _write(out / nb.name, nb.read_text())
  lines = ["# Notebooks", "",
           "Each notebook runs in Colab as is (its first cell installs paperlab when it is not importable) and is "
           "executed by the test suite on small settings.", "", "```{toctree}", ":maxdepth: 1", ""]
  lines += [nb.stem for nb in found] + ["```", ""]
  _write(out / "index.md", "\n".join(lines))


def _on_builder_inited(app) -> None:
  generate(pathlib.Path(app.srcdir))
  copy_notebooks(pathlib.Path(app.srcdir))


def setup(app):
  app.connect("builder-inited", _on_builder_inited)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
