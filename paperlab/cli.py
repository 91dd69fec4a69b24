"""The ``paperlab`` command line.

  paperlab run EXP.py [--config.a.b=V ...] [--sweep] [--workdir DIR] [--backend local|process|ray]
                      [--max-parallel N] [--fresh] [--quiet]
  paperlab report DIR [--out DIR]
  paperlab reproduce PAPER [--workdir DIR] [--config.a.b=V ...]
  paperlab papers [--family F] [--status S]

JAX is imported only by the commands that train, so ``paperlab papers`` and ``paperlab report`` start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Sequence


class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one line, exit status 2 (argparse's convention)
    self.exit(2, f"paperlab: error: {message}\n")


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separate ``--config.a.b=V`` (and ``--config.a.b V``) from the other arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      if "=" not in arg:
        if i + 1 >= len(argv):
          raise SystemExit(f"paperlab: error: {arg} needs a value: {arg}=VALUE")
        arg = f"{arg}={argv[i + 1]}"
        i += 1
      overrides.append(arg[len("--"):])
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="paperlab", description="Run experiments and reproduce papers' claims.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  run = sub.add_parser("run", help="run an experiment (or its sweep), resuming in the work directory")
  run.add_argument("experiment", help="path of the experiment file (defines get_config())")
  run.add_argument("--sweep", action="store_true", help="run every point of get_sweep()")
  run.add_argument("--workdir", default="runs", help="run store root (default: runs)")
  run.add_argument("--backend", default="local", choices=["local", "process", "ray"])
  run.add_argument("--max-parallel", type=int, default=None, help="workers for process/ray backends")
  run.add_argument("--fresh", action="store_true", help="discard earlier results of these trials")
  run.add_argument("--quiet", action="store_true", help="no progress output")
  run.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")

  report = sub.add_parser("report", help="table, plots and report.md for a run directory")
  report.add_argument("directory")
  report.add_argument("--out", default=None, help="where plots and report.md go (default: DIRECTORY)")

  reproduce = sub.add_parser("reproduce", help="run a paper's experiment and check its claim")
  reproduce.add_argument("paper", help="catalogue id or slug")
  reproduce.add_argument("--workdir", default="runs")
  reproduce.add_argument("--fresh", action="store_true")
  reproduce.add_argument("--quiet", action="store_true")

  papers = sub.add_parser("papers", help="list the catalogued papers and their status")
  papers.add_argument("--family", default=None)
  papers.add_argument("--status", default=None)
  return parser


def _print_run_summary(summaries: list[dict]) -> None:
  from paperlab.runner.config import flatten  # pylint: disable=g-import-not-at-top
  for s in summaries:
    if s.get("status") == "done":
      flat = flatten(s.get("result") or {})
      shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in flat.items()
               if isinstance(v, (int, float)) and (not isinstance(v, bool) or k.endswith("passed"))}
      detail = json.dumps(dict(list(shown.items())[:8]))
    else:
      detail = s.get("reason", "")
    point = json.dumps(s.get("point") or {})
    print(f"{s['trial_id']}  {s.get('status', '?'):7s}  {point}  {detail}")


def _enable_compilation_cache() -> None:
  """Keep compiled XLA programs on disk, so a resumed or repeated run skips compilation.

  ``$PAPERLAB_COMPILATION_CACHE`` names the directory (default ``~/.cache/paperlab/xla``; ``0`` turns it off).
  Set through JAX's environment variables, so worker processes inherit it.
  """
  path = os.environ.get("PAPERLAB_COMPILATION_CACHE", str(pathlib.Path.home() / ".cache" / "paperlab" / "xla"))
  if path.lower() in ("", "0", "off", "false") or "jax" in sys.modules:
    return
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", path)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def _cmd_run(args, overrides: list[str]) -> int:
  _enable_compilation_cache()
  from paperlab.runner.execute import run_experiment  # pylint: disable=g-import-not-at-top
  summaries = run_experiment(args.experiment, overrides, sweep=args.sweep, workdir=args.workdir,
                             backend=args.backend, max_parallel=args.max_parallel, fresh=args.fresh,
                             quiet=args.quiet, ray_address=args.ray_address)
  _print_run_summary(summaries)
  failed = [s for s in summaries if s.get("status") != "done"]
  if failed:
    print(f"{len(failed)} of {len(summaries)} trials did not finish (see status.json in their directories)",
          file=sys.stderr)
  return 1 if failed else 0


def _cmd_report(args) -> int:
  from paperlab.runner.report import report  # pylint: disable=g-import-not-at-top
  out = report(args.directory, out=args.out)
  print(out["table"])
  print(f"wrote {out['markdown']} and {len(out['plots'])} plots")
  return 0


def _cmd_reproduce(args, overrides: list[str]) -> int:
  from paperlab import papers  # pylint: disable=g-import-not-at-top
  from paperlab.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
  from paperlab.runner.execute import run_experiment  # pylint: disable=g-import-not-at-top
  _enable_compilation_cache()
  key = int(args.paper) if args.paper.isdigit() else args.paper
  try:
    paper = papers.get(key)
  except (KeyError, ValueError, LookupError) as e:
    message = e.args[0] if e.args else str(e)
    raise ConfigError(f"unknown paper {args.paper!r}: {message}") from None
  if not paper.experiment:
    raise ConfigError(f"paper {paper.id} ({paper.slug}) has no experiment yet")
  path = pathlib.Path(paper.experiment)
  if not path.is_absolute() and not path.exists():
    path = pathlib.Path(__file__).resolve().parent.parent / paper.experiment  # the repository root
  summaries = run_experiment(path, overrides, workdir=args.workdir, fresh=args.fresh, quiet=args.quiet)
  summary = summaries[0]
  if summary.get("status") != "done":
    print(f"{paper.slug}: trial {summary.get('status')}: {summary.get('reason', '')}", file=sys.stderr)
    return 1
  result = summary["result"]
  claim = result.get("claim") if isinstance(result.get("claim"), dict) else None
  if claim is None:
    print(f"{paper.slug}: the experiment returned no claim", file=sys.stderr)
    return 1
  papers.record_result(paper.id, result)
  passed = bool(claim.get("passed"))
  print(f"[{'PASS' if passed else 'FAIL'}] {paper.id} {paper.slug}: {claim.get('statement', '')}")
  print(json.dumps({k: v for k, v in claim.items() if k != "statement"}, indent=2, default=repr))
  print(f"trial directory: {summary['dir']}")
  return 0 if passed else 1


def _cmd_papers(args) -> int:
  from paperlab import papers  # pylint: disable=g-import-not-at-top
  papers.print_table(family=args.family, status=args.status)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``paperlab`` console script; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, overrides = _split_overrides(argv)
  args = _parser().parse_args(rest)
  from paperlab.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
  if overrides and args.command not in ("run", "reproduce"):
    print(f"paperlab: error: {args.command} takes no --config overrides", file=sys.stderr)
    return 2
  try:
    if args.command == "run":
      return _cmd_run(args, overrides)
    if args.command == "report":
      return _cmd_report(args)
    if args.command == "reproduce":
      return _cmd_reproduce(args, overrides)
    return _cmd_papers(args)
  except ConfigError as e:
    print(f"paperlab: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
