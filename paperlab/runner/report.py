"""``paperlab report DIR``: a table of final metrics (mean ± std over seeds), PNG plots and ``report.md``.

Works on a store root (``DIR/<experiment>/<trial>/``) or on one experiment's directory. Hyperparameters that
vary across an experiment's trials become the table's columns; trials that differ only in a seed are one row.
"""

from __future__ import annotations

import json
import math
import pathlib
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


def load_trials(directory: str | pathlib.Path) -> dict[str, list[dict]]:
  """``{experiment: [trial, ...]}`` with each trial's flat config, status, flat numeric result and metrics."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    from paperlab.runner.config import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"run directory not found: {str(directory)!r}")
  by_experiment: dict[str, list[dict]] = {}
  for config_path in sorted(directory.glob("**/config.json")):
    trial_dir = config_path.parent
    trial = {"id": trial_dir.name, "dir": trial_dir, "experiment": trial_dir.parent.name,
             "config": flatten(json.loads(config_path.read_text())), "status": "new", "result": {},
             "metrics": []}
    status_path = trial_dir / "status.json"
    if status_path.exists():
      trial["status"] = json.loads(status_path.read_text()).get("status", "?")
    result_path = trial_dir / "result.json"
    if trial["status"] == "done" and result_path.exists():
      flat = flatten(json.loads(result_path.read_text()))
      trial["result"] = {k: n for k, v in flat.items() if (n := _number(v)) is not None}
    metrics_path = trial_dir / "metrics.jsonl"
    if metrics_path.exists():
      for line in metrics_path.read_text().splitlines():
        try:
          trial["metrics"].append(json.loads(line))
        except json.JSONDecodeError:
          pass
    by_experiment.setdefault(trial["experiment"], []).append(trial)
  return by_experiment


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
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = set()
  for r in rows:
    for t in r["trials"]:
      for line in t["metrics"]:
        names |= {k for k, v in line.items() if k != "step" and _number(v) is not None}
  preferred = [m for m in ("loss", "train_loss", "test_accuracy", "accuracy") if m in names]
  paths = []
  for metric in (preferred or sorted(names))[:2]:
    fig, ax = plt.subplots(figsize=(6, 4))
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
    path = out / f"{name}_curves_{metric}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)
  return paths


def _plot_sweeps(name: str, hparams, metrics, rows, out: pathlib.Path) -> list[pathlib.Path]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  numeric = [k for k in hparams if all(_number(r["hparams"][k]) is not None and not isinstance(r["hparams"][k], bool)
                                       for r in rows)]
  for param in numeric:
    others = [k for k in hparams if k != param]
    for metric in metrics[:2]:
      fig, ax = plt.subplots(figsize=(6, 4))
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
      path = out / f"{name}_{metric}_vs_{param}.png".replace("/", "_")
      fig.tight_layout()
      fig.savefig(path, dpi=80)
      plt.close(fig)
      paths.append(path)
  return paths


def report(directory: str | pathlib.Path, out: str | pathlib.Path | None = None, plots: bool = True) -> dict:
  """Summarize every experiment under ``directory``.

  Returns:
    ``{"table": str, "markdown": path of report.md, "plots": [png paths], "experiments": {name: rows}}``.
  """
  directory = pathlib.Path(directory)
  out = pathlib.Path(out) if out else directory
  out.mkdir(parents=True, exist_ok=True)
  texts, md, all_plots, experiments = [], ["# paperlab report", ""], [], {}
  for name, trials in load_trials(directory).items():
    hparams, metrics, rows = summarize(trials)
    experiments[name] = rows
    texts += [f"== {name} ({len(trials)} trials)", table(hparams, metrics, rows), ""]
    md += [f"## {name}", "", f"{len(trials)} trials; values are mean ± std over seeds.", "",
           table(hparams, metrics, rows, markdown=True), ""]
    if plots:
      paths = _plot_curves(name, rows, out) + _plot_sweeps(name, hparams, metrics, rows, out)
      all_plots += paths
      md += [f"![{p.stem}]({p.name})" for p in paths] + [""]
  md_path = out / "report.md"
  md_path.write_text("\n".join(md))
  return {"table": "\n".join(texts), "markdown": md_path, "plots": all_plots, "experiments": experiments}
