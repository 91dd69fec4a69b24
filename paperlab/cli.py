"""The ``paperlab`` command line.

  paperlab run EXP.py [--config.a.b=V ...] [--sweep] [--workdir DIR] [--backend local|process|ray]
                      [--max-parallel N] [--fresh] [--quiet]
  paperlab report DIR [--out DIR]
  paperlab reproduce PAPER [--workdir DIR] [--config.a.b=V ...] [--check [--rtol R] [--atol A]] [--ci]
  paperlab papers [ID] [--family F] [--status S]
  paperlab --version

JAX is imported only by the commands that train, so ``paperlab papers`` and ``paperlab report`` start fast.
A bad invocation prints one line ``paperlab: error: ...`` and exits with status 2.
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


class UsageError(Exception):
  """A bad invocation found outside argparse: one line, exit status 2."""


RUN_EPILOG = """\
config overrides (ml_collections.config_flags conventions):
  --config.KEY=VALUE      override one field of get_config(), e.g. --config.optim.learning_rate=3e-4
                          --config.model.widths='(128,128)'  --config.train.num_steps=2000
                          VALUE is parsed by the type of the field it replaces; an unknown KEY is an error
                          that suggests the nearest keys; every field is checked before anything runs
                          (num_steps, batch_size, ... >= 1; learning_rate, weight_decay >= 0).

sweeps:
  --sweep                 run every point of the experiment's get_sweep() (a list of {"dotted.key": value}
                          built with paperlab.runner.sweeps: grid, zipped, seeds, product, log_uniform);
                          overrides apply to every point. Trials that differ only in numeric hyperparameters
                          and seeds run as one vmapped program.

