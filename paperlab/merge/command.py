"""``paperlab merge CONFIG.yml OUT_DIR``: merge Hugging Face checkpoints on disk from a mergekit-style YAML file,
tensor by tensor (see :mod:`paperlab.merge.mergekit_config` for the schema, :mod:`paperlab.merge.streaming` for
the methods).

``paperlab.cli`` wires :func:`add_arguments` and :func:`main` as its ``merge`` subcommand; until then,
``python -m paperlab.merge.command CONFIG.yml OUT_DIR [--device cpu|gpu] [--shard-size 5GB] [--dry-run]``.
Errors (a typo'd key or method, a missing model or tensor, a full disk, an interrupt) print one line and return
a non-zero status; the output directory is then absent or unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """Add the ``merge`` arguments to ``parser`` (returns it)."""
  parser.add_argument("config", help="mergekit-style YAML merge configuration")
  parser.add_argument("out_dir", help="output directory (created atomically)")
  parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                      help="where the arithmetic runs (default: JAX's default backend)")
  parser.add_argument("--shard-size", default="5GB", help="maximum bytes per output shard, e.g. 5GB, 500MB")
  parser.add_argument("--dry-run", action="store_true",
                      help="resolve the plan and check every input tensor (names, shapes); write nothing")
  parser.add_argument("--seed", type=int, default=0, help="seed of the random methods (dare_*, della*)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
  parser.add_argument("--json", action="store_true", help="print the summary as JSON")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  return parser


def main(args: argparse.Namespace | None = None) -> int:
  """Run the merge described by ``args`` (from :func:`add_arguments`); returns the exit status."""
  if args is None:
    args = add_arguments(argparse.ArgumentParser(prog="paperlab merge", description=__doc__.split("\n\n")[0])
                         ).parse_args()
  from rich.console import Console
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

  from paperlab.merge.mergekit_config import load_merge_config
  from paperlab.merge.streaming import run_merge

  err = Console(stderr=True)
  try:
    config = load_merge_config(args.config)
    if args.quiet or args.dry_run:
      summary = run_merge(config, args.out_dir, shard_size=args.shard_size, device=args.device, seed=args.seed,
                          dry_run=args.dry_run, overwrite=args.overwrite)
    else:
      with Progress(TextColumn("merging"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.description}"), console=err, transient=True) as bar:
        task = bar.add_task("", total=None)
        summary = run_merge(config, args.out_dir, shard_size=args.shard_size, device=args.device, seed=args.seed,
                            overwrite=args.overwrite,
                            progress=lambda done, total, name: bar.update(task, completed=done, total=total,
                                                                          description=name))
  except KeyboardInterrupt:
    print(f"paperlab merge: interrupted; nothing was written to {args.out_dir}", file=sys.stderr)
    return 130
  except (ValueError, KeyError, TypeError, OSError, RuntimeError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, OSError) and e.errno == 28:
      msg = f"disk full while writing ({e.strerror}); nothing was written to {args.out_dir}"
    print(f"paperlab merge: error: {msg}", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(dict(summary)))
  else:
    prefix = "dry run: would merge " if summary["dry_run"] else "merged "
    print(prefix + summary.line())
  return 0


if __name__ == "__main__":
  sys.exit(main())
