"""Bring records written before the record schema of ``paperlab.papers.record_result`` up to it.

Adds ``catalogue_claim``, ``tested_claim``, ``deviations`` (the experiment's ``DEVIATIONS``, plus the ones implied by
the record), ``config`` (the experiment's default config), ``seeds``, ``version``, ``commit``, ``status`` and a
``backfilled`` note saying what was reconstructed: the commit is the one that last wrote the record file, the
config the experiment's default config now (records were written by ``paperlab reproduce`` at the default config),
and the device and wall time were not recorded. ``paperlab reproduce ID --check`` tells whether such a record still
holds; ``paperlab reproduce ID`` replaces it with a complete one.

    python tools/backfill_records.py            # every record of the old shape
    python tools/backfill_records.py --refresh  # also recompute deviations/status of complete records
"""

from __future__ import annotations

import argparse
import json
import subprocess

from paperlab import papers
from paperlab.runner.config import load_experiment
from paperlab.runner.context import to_jsonable


def _last_commit(path) -> str | None:
  out = subprocess.run(["git", "-C", str(papers.REPO_ROOT), "log", "-1", "--format=%H", "--", str(path)],
                       capture_output=True, text=True, check=False).stdout.strip()
  return out or None


def backfill(refresh: bool = False) -> list[int]:
  changed = []
  for path in sorted(papers.records_dir().glob("*.json")):
    record = json.loads(path.read_text())
    paper = papers.get(record["paper"])
    module = load_experiment(papers.REPO_ROOT / paper.experiment)
    if "result" not in record:  # the old shape: the experiment's result beside paper/slug/experiment/recorded
      meta = ("paper", "slug", "experiment", "recorded")
      result = {k: v for k, v in record.items() if k not in meta}
      config = to_jsonable(module.get_config().to_dict())
      record = {k: record[k] for k in meta if k in record}
      record.update({
          "result": result,
          "catalogue_claim": paper.claim,
          "tested_claim": result.get("claim", {}).get("statement"),
          "deviations": [str(d) for d in getattr(module, "DEVIATIONS", ())],
          "config": config, "seeds": papers.seeds_of(config),
          "version": record.get("version", "0.1.0"), "commit": _last_commit(path), "dirty": None,
          "device": None, "wall_time_s": None,
          "backfilled": ("config is the experiment's default config, commit the one that last wrote this record; "
                         "device and wall time were not recorded"),
      })
    elif not refresh:
      continue
    else:
      record["catalogue_claim"] = paper.claim
      record["deviations"] = [str(d) for d in getattr(module, "DEVIATIONS", ())]
    record["deviations"] = papers.deviations_of(paper, {**record, "deviations": record["deviations"]})
    record["status"] = papers.status_of_record(paper, record)
    order = ["paper", "slug", "experiment", "status", "catalogue_claim", "tested_claim", "deviations", "config",
             "seeds", "recorded", "wall_time_s", "version", "commit", "dirty", "device", "backfilled", "result"]
    record = {**{k: record[k] for k in order if k in record}, **{k: v for k, v in record.items() if k not in order}}
    path.write_text(json.dumps(record, indent=1) + "\n")
    changed.append(paper.id)
  return changed


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--refresh", action="store_true")
  ids = backfill(parser.parse_args().refresh)
  print(f"updated {len(ids)} records: {ids}")
