"""Seed ``paperlab/papers.json`` from the paper catalogue (one entry per ``### [ID] Title`` heading).

Usage: ``python tools/seed_registry.py CATALOGUE_DIR [--out paperlab/papers.json]``

Re-seeding keeps what was filled in by hand in the existing file (``slug``, ``functions``, ``experiment``,
``arxiv``), so it is safe to run again when the catalogue grows.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

FILE_FAMILY = {"optim_sched.md": "optim", "losses.md": "losses", "merge.md": "merge"}
KIND_FAMILY = {  # catalogue "family:" values of the mixed files -> paperlab package
    "PTQ": "quant", "QAT": "quant", "number-format": "quant", "low-rank-compensation": "quant",
    "pruning": "prune", "scaling-law": "scaling", "init/reparam": "param", "parametrization": "param",
    "analysis": "analysis", "peft": "peft",
}
HEADING = re.compile(r"^### \[(\d+)\] (.+?)(?: \(([^()]*?),? (\d{4})\))?\s*$")


def slugify(title: str) -> str:
  head = title.split(":")[0] if ":" in title[:40] else " ".join(title.split()[:4])
  return re.sub(r"[^a-z0-9]+", "-", head.lower()).strip("-")


def parse(path: pathlib.Path) -> list[dict]:
  entries, cur, field = [], None, None
  for line in path.read_text().splitlines():
    m = HEADING.match(line)
    if m:
      cur = {"id": int(m.group(1)), "title": m.group(2).strip(), "authors": (m.group(3) or "").strip(),
             "year": int(m.group(4)) if m.group(4) else None, "fields": {}}
      entries.append(cur)
      continue
    f = re.match(r"^- ([a-z A-Z]+):(.*)$", line)
    if cur is not None and f:
      field = f.group(1).strip()
      cur["fields"][field] = f.group(2).strip()
    elif cur is not None and field and line.startswith("  ") and line.strip():
      cur["fields"][field] = (cur["fields"][field] + " " + line.strip()).strip()  # continuation lines
    elif not line.strip() or line.startswith("#"):
      field = None
  return entries


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("catalogue", type=pathlib.Path)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parents[1] / "paperlab/papers.json")
  parser.add_argument("--arxiv", type=pathlib.Path, default=pathlib.Path(__file__).with_name("arxiv_ids.json"))
  args = parser.parse_args()
  old = {p["id"]: p for p in json.loads(args.out.read_text())} if args.out.exists() else {}
  arxiv = {int(k): v for k, v in json.loads(args.arxiv.read_text()).items()} if args.arxiv.exists() else {}
  papers, slugs = [], set()
  for name in ("optim_sched.md", "losses.md", "merge.md", "quant_prune.md", "param_scale.md"):
    for e in parse(args.catalogue / name):
      kind = e["fields"].get("family", "")
      family = FILE_FAMILY.get(name) or KIND_FAMILY.get(kind.split(" ")[0], "analysis")
      slug = slugify(e["title"])
      if slug in slugs:
        slug = f"{slug}-{e['id']}"
      slugs.add(slug)
      prev = old.get(e["id"], {})
      papers.append({
          "id": e["id"],
          "slug": prev.get("slug", slug),
          "title": e["title"],
          "authors": e["authors"],
          "year": e["year"],
          "arxiv": prev.get("arxiv") or arxiv.get(e["id"]),
          "family": family,
          "kind": kind,
          "priority": e["fields"].get("priority", "C")[:1],
          "proposed_api": e["fields"].get("paperlab API", ""),
          "claim": e["fields"].get("reproduction", ""),
          "functions": prev.get("functions", []),
          "experiment": prev.get("experiment"),
      })
  args.out.write_text(json.dumps(papers, indent=1, ensure_ascii=False) + "\n")
  print(f"wrote {len(papers)} papers to {args.out}")


if __name__ == "__main__":
  main()
