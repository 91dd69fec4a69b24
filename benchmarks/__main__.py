"""``python -m benchmarks [NAME ...] [--quick] [--out DIR]``: run benchmark modules, write JSON per module.

Each module ``benchmarks/<NAME>.py`` defines ``run(quick: bool) -> list[dict]`` built with
``benchmarks.harness.compare``.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import pkgutil
import sys

from benchmarks import harness


def available() -> list[str]:
  here = pathlib.Path(__file__).parent
  return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in ("harness", "__main__"))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
  parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
  parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (for tests)")
  parser.add_argument("--out", default="benchmarks/results", help="directory for the JSON files")
  args = parser.parse_args(argv)
  names = args.names or available()
  unknown = [n for n in names if n not in available()]
  if unknown:
    parser.error(f"unknown benchmark(s) {unknown}; available: {available()}")
  for name in names:
    records = importlib.import_module(f"benchmarks.{name}").run(quick=args.quick)
    path = harness.write(records, pathlib.Path(args.out) / f"{name}.json")
    for r in records:
      print(f"{r['name']}: {r['op']} {r['op_seconds'] * 1e3:.3f} ms vs {r['baseline']} "
            f"{r['baseline_seconds'] * 1e3:.3f} ms -> ratio {r['ratio']:.2f}"
            + (f" (target <= {r['target']})" if "target" in r else ""))
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
