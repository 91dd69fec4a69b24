"""Model Breadcrumbs on ROT-DIGITS (Davari & Belilovsky, "Model Breadcrumbs: Scaling Multi-Task Model Merging with
Sparse Masks", arXiv:2312.06795).

ROT-DIGITS (catalogue; ``paperlab.merge.finetune_task_pool``): per seed, an MLP 64-128-128-10 pre-trained on upright
digits; five tasks (rot90, rot180, rot270, hflip, invert) each fine-tune the backbone plus their own head (300 Adam
steps, lr 1e-3, batch 64). Merged backbones are scored with each task's head (mean task accuracy, test split).

1. Breadcrumbs with the paper's mask (per layer, drop the bottom beta = 85% and the top gamma = 1% of each task
   vector's magnitudes) vs task arithmetic (TA); each picks its scale from ONE grid on validation. The kept fraction
   is measured on the masked task vectors of the backbone.
2. Scaling with the number of tasks (the paper's Fig. 4 setting): each method's scale is tuned once, on validation,
   with the first two tasks merged, then kept fixed while tasks 1..5 are merged; the drop of the mean accuracy over
   the merged tasks from 2 to 5 tasks is compared.

Claim (catalogue [369], tested as stated, no deviation): breadcrumbs(0.85, 0.01) >= TA(best lambda) - 0.5 points
while keeping <= 15% of the task vector entries, and adding tasks with a fixed scale tuned on two tasks costs
breadcrumbs less than TA. "TA with the same fixed lambda" is read as the same procedure (TA's own scale, tuned on
the same two tasks on validation): each method gets the same tuning budget. Judged on seed means through
:mod:`paperlab.runner.pool_protocol`; control: TA passed as the method must fail (it does: it keeps every entry).

Measured (seeds 0-2, ~15 CPU-seconds on one core): TA 60.3 +- 1.5 (lambda 0.4-0.5), breadcrumbs 47.0 +- 2.5 (lambda
0.9-1.0; seeds 50.3/44.4/46.3 vs 60.1/58.5/62.3), kept fraction 0.140. Fixed scale tuned on tasks 1-2 (TA 0.8-0.9,
breadcrumbs 2.0-2.5), mean accuracy over the merged tasks for 1..5 tasks: TA 95.2 79.9 57.6 59.3 49.5, breadcrumbs
89.8 67.9 50.4 49.0 38.8, so the 2 -> 5 drop is 29.0 +- 2.5 points for breadcrumbs vs 30.4 +- 3.2 for TA (per seed
27.8/32.5/26.8 vs 34.8/29.0/27.4: within the spread). Sparsity and the scaling comparison hold (the latter narrowly,
from a lower start); "within 0.5 points of TA" does NOT (-13.3), so the claim is not reproduced.
As digits_tasks.py found for TIES' 20% trim, the task vectors of this 25k-parameter MLP are not redundant: the
85% of small entries the mask drops carry much of each task: a fine-tune with its task vector masked (scale 1)
falls from 96.6 to 57.9 on its own task (8-task table: breadcrumbs 37.8 vs TA 47.9).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import data, merge, papers
from paperlab.runner import pool_protocol

PAPER_ID = 369
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # the catalogue's ROT-DIGITS substrate (paperlab.merge.finetune_task_pool arguments)
  c.pool = ml_collections.ConfigDict(dict(seeds=(0, 1, 2), width=128, base_steps=300, finetune_steps=300,
                                          batch_size=64, learning_rate=1e-3))
  c.lams = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0)  # one grid
  c.beta = 0.85
  c.gamma = 0.01
  c.tolerance = 0.005
  c.max_kept = 0.15
  c.tune_tasks = 2  # the scale of the task-scaling study is tuned with this many tasks merged
  return c


def _kept_fraction(base, finetuned, beta, gamma) -> float:
  """Share of a task vector's backbone entries that survive the breadcrumbs mask."""
  kept = merge.task_vector(base, merge.breadcrumbs(base, [finetuned], beta, gamma, 1.0))
  leaves = jax.tree.leaves(kept)
  return float(sum(jnp.sum(x != 0) for x in leaves) / sum(x.size for x in leaves))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  pool = merge.finetune_task_pool(data.transformed_digits(), **config.pool)
  ctx.log_curve("finetune_loss", pool.finetune_loss.mean((0, 1)), every=50)
  num_tasks = len(pool.tasks)

  def methods(n):
    """The two merges of the first ``n`` fine-tunes, at scale 1."""
    return {
        "task_arithmetic": lambda m, si: merge.task_arithmetic(m.base_backbone, m.finetuned[:n], 1.0),
        "breadcrumbs": lambda m, si: merge.breadcrumbs(m.base_backbone, m.finetuned[:n], config.beta, config.gamma,
                                                       1.0),
    }

  scores = pool.compare(methods(num_tasks), config.lams)
  mean = {k: v.mean for k, v in scores.items()}
  members = [pool.member(si) for si in range(pool.num_seeds)]
  kept = [[_kept_fraction(m.base_backbone, f, config.beta, config.gamma) for f in m.finetuned] for m in members]
  # own-task test accuracy of each fine-tune, whole vs its task vector masked (scale 1)
  own = lambda m, bb, t: float(pool.accuracy(bb, m.heads)[t])
  retention = np.mean([[own(m, f, t), own(m, merge.breadcrumbs(m.base_backbone, [f], config.beta, config.gamma, 1.0),
                                          t)] for m in members for t, f in enumerate(m.finetuned)], axis=0)

  # adding tasks with a fixed scale, tuned on validation with the first `tune_tasks` tasks merged
  curves, fixed = {}, {}
  for name in methods(num_tasks):
    accs, lams = [], []
    for si, m in enumerate(members):
      lam, _ = pool.tune(m, merge.task_vector(m.base_backbone, methods(config.tune_tasks)[name](m, si)),
                         config.lams, tasks=range(config.tune_tasks))
      lams.append(lam)
      accs.append([float(np.mean(pool.accuracy(merge.apply_task_vector(
          m.base_backbone, merge.task_vector(m.base_backbone, methods(n)[name](m, si)), lam), m.heads)[:n]))
          for n in range(1, num_tasks + 1)])
    curves[name] = np.asarray(accs)  # (S, num_tasks)
    fixed[name] = lams
  curve = {k: v.mean(0).tolist() for k, v in curves.items()}
  drop = {k: v[:, config.tune_tasks - 1] - v[:, -1] for k, v in curves.items()}  # per seed
  extra = {"task_arithmetic": {"kept_fraction_max": [1.0] * pool.num_seeds},  # TA keeps every entry
           "breadcrumbs": {"kept_fraction_max": [max(k) for k in kept]}}
  for k in extra:
    extra[k]["drop_2_to_5"] = drop[k]
  comparison = pool_protocol.comparison(scores, config.pool.seeds, extra=extra)
  acc = pool_protocol.MEAN_TASK_ACCURACY

  def claim(m, b):  # on seed means; control: TA as the method keeps every entry, so it fails the sparsity part
    return (m[acc] >= b[acc] - config.tolerance and m["kept_fraction_max"] <= config.max_kept
            and m["drop_2_to_5"] < b["drop_2_to_5"])

  verdict = comparison.judge(claim, method="breadcrumbs", baseline="task_arithmetic")
  for n in range(num_tasks):
    ctx.log(n + 1, {f"tasks_merged_acc/{k}": v[n] for k, v in curve.items()})
  ctx.log(config.pool.finetune_steps, {**{f"mean_acc/{k}": v for k, v in mean.items()},
                                       "kept_fraction": float(np.mean(kept))})
  if not ctx.quiet:
    ctx.print("\n".join(merge.format_scores(scores, {k: f"fixed lam={fixed[k]}: tasks 1..{num_tasks} " + " ".join(
        f"{a * 100:.1f}" for a in curve[k]) for k in scores})))
    ctx.print(f"kept fraction {np.mean(kept):.4f} (max {np.max(kept):.4f}); own-task accuracy whole "
              f"{retention[0] * 100:.1f}, masked {retention[1] * 100:.1f}")

  mdrop = {k: float(np.mean(v)) for k, v in drop.items()}
  return {
      "claim": {**verdict, "statement": CLAIM,
                "breadcrumbs": mean["breadcrumbs"], "task_arithmetic": mean["task_arithmetic"],
                "kept_fraction_max": float(np.max(kept)), "drop_2_to_5_breadcrumbs": mdrop["breadcrumbs"],
                "drop_2_to_5_task_arithmetic": mdrop["task_arithmetic"],
                "accuracy_ok": bool(mean["breadcrumbs"] >= mean["task_arithmetic"] - config.tolerance),
                "sparse_ok": bool(np.max(kept) <= config.max_kept),
                "scaling_ok": bool(mdrop["breadcrumbs"] < mdrop["task_arithmetic"])},
      "protocol": comparison.to_json(),
      **merge.scores_summary(scores),
      "kept_fraction": float(np.mean(kept)),
      "own_task_retention": {"finetuned": float(retention[0]), "masked": float(retention[1])},
      "tasks_merged_accuracy": curve,
      "tasks_merged_accuracy_per_seed": {k: v.tolist() for k, v in curves.items()},
      "fixed_lam": fixed,
      "seconds": time.time() - t0,
  }
