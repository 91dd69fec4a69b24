"""``paperlab report DIR``: a table of final metrics (mean ± std over seeds), PNG plots and ``report.md``.

Works on a store root (``DIR/<experiment>/<trial>/``) or on one experiment's directory. Hyperparameters that
vary across an experiment's trials become the table's columns; trials that differ only in a seed are one row.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import statistics
from typing import Any, Mapping, Sequence

from paperlab.runner.config import flatten

MAX_METRICS = 6


def _is_seed(key: str) -> bool:
  return key == "seed" or key.endswith(".seed") or key.endswith("_seed")


def _number(v: Any) -> float | None:
  if isinstance(v, bool):
    return float(v)
  if isinstance(v, (int, float)):
    return float(v)
  if isinstance(v, str) and v in ("nan", "inf", "-inf"):
    return float(v)
  return None


def _trial_dirs(directory: pathlib.Path) -> list[pathlib.Path]:
  """Directories holding a ``config.json`` under ``directory``, not following symbolic links."""
  found = []
  for root, dirs, files in os.walk(directory, followlinks=False):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    if "config.json" in files:
      found.append(pathlib.Path(root))
      dirs[:] = [d for d in dirs if d != "checkpoints"]
  return sorted(found)


def load_trials(directory: str | pathlib.Path) -> dict[str, list[dict]]:
  """``{experiment: [trial, ...]}`` with each trial's flat config, status, flat numeric result and metrics.

  A trial whose files cannot be read (malformed ``config.json`` or ``status.json``, a ``result.json`` that fails
  its checksum) is listed with status ``failed`` and a ``reason`` naming the file; it never stops the report.
  """
  from paperlab.runner.store import DONE, DamagedFile, TrialDir, metric_records, read_json_checked  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    from paperlab.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"run directory not found: {str(directory)!r}")
  by_experiment: dict[str, list[dict]] = {}
  for trial_dir in _trial_dirs(directory):
    trial = {"id": trial_dir.name, "dir": trial_dir, "experiment": trial_dir.parent.name, "config": {},
             "status": "new", "result": {}, "metrics": [], "reason": None}
    store = TrialDir(trial_dir.parent.parent, trial_dir.parent.name, trial_dir.name)
    try:
      trial["config"] = flatten(read_json_checked(trial_dir / "config.json"))
      status = store.status()
      trial["status"] = status.get("status", "?")
      trial["reason"] = status.get("reason")
      if trial["status"] == "damaged":
        trial["status"] = "failed"
      elif trial["status"] == DONE:
        flat = flatten(store.result())
        trial["result"] = {k: n for k, v in flat.items() if (n := _number(v)) is not None}
    except DamagedFile as e:
      trial["status"], trial["reason"], trial["result"] = "failed", f"damaged: {e}", {}
    except OSError as e:
      trial["status"], trial["reason"], trial["result"] = "failed", f"unreadable: {e}", {}
    trial["metrics"] = metric_records(trial_dir / "metrics.jsonl")[0]
    by_experiment.setdefault(trial["experiment"], []).append(trial)
  return by_experiment


def safe_file_name(text: str) -> str:
  """``text`` as a file name that stays in its directory: letters, digits and ``_ . = -`` only."""
  name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text)).strip("._")[:150]
  return name or "plot"


def _write_into(out: pathlib.Path, name: str, write) -> pathlib.Path:
  """Call ``write(tmp_path)`` and move the file to ``out/safe(name)``: never outside ``out``, never through a
  link planted at the destination (``os.replace`` replaces a link instead of following it)."""
  stem, dot, ext = name.rpartition(".")
  path = out / (safe_file_name(stem) + dot + ext if dot else safe_file_name(name))
  if path.parent.resolve() != out.resolve():
    raise ValueError(f"refusing to write {path} outside {out}")
  tmp = out / f".{path.name}.{os.getpid()}.tmp{('.' + ext) if dot else ''}"
  if tmp.is_symlink() or tmp.exists():
    tmp.unlink()
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def varying_keys(trials: Sequence[Mapping[str, Any]]) -> list[str]:
  """Config keys whose values differ between trials."""
  keys = sorted(set().union(*(t["config"].keys() for t in trials))) if trials else []
  return [k for k in keys if len({json.dumps(t["config"].get(k), sort_keys=True) for t in trials}) > 1]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  values = list(values)
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_std(values: Sequence[float]) -> str:
  if not values:
    return "-"
  m, s = mean_std(values)
  return f"{m:.4g} ± {s:.2g}"


def _metric_order(names: set[str]) -> list[str]:
  def rank(name):
    return (0 if name.startswith("claim") else 1 if name.startswith("test") else 2, name)
  return sorted(names, key=rank)[:MAX_METRICS]


def summarize(trials: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[dict]]:
  """``(hyperparameter columns, metric columns, rows)``; one row per setting of the non-seed hyperparameters."""
  varying = varying_keys(trials)
  hparams = [k for k in varying if not _is_seed(k)]
  metrics = _metric_order(set().union(*(t["result"].keys() for t in trials)) - {"step"} if trials else set())
  groups: dict[str, list] = {}
  for t in trials:
    groups.setdefault(json.dumps([t["config"].get(k) for k in hparams], default=repr), []).append(t)
  rows = []
  for members in groups.values():
    done = [t for t in members if t["status"] == "done"]
    row = {"hparams": {k: members[0]["config"].get(k) for k in hparams}, "n": len(done),
           "failed": len(members) - len(done), "trials": members,
           "values": {m: [t["result"][m] for t in done if m in t["result"]] for m in metrics}}
    rows.append(row)
  try:
    rows.sort(key=lambda r: [r["hparams"][k] for k in hparams])
  except TypeError:
    pass  # mixed types: keep the sweep's order
  return hparams, metrics, rows


def _fmt(v: Any) -> str:
  return f"{v:.3g}" if isinstance(v, float) else str(v)


def table(hparams: Sequence[str], metrics: Sequence[str], rows: Sequence[Mapping[str, Any]],
          markdown: bool = False) -> str:
  header = list(hparams) + ["n", "failed"] + list(metrics)
  body = [[_fmt(r["hparams"][k]) for k in hparams] + [str(r["n"]), str(r["failed"])]
          + [format_mean_std(r["values"][m]) for m in metrics] for r in rows]
  if markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)
  widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
  lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
  lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
  return "\n".join(lines)


def is_log_spaced(values: Sequence[float]) -> bool:
  """Positive values spanning at least a factor of 10 whose log-gaps are more even than their linear gaps."""
  vs = sorted(set(values))
  if len(vs) < 3 or vs[0] <= 0 or vs[-1] / vs[0] < 10:
    return len(vs) >= 2 and vs[0] > 0 and vs[-1] / vs[0] >= 100
  lin = [b - a for a, b in zip(vs, vs[1:])]
  log = [math.log(b) - math.log(a) for a, b in zip(vs, vs[1:])]
  spread = lambda g: statistics.pstdev(g) / statistics.fmean(g)  # noqa: E731
  return spread(log) < spread(lin)


def _label(hparams: Mapping[str, Any]) -> str:
  return ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in hparams.items()) or "all"


def _plot_curves(name: str, rows, out: pathlib.Path) -> list[pathlib.Path]:
  # A Figure without pyplot: writing a PNG must not switch the caller's matplotlib backend (e.g. a notebook's).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  names = set()
  for r in rows:
    for t in r["trials"]:
      for line in t["metrics"]:
        names |= {k for k, v in line.items() if k != "step" and _number(v) is not None}
  preferred = [m for m in ("loss", "train_loss", "test_accuracy", "accuracy") if m in names]
  paths = []
  for metric in (preferred or sorted(names))[:2]:
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for r in rows:
      by_step: dict[int, list[float]] = {}
      for t in r["trials"]:
        for line in t["metrics"]:
          if metric in line and _number(line[metric]) is not None:
            by_step.setdefault(int(line["step"]), []).append(_number(line[metric]))
      if not by_step:
        continue
      steps = sorted(by_step)
      means = [statistics.fmean(by_step[s]) for s in steps]
      stds = [statistics.pstdev(by_step[s]) for s in steps]
      ax.plot(steps, means, label=_label(r["hparams"]))
      ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                      alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{name}: {metric} (mean ± std over seeds)")
    if len(rows) <= 12:
      ax.legend(fontsize=7)
    fig.tight_layout()
    path = _write_into(out, f"{name}_curves_{metric}.png", lambda p, fig=fig: fig.savefig(p, dpi=80, format="png"))
    paths.append(path)
  return paths


def _plot_sweeps(name: str, hparams, metrics, rows, out: pathlib.Path) -> list[pathlib.Path]:
  # A Figure without pyplot: writing a PNG must not switch the caller's matplotlib backend (e.g. a notebook's).
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  paths = []
  numeric = [k for k in hparams if all(_number(r["hparams"][k]) is not None and not isinstance(r["hparams"][k], bool)
                                       for r in rows)]
  for param in numeric:
    others = [k for k in hparams if k != param]
    for metric in metrics[:2]:
      fig = Figure(figsize=(6, 4))
      ax = fig.subplots()
      lines: dict[str, list] = {}
      for r in rows:
        if r["values"][metric]:
          key = _label({k: r["hparams"][k] for k in others})
          lines.setdefault(key, []).append((r["hparams"][param], *mean_std(r["values"][metric])))
      for key, pts in lines.items():
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=key)
      xs = [r["hparams"][param] for r in rows]
      if is_log_spaced(xs):
        ax.set_xscale("log")
      ax.set_xlabel(param)
      ax.set_ylabel(metric)
      ax.set_title(f"{name}: {metric} vs {param}")
      if 1 < len(lines) <= 12:
        ax.legend(fontsize=7)
      fig.tight_layout()
      path = _write_into(out, f"{name}_{metric}_vs_{param}.png",
                         lambda p, fig=fig: fig.savefig(p, dpi=80, format="png"))
      paths.append(path)
  return paths


def report(directory: str | pathlib.Path, out: str | pathlib.Path | None = None, plots: bool = True) -> dict:
  """Summarize every experiment under ``directory``.

  Returns:
    ``{"table": str, "markdown": path of report.md, "plots": [png paths], "experiments": {name: rows}}``.
  """
  directory = pathlib.Path(directory)
  loaded = load_trials(directory)  # before creating anything: a missing directory is an error, not created
  out = pathlib.Path(out) if out else directory
  out.mkdir(parents=True, exist_ok=True)
  texts, md, all_plots, experiments = [], ["# paperlab report", ""], [], {}
  for name, trials in loaded.items():
    hparams, metrics, rows = summarize(trials)
    experiments[name] = rows
    failed = [t for t in trials if t["status"] == "failed"]
    notes = [f"  failed {t['id']}: {t.get('reason') or 'see its status.json'}" for t in failed[:20]]
    if len(failed) > 20:
      notes.append(f"  ... and {len(failed) - 20} more failed trials")
    texts += [f"== {name} ({len(trials)} trials)", table(hparams, metrics, rows), *notes, ""]
    md += [f"## {name}", "", f"{len(trials)} trials; values are mean ± std over seeds.", "",
           table(hparams, metrics, rows, markdown=True), ""]
    md += [f"- failed `{t['id']}`: {t.get('reason') or 'see its status.json'}" for t in failed[:20]]
    if plots:
      paths = _plot_curves(name, rows, out) + _plot_sweeps(name, hparams, metrics, rows, out)
      all_plots += paths
      md += [f"![{p.stem}]({p.name})" for p in paths] + [""]
  md_path = _write_into(out, "report.md", lambda p: p.write_text("\n".join(md)))
  return {"table": "\n".join(texts), "markdown": md_path, "plots": all_plots, "experiments": experiments}
