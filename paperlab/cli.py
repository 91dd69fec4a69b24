"""The ``paperlab`` command line.

  paperlab run EXP.py [--config.a.b=V ...] [--sweep] [--workdir DIR] [--backend local|process|ray]
                      [--max-parallel N] [--fresh] [--quiet]
  paperlab report DIR [--out DIR]
  paperlab reproduce PAPER [--workdir DIR] [--config.a.b=V ...] [--check [--rtol R] [--atol A]]
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
  reproduce.add_argument("--check", action="store_true",
                         help="re-run at the recorded config (in a fresh work directory) and compare with the record "
                              "instead of writing it")
  reproduce.add_argument("--rtol", type=float, default=1e-3, help="--check: relative tolerance (default 1e-3)")
  reproduce.add_argument("--atol", type=float, default=1e-6, help="--check: absolute tolerance (default 1e-6)")

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


def _recorded_overrides(module, record: dict) -> dict:
  """The dotted overrides that turn the experiment's default config into the one a record ran."""
  from paperlab.runner.config import flatten  # pylint: disable=g-import-not-at-top
  from paperlab.runner.context import to_jsonable  # pylint: disable=g-import-not-at-top
  if not isinstance(record.get("config"), dict):
    raise _config_error(f"the record of paper {record.get('paper')} holds no config: re-record it with "
                        f"`paperlab reproduce {record.get('paper')}` before checking it")
  default = flatten(to_jsonable(module.get_config().to_dict()))
  recorded = flatten(record["config"])
  unknown = sorted(set(recorded) - set(default))
  if unknown:
    raise _config_error(f"the recorded config has keys the experiment no longer defines: {unknown}")
  return {k: v for k, v in recorded.items() if v != default[k]}


def _config_error(message: str):
  from paperlab.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
  return ConfigError(message)


_TIMING = ("seconds", "time", "wall", "duration")


def _compare(recorded, new, rtol: float, atol: float, path: str = "") -> list[str]:
  """Differences between two JSON results: numbers beyond ``atol + rtol * |recorded|``, anything else unequal.

  Timings (keys naming seconds, time, wall or duration) depend on the machine and are not compared; a claim that
  bounds one still has its verdict (``passed``) compared.
  """
  import math  # pylint: disable=g-import-not-at-top
  if isinstance(recorded, dict) and isinstance(new, dict):
    out = [f"{path}/{k}: missing in the re-run" for k in recorded if k not in new]
    for k in recorded:
      if k in new and not any(t in str(k).lower() for t in _TIMING):
        out += _compare(recorded[k], new[k], rtol, atol, f"{path}/{k}")
    return out
  if isinstance(recorded, list) and isinstance(new, list):
    if len(recorded) != len(new):
      return [f"{path}: length {len(recorded)} recorded, {len(new)} now"]
    return [d for i, (a, b) in enumerate(zip(recorded, new)) for d in _compare(a, b, rtol, atol, f"{path}[{i}]")]
  as_float = lambda v: float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v
  a, b = as_float(recorded), as_float(new)
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
    if math.isnan(a) and math.isnan(b):
      return []
    if a == b or abs(a - b) <= atol + rtol * abs(a):
      return []
    return [f"{path}: recorded {a!r}, now {b!r}"]
  return [] if recorded == new else [f"{path}: recorded {recorded!r}, now {new!r}"]


def _cmd_reproduce(args, overrides: list[str]) -> int:
  import tempfile  # pylint: disable=g-import-not-at-top

  from paperlab import papers  # pylint: disable=g-import-not-at-top
  from paperlab.runner.config import ConfigError, load_experiment  # pylint: disable=g-import-not-at-top
  from paperlab.runner.context import to_jsonable  # pylint: disable=g-import-not-at-top
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
  module = load_experiment(path)
  record = None
  if args.check:
    if overrides:
      raise ConfigError("--check re-runs the recorded config and takes no --config overrides")
    record = papers.last_result(paper)
    if record is None:
      raise ConfigError(f"paper {paper.id} ({paper.slug}) has no record to check: run `paperlab reproduce "
                        f"{paper.id}` first")
    overrides = _recorded_overrides(module, record)
  with tempfile.TemporaryDirectory(prefix="paperlab-check-") as tmp:
    workdir = tmp if args.check else args.workdir
    summaries = run_experiment(path, overrides, workdir=workdir, fresh=args.fresh or args.check, quiet=args.quiet)
    summary = summaries[0]
    config = json.loads((pathlib.Path(summary["dir"]) / "config.json").read_text())
  if summary.get("status") != "done":
    print(f"{paper.slug}: trial {summary.get('status')}: {summary.get('reason', '')}", file=sys.stderr)
    return 1
  result = summary["result"]
  claim = result.get("claim") if isinstance(result.get("claim"), dict) else None
  if claim is None:
    print(f"{paper.slug}: the experiment returned no claim", file=sys.stderr)
    return 1
  if args.check:
    diffs = _compare(record.get("result", {}), to_jsonable(result), args.rtol, args.atol)
    print(f"[{'SAME' if not diffs else 'DIFFERENT'}] {paper.id} {paper.slug}: re-run vs the record of "
          f"{record.get('recorded')} (commit {record.get('commit')}), rtol {args.rtol:g}, atol {args.atol:g}")
    for d in diffs[:50]:
      print(f"  {d}")
    return 0 if not diffs else 1
  written = papers.record_result(paper.id, result, tested_claim=claim.get("statement"),
                                 deviations=list(getattr(module, "DEVIATIONS", ())), config=config,
                                 wall_time_s=summary.get("seconds"))
  status = json.loads(pathlib.Path(written).read_text()).get("status") if written else None
  passed = bool(claim.get("passed"))
  print(f"[{'PASS' if passed else 'FAIL'}] {paper.id} {paper.slug}{f' ({status})' if status else ''}: "
        f"{claim.get('statement', '')}")
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
