"""Isotropic merging beats task arithmetic on ROT-DIGITS (Marczak et al., "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", arXiv:2502.04959).

ROT-DIGITS (catalogue; ``paperlab.merge.finetune_task_pool``): per seed, an MLP 64-128-128-10 pre-trained on upright
digits; five tasks (rot90, rot180, rot270, hflip, invert) each fine-tune the backbone plus their own head (300 Adam
steps, lr 1e-3, batch 64). Merged backbones are scored with each task's head; the metric is the mean task accuracy.
Task arithmetic (TA, ``base + lam * sum_t tau_t``), Iso-C (``base + alpha * mean(sigma) U V^T`` of ``sum_t tau_t``
per weight matrix) and Iso-CTS (common fraction 0.8, the paper's default) take their scale from ONE grid, picked on
validation per seed; asserts use test. The paper's alignment metric (eqs. 5-6, ``merge.mean_subspace_alignment``:
the share of each task matrix's norm inside the merged matrix's dominant subspace, 95% of its norm) is averaged over
the two hidden layers, tasks and seeds.

Claim (catalogue [372], tested as stated, no deviation): Iso-C(best alpha) >= TA(best lambda) + 2 points; Iso-CTS
>= Iso-C - 0.5 points; the alignment of Iso-C is higher than TA's. Judged on seed means through
:mod:`paperlab.runner.pool_protocol` (one grid: the same tuning budget for every method; test read once per seed and
method); control: TA passed as Iso-C must fail (it does: it cannot beat itself by 2 points).

Measured (seeds 0-2, ~15 CPU-seconds on one core): TA 60.3 +- 1.5 (lambda 0.4-0.5), Iso-C 69.3 +- 2.1 (alpha
2.0-2.5), Iso-CTS 59.6 +- 1.6 (alpha 2.5-3.0); alignment TA 0.832 +- 0.003, Iso-C 0.932 +- 0.011, Iso-CTS 0.934.
Iso-C >= TA + 2 and the alignment ordering reproduce; Iso-CTS >= Iso-C - 0.5 does NOT (-9.7 points, every seed:
57.3/61.1/60.3 vs 72.3/67.2/68.4), so the claim is not reproduced. Extending the grid to 6.0 changes no pick, so it is not the grid's edge. Iso-CTS replaces the weakest 20% of the
summed update's directions by each task's top residual directions (3 per task in the 64-input layer, 5 in the
128-wide one) and spreads one mean singular value over all of them; here those task-specific directions take norm
from the common ones without helping (its alignment is barely higher, 0.934 vs 0.932). ``merge.iso_cts`` matches an
independent float64 reading of the paper's Alg. 1 (tests/merge/test_iso_cts_reference.py), so the gap is not an
implementation slip. The 8-task table of digits_tasks.py shows the same order: Iso-C 56.0, Iso-CTS 50.4, TA 47.9.
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np

from paperlab import data, merge, papers
from paperlab.runner import pool_protocol

PAPER_ID = 372
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # the catalogue's ROT-DIGITS substrate (paperlab.merge.finetune_task_pool arguments)
  c.pool = ml_collections.ConfigDict(dict(seeds=(0, 1, 2), width=128, base_steps=300, finetune_steps=300,
                                          batch_size=64, learning_rate=1e-3))
  # one grid for every method: TA's usual 0.1-1.0 and Iso-C's alpha (1.0 in FusionBench, 1.5 in its ViT examples)
  c.lams = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0)
  c.common_fraction = 0.8  # Iso-CTS
  c.norm_threshold = 0.95  # k_M of the alignment metric keeps 95% of the merged matrix's norm (authors' code)
  c.margin = 0.02
  c.cts_tolerance = 0.005
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  pool = merge.finetune_task_pool(data.transformed_digits(), **config.pool)
  ctx.log_curve("finetune_loss", pool.finetune_loss.mean((0, 1)), every=50)
  methods = {
      "task_arithmetic": lambda m, si: merge.task_arithmetic(m.base_backbone, m.finetuned, 1.0),
      "iso_c": lambda m, si: merge.iso_c(m.base_backbone, m.finetuned, 1.0),
      "iso_cts": lambda m, si: merge.iso_cts(m.base_backbone, m.finetuned, 1.0,
                                             common_fraction=config.common_fraction),
  }
  scores = pool.compare(methods, config.lams)
  alignment = {}
  for name in ("task_arithmetic", "iso_c", "iso_cts"):
    alignment[name] = [float(np.mean(merge.mean_subspace_alignment(
        m.base_backbone, m.finetuned, methods[name](m, si), norm_threshold=config.norm_threshold)))
        for si, m in enumerate(map(pool.member, range(pool.num_seeds)))]
  comparison = pool_protocol.comparison(scores, config.pool.seeds,
                                        extra={k: {"alignment": v} for k, v in alignment.items()})
  acc = pool_protocol.MEAN_TASK_ACCURACY
  cts = comparison["iso_cts"].mean(acc)
  # the three parts on seed means; control: TA in Iso-C's place must fail (it cannot beat itself by 2 points)
  verdict = comparison.judge(lambda m, b: (m[acc] >= b[acc] + config.margin and cts >= m[acc] - config.cts_tolerance
                                           and m["alignment"] > b["alignment"]),
                             method="iso_c", baseline="task_arithmetic")
  mean = {k: v.mean for k, v in scores.items()}
  align = {k: float(np.mean(v)) for k, v in alignment.items()}
  ctx.log(config.pool.finetune_steps, {**{f"mean_acc/{k}": v for k, v in mean.items()},
                                       **{f"alignment/{k}": v for k, v in align.items()}})
  if not ctx.quiet:
    ctx.print("\n".join(merge.format_scores(scores, {k: f"alignment={v:.3f}" for k, v in align.items()})))
  return {
      "claim": {**verdict, "statement": CLAIM, "iso_c": mean["iso_c"], "iso_cts": mean["iso_cts"],
                "task_arithmetic": mean["task_arithmetic"], "alignment_iso_c": align["iso_c"],
                "alignment_task_arithmetic": align["task_arithmetic"], "margin": config.margin,
                "cts_tolerance": config.cts_tolerance,
                "iso_c_beats_ta": bool(mean["iso_c"] >= mean["task_arithmetic"] + config.margin),
                "iso_cts_within_tolerance": bool(cts >= mean["iso_c"] - config.cts_tolerance),
                "alignment_higher": bool(align["iso_c"] > align["task_arithmetic"])},
      "protocol": comparison.to_json(),
      **merge.scores_summary(scores),
      "subspace_alignment": align,
      "subspace_alignment_per_seed": alignment,
      "seconds": time.time() - t0,
  }
