"""PCB-merging on ROT-DIGITS (Du et al., "Parameter Competition Balancing for Model Merging", NeurIPS 2024,
arXiv:2410.02396).

ROT-DIGITS (catalogue; ``paperlab.merge.finetune_task_pool``): per seed, an MLP 64-128-128-10 pre-trained on upright
digits; five tasks (rot90, rot180, rot270, hflip, invert) each fine-tune the backbone plus their own head (300 Adam
steps, lr 1e-3, batch 64). Merged backbones are scored with each task's head (mean task accuracy, test split).
PCB (the paper's defaults: keep ratio 0.1 per task, clamping quantile 1e-4, one flat vector over the backbone)
and task arithmetic (TA) each take their scale from ONE grid, picked on validation (the paper searches lambda on
validation data); asserts use test. The claim is judged on seed means through :mod:`paperlab.runner.pool_protocol`
(``TaskPool.compare``: one grid, so the same tuning budget for PCB and TA; test read once per seed and method), with
its control: TA passed as the method must fail (it does: the claim asks for a 1-point gain).

Claim (catalogue [285], tested as stated, no deviation): PCB(best lambda) >= TA(best lambda) + 1 point.

Measured (seeds 0-2, ~13 CPU-seconds on one core): TA 60.3 +- 1.5 (lambda 0.4-0.5; seeds 60.1/58.5/62.3), PCB
46.7 +- 2.4 (lambda 1.2-2.0; 48.6/43.2/48.1): the claim does NOT reproduce (-13.6 points, every seed). A diagnostic row keeping every
entry (ratio 1.0: PCB's intra/inter balancing weights without the trim) reaches 52.5 (56.8/43.2/57.4): the
balancing weights cost 7.8 points against TA's uniform sum and the trim to 10% per task another 5.8, as trims do
for TIES and breadcrumbs here (the task vectors of this 25k-parameter MLP are not redundant; digits_tasks.py:
trimming to 20% drops a fine-tune's own task from 96.5 to 73.6). ``merge.pcb`` matches a torch transcription of
the authors' ``PCB_merge`` (tests/parity/test_merge_a_torch_swa_pcb.py). 8-task table (digits_tasks.py): PCB 40.7
vs TA 47.9.
"""

from __future__ import annotations

import time

import ml_collections

from paperlab import data, merge, papers
from paperlab.runner import pool_protocol

PAPER_ID = 285
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # the catalogue's ROT-DIGITS substrate (paperlab.merge.finetune_task_pool arguments)
  c.pool = ml_collections.ConfigDict(dict(seeds=(0, 1, 2), width=128, base_steps=300, finetune_steps=300,
                                          batch_size=64, learning_rate=1e-3))
  c.lams = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0)  # one grid
  c.ratio = 0.1
  c.diagnostic_ratio = 1.0  # a PCB row that keeps every entry: the balancing weights without the trim
  c.margin = 0.01
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  pool = merge.finetune_task_pool(data.transformed_digits(), **config.pool)
  ctx.log_curve("finetune_loss", pool.finetune_loss.mean((0, 1)), every=50)
  scores = pool.compare({
      "task_arithmetic": lambda m, si: merge.task_arithmetic(m.base_backbone, m.finetuned, 1.0),
      "pcb": lambda m, si: merge.pcb(m.base_backbone, m.finetuned, config.ratio, 1.0),
      "pcb_diagnostic_ratio": lambda m, si: merge.pcb(m.base_backbone, m.finetuned, config.diagnostic_ratio, 1.0),
  }, config.lams)
  comparison = pool_protocol.comparison(scores, config.pool.seeds)
  acc = pool_protocol.MEAN_TASK_ACCURACY
  verdict = comparison.judge(lambda m, b: m[acc] >= b[acc] + config.margin, method="pcb", baseline="task_arithmetic")
  mean = {k: v.mean for k, v in scores.items()}
  ctx.log(config.pool.finetune_steps, {f"mean_acc/{k}": v for k, v in mean.items()})
  if not ctx.quiet:
    ctx.print("\n".join(merge.format_scores(scores)))
  return {
      "claim": {**verdict, "statement": CLAIM, "pcb": mean["pcb"], "task_arithmetic": mean["task_arithmetic"],
                "pcb_std": comparison["pcb"].std(acc), "task_arithmetic_std": comparison["task_arithmetic"].std(acc),
                "margin": config.margin},
      "protocol": comparison.to_json(),
      **merge.scores_summary(scores),
      "seconds": time.time() - t0,
  }