resuming: each trial has a directory WORKDIR/EXPERIMENT/TRIAL_ID (the id hashes the resolved config and the
experiment file's code); re-running the same command skips finished trials, resumes interrupted ones from
their newest intact checkpoint and re-runs failed or damaged ones. `paperlab report WORKDIR` summarizes.

examples:
  paperlab run experiments/quickstart.py
  paperlab run experiments/runner_demo.py --sweep --config.train.num_steps=100 --workdir runs
"""


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separate ``--config.a.b=V`` (and ``--config.a.b V``) from the other arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config.") or arg == "--config":
      key = arg.split("=", 1)[0][len("--config."):]
      if not key or any(not part for part in key.split(".")):
        raise UsageError(f"{arg!r}: expected --config.KEY=VALUE with a dotted KEY, e.g. "
                         "--config.optim.learning_rate=3e-4")
      if "=" not in arg:
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
          raise UsageError(f"{arg} needs a value: {arg}=VALUE")
        arg = f"{arg}={argv[i + 1]}"
        i += 1
      overrides.append(arg[len("--"):])
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


_MERGE_COMMAND = pathlib.Path(__file__).resolve().parent / "merge" / "command.py"


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _non_negative_float(text: str) -> float:
  import math  # pylint: disable=g-import-not-at-top
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
  if not (math.isfinite(value) and value >= 0):
    raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
  return value


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
  from paperlab import __version__  # pylint: disable=g-import-not-at-top
  parser = _Parser(prog="paperlab", description="Run experiments and reproduce papers' claims.")
  parser.add_argument("--version", action="version", version=f"paperlab {__version__}")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  run = sub.add_parser("run", help="run an experiment (or its sweep), resuming in the work directory",
                       usage="paperlab run EXPERIMENT.py [--config.KEY=VALUE ...] [--sweep] [--workdir DIR] "
                             "[options]",
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  run.add_argument("experiment", help="path of the experiment file (defines get_config())")
  run.add_argument("--sweep", action="store_true", help="run every point of get_sweep()")
  run.add_argument("--workdir", default="runs", help="run store root (default: runs)")
  run.add_argument("--backend", default="local", choices=["local", "process", "ray"])
  run.add_argument("--max-parallel", type=_positive_int, default=None, help="workers for process/ray backends")
  run.add_argument("--fresh", action="store_true", help="discard earlier results of these trials")
  run.add_argument("--quiet", action="store_true", help="no progress display and no experiment output")
  run.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
  dist = run.add_argument_group("several processes (jax.distributed; run the same command on every host)")
  dist.add_argument("--distributed", action="store_true",
                    help="join a multi-process JAX cluster, auto-detected (Cloud TPU, SLURM, Open MPI) or from "
                         "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID")
  dist.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                    help="process 0's address (with --num-processes and --process-id)")
  dist.add_argument("--num-processes", type=_positive_int, default=None, metavar="N")
  dist.add_argument("--process-id", type=int, default=None, metavar="I")
  dist.add_argument("--heartbeat-timeout", type=float, default=None, metavar="SECONDS",
                    help="a process silent that long is considered dead and the others exit with one line "
                         "(default: $PAPERLAB_HEARTBEAT_TIMEOUT or 30)")

  report = sub.add_parser("report", help="table, plots and report.md for a run directory")
  report.add_argument("directory", help="a run store (--workdir of paperlab run) or one experiment's directory")
  report.add_argument("--out", default=None, help="where plots and report.md go (default: DIRECTORY)")

  reproduce = sub.add_parser("reproduce", help="run a paper's experiment and check its claim")
  reproduce.add_argument("paper", help="catalogue id or slug")
  reproduce.add_argument("--workdir", default="runs")
  reproduce.add_argument("--fresh", action="store_true")
  reproduce.add_argument("--quiet", action="store_true")
  reproduce.add_argument("--check", action="store_true",
                         help="re-run at the recorded config (in a fresh work directory) and compare with the record "
                              "instead of writing it")
  reproduce.add_argument("--rtol", type=_non_negative_float, default=1e-3,
                         help="--check: relative tolerance (default 1e-3)")
  reproduce.add_argument("--atol", type=_non_negative_float, default=1e-6,
                         help="--check: absolute tolerance (default 1e-6)")
  reproduce.add_argument("--ci", action="store_true",
                         help="run at the experiment's CI scale (its CI_CONFIG overrides, what the test suite runs) "
                              "and check the claim there, without writing the record")

  papers = sub.add_parser("papers", help="list the catalogued papers, their status and implementing functions")
  papers.add_argument("paper", nargs="?", default=None,
                      help="one paper's id or slug: its functions, experiment and record")
  papers.add_argument("--family", default=None, help="only this family (optim, losses, merge, ...)")
  papers.add_argument("--status", default=None, help="only this status (reproduced, not-reproduced, ...)")

  if _MERGE_COMMAND.exists():  # paperlab/merge/command.py: add_arguments(parser), main(args) -> int
    merge = sub.add_parser("merge", help="merge model checkpoints (see paperlab merge --help)")
    if "merge" in argv:  # imports JAX: only when the merge command is asked for
      from paperlab.merge import command as merge_command  # pylint: disable=g-import-not-at-top
      merge_command.add_arguments(merge)
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


def _distributed_requested(args) -> bool:
  return bool(args.distributed or args.coordinator is not None or args.num_processes is not None or
              args.process_id is not None)


def _check_distributed(args) -> float:
  """Check the several-processes flags (before anything starts); returns the heartbeat timeout in seconds."""
  explicit = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
  if any(explicit) and not all(explicit):
    raise UsageError("--coordinator HOST:PORT, --num-processes N and --process-id I go together")
  if all(explicit):
    if ":" not in args.coordinator:
      raise UsageError(f"--coordinator {args.coordinator!r}: expected HOST:PORT")
    if not 0 <= args.process_id < args.num_processes:
      raise UsageError(f"--process-id {args.process_id}: expected 0 <= I < --num-processes ({args.num_processes})")
  if args.backend != "local":
    raise UsageError(f"--backend {args.backend} cannot be combined with several processes (use local)")
  from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
  try:
    if args.heartbeat_timeout is None:
      return distributed.heartbeat_timeout_from_env()
    return distributed.check_heartbeat_timeout(args.heartbeat_timeout, "--heartbeat-timeout")
  except ValueError as e:
    raise UsageError(str(e)) from None


def _init_distributed(args, heartbeat_timeout: float, started: float) -> None:
  """Join the jax.distributed cluster (``--distributed`` or ``--coordinator``), in the supervised worker."""
  from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                           heartbeat_timeout_s=heartbeat_timeout,
                           resume_hint=lambda: _resume_hint(args.workdir, started))
  except ValueError as e:
    raise UsageError(str(e)) from None
  distributed.announce()


def _resume_hint(workdir: str, since: float) -> str | None:
  """Where a relaunch resumes the unfinished trials this invocation touched: ``"step 40"`` (one trial, or all at
  the same step), ``"steps 20-40 (3 trials)"``, or ``None`` when none has a complete checkpoint."""
  from paperlab.runner import store  # pylint: disable=g-import-not-at-top
  steps = []
  for status in pathlib.Path(workdir).glob("*/*/status.json"):
    try:
      if status.stat().st_mtime < since - 1 or json.loads(status.read_text()).get("status") == "done":
        continue
    except (OSError, ValueError):
      continue
    complete = store.checkpoint_steps(status.parent / "checkpoints")
    steps.append(complete[-1] if complete else 0)
  if not steps or not any(steps):
    return None
  low, high = min(steps), max(steps)
  return f"step {high}" if low == high else f"steps {low}-{high} ({len(steps)} trials)"


def _cmd_run(args, overrides: list[str]) -> int:
  import time  # pylint: disable=g-import-not-at-top
  started = time.time()
  _enable_compilation_cache()
  if _distributed_requested(args):
    heartbeat_timeout = _check_distributed(args)
    from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
    if not os.environ.get(distributed.WORKER_ENV_VAR):  # run the work in a child that JAX may abort
      return distributed.supervise(["-m", "paperlab.cli", *args.argv],
                                   resume_hint=lambda: _resume_hint(args.workdir, started))
    distributed.die_with_supervisor()
    _init_distributed(args, heartbeat_timeout, started)
  from paperlab.runner.execute import run_experiment  # pylint: disable=g-import-not-at-top
  from paperlab.runner import distributed  # pylint: disable=g-import-not-at-top
  try:
    summaries = run_experiment(args.experiment, overrides, sweep=args.sweep, workdir=args.workdir,
                               backend=args.backend, max_parallel=args.max_parallel, fresh=args.fresh,
                               quiet=args.quiet, ray_address=args.ray_address)
  except Exception as e:  # several processes: a lost peer (the watchdog's line) explains it better than the error
    from paperlab.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
    if not isinstance(e, ConfigError):  # a bad config is found by every process before any collective
      distributed.await_verdict()
    raise
  distributed.finish()
  if not distributed.is_primary():  # several processes: process 0 reports; all exit with the same status
    return 1 if any(s.get("status") != "done" for s in summaries) else 0
  _print_run_summary(summaries)
  if not args.quiet and len(summaries) > 1:
    _print_sweep_table(summaries)
  failed = [s for s in summaries if s.get("status") != "done"]
  if failed:
    print(f"{len(failed)} of {len(summaries)} trials did not finish (see status.json in their directories)",
          file=sys.stderr)
  return 1 if failed else 0


def _print_sweep_table(summaries: list[dict]) -> None:
  """The sweep's table (mean ± std over seeds per setting), as ``paperlab report`` prints it, for this run's
  trials only; printed again whenever the finished sweep is run again."""
  from paperlab.runner.report import load_trials, summarize, table  # pylint: disable=g-import-not-at-top
  ours = {s["trial_id"] for s in summaries}
  directory = pathlib.Path(summaries[0]["dir"]).parent
  trials = [t for t in load_trials(directory).get(directory.name, []) if t["id"] in ours]
  if trials:
    print(table(*summarize(trials)))


def _cmd_report(args) -> int:
  from paperlab.runner.report import report  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(args.directory)
  if not directory.is_dir():
    raise UsageError(f"run directory not found: {args.directory!r}" if not directory.exists() else
                     f"{args.directory!r} is not a directory")
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
  from paperlab.runner.config import ConfigError, ci_config, load_experiment  # pylint: disable=g-import-not-at-top
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
  if args.ci:
    if args.check or overrides:
      raise ConfigError("--ci runs the experiment's CI_CONFIG and takes no --check or --config overrides")
    overrides = dict(ci_config(module))
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
  if args.ci:
    print(f"[{'PASS' if claim.get('passed') else 'FAIL'}] {paper.id} {paper.slug} at the CI scale "
          f"{json.dumps(ci_config(module), default=repr)} (not recorded): {claim.get('statement', '')}")
    print(json.dumps({k: v for k, v in claim.items() if k != "statement"}, indent=2, default=repr))
    return 0 if claim.get("passed") else 1
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


def _choice(name: str, value: str | None, accepted: Sequence[str]) -> str | None:
  if value is None:
    return None
  low = value.strip().lower()
  if low not in accepted:
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(low, accepted, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UsageError(f"--{name} {value!r}: expected one of {', '.join(accepted)}{hint}")
  return low


def _short(name: str) -> str:
  return name[len("paperlab."):] if name.startswith("paperlab.") else name


def _cmd_papers(args) -> int:
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  from rich.table import Table  # pylint: disable=g-import-not-at-top

  from paperlab import papers  # pylint: disable=g-import-not-at-top
  family = _choice("family", args.family, papers.FAMILIES)
  status = _choice("status", args.status, papers.STATUSES)
  if args.paper is not None:
    if family or status:
      raise UsageError("papers ID takes no --family or --status")
    return _print_paper(args.paper)
  rows = papers.select(family, status)
  table = Table(title=f"paperlab papers ({len(rows)} of {len(papers.load())})")
  for col in ("id", "slug", "family", "status", "dev", "functions", "title"):
    table.add_column(col, overflow="fold" if col in ("title", "functions") else "ellipsis",
                     no_wrap=col not in ("title", "functions"))
  counts: dict[str, int] = {}
  for p in rows:
    s = papers.status(p)
    counts[s] = counts.get(s, 0) + 1
    record = papers.last_result(p) if s in ("reproduced", "reproduced-with-deviations", "not-reproduced") else None
    devs = str(len(papers.deviations_of(p, record))) if record is not None else "-"
    table.add_row(str(p.id), p.slug, p.family, s, devs, ", ".join(_short(f) for f in p.functions) or "-", p.title)
  console = Console(width=max(Console().width, 180))
  console.print(table)
  console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
  return 0


def _print_paper(key: str) -> int:
  from paperlab import papers  # pylint: disable=g-import-not-at-top
  try:
    p = papers.get(int(key) if key.isdigit() else key)
  except (KeyError, ValueError, LookupError) as e:
    raise UsageError(f"unknown paper {key!r}: {e.args[0] if e.args else e}") from None
  missing = set(papers.missing_functions(p))
  lines = [f"[{p.id}] {p.slug}: {p.title}",
           f"  authors:    {p.authors} ({p.year or '?'})",
           f"  arXiv:      {p.url or '-'}",
           f"  family:     {p.family}   status: {papers.status(p)}",
           "  functions:  " + (", ".join(f + (" (missing)" if f in missing else "") for f in p.functions) or "-"),
           f"  experiment: {p.experiment or '-'}"]
  record = papers.last_result(p) if p.experiment else None
  if record is None:
    lines.append("  record:     -")
  else:
    claim = papers.claim_of(record)
    lines += [f"  record:     {papers.records_dir() / f'{p.id}.json'} ({papers.status_of_record(p, record)}, "
              f"recorded {record.get('recorded', '?')}, commit {record.get('commit', '?')})",
              f"  claim:      {record.get('tested_claim') or p.claim}",
              f"  passed:     {bool(claim.get('passed'))}"]
    for d in papers.deviations_of(p, record):
      lines.append(f"  deviation:  {d}")
  print("\n".join(lines))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``paperlab`` console script; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    rest, overrides = _split_overrides(argv)
  except UsageError as e:
    print(f"paperlab: error: {e}", file=sys.stderr)
    return 2
  args = _parser(rest).parse_args(rest)
  from paperlab.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
  if overrides and args.command not in ("run", "reproduce"):
    print(f"paperlab: error: {args.command} takes no --config overrides", file=sys.stderr)
    return 2
  try:
    if args.command == "run":
      args.argv = argv  # several processes: the supervised worker runs the same command
      return _cmd_run(args, overrides)
    if args.command == "report":
      return _cmd_report(args)
    if args.command == "reproduce":
      return _cmd_reproduce(args, overrides)
    if args.command == "merge":
      from paperlab.merge import command as merge_command  # pylint: disable=g-import-not-at-top
      return merge_command.main(args)
    return _cmd_papers(args)
  except (ConfigError, UsageError) as e:
    print(f"paperlab: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("paperlab: interrupted; run the same command again to resume", file=sys.stderr)
    return 130
  except OSError as e:  # the environment (disk full, permissions...), not the invocation
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    print(f"paperlab: error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
    return 1


def _one_line(e: BaseException) -> str:
  text = str(e).strip()
  return " ".join(text.split("\n")) if text else type(e).__name__


if __name__ == "__main__":
  sys.exit(main())
