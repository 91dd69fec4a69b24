"""Fill in a registry entry's implementing functions and experiment in ``paperlab/papers.json``.

Usage: ``python tools/register_paper.py ID [--functions paperlab.x.f paperlab.x.g ...] [--experiment experiments/f/x.py]``

Several people edit the registry at once, so the read-modify-write holds an exclusive lock on the file and rewrites
it in the same format (one-space indent, UTF-8, trailing newline), touching only the given entry's fields.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import pathlib
import sys

DATA = pathlib.Path(__file__).resolve().parents[1] / "paperlab" / "papers.json"


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("id", type=int)
  ap.add_argument("--functions", nargs="*", default=None, help="dotted public names that implement the paper")
  ap.add_argument("--experiment", default=None, help="repo-relative path of its reproduction")
  args = ap.parse_args(argv)
  with open(DATA, "r+", encoding="utf-8") as fh:
    fcntl.flock(fh, fcntl.LOCK_EX)
    entries = json.load(fh)
    match = [e for e in entries if e["id"] == args.id]
    if not match:
      print(f"register_paper: no catalogue entry with id {args.id}", file=sys.stderr)
      return 2
    if args.functions is not None:
      match[0]["functions"] = list(args.functions)
    if args.experiment is not None:
      if not (DATA.parents[1] / args.experiment).is_file():
        print(f"register_paper: --experiment {args.experiment!r} is not a file of the repository", file=sys.stderr)
        return 2
      match[0]["experiment"] = args.experiment
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
