"""WEMoE on ROT-DIGITS (Tang et al., "Merging Multi-Task Models via Weight-Ensembling Mixture of Experts", ICML 2024,
arXiv:2402.00433).

ROT-DIGITS (catalogue; ``paperlab.merge.finetune_task_pool``): per seed, an MLP 64-128-128-10 pre-trained on upright
digits; five tasks (rot90, rot180, rot270, hflip, invert) each fine-tune the backbone plus their own head (300 Adam
steps, lr 1e-3, batch 64). Merged backbones are scored with each task's head on that task's test split; the metric
is the mean over tasks. "Fine-tuned" is each fine-tune on its own task (FusionBench's individual / STL row).

WEMoE (``merge.wemoe_init``) merges every backbone layer by task arithmetic (lambda = 0.3) except the upscaled one,
the LAST hidden layer (the catalogue's setting), which keeps the base weights plus the five task vectors mixed per
example by a router (2 router layers, output initialised to 0.3, so WEMoE starts as task arithmetic). The routers are
trained by test-time adaptation: 200 Adam steps (lr 1e-3) minimizing the prediction entropy (each task's inputs
through its own head) on unlabeled test inputs (16 per task per step). Neither WEMoE nor TA is tuned (the catalogue
fixes lambda = 0.3 and the TTA recipe), so the budget is equal. Three seeds; the claim is judged on seed means with
the spread reported; control: task arithmetic passed as WEMoE (the routers left at their initial 0.3) must fail.

Claim (catalogue [402], tested as stated, no deviation): WEMoE mean task accuracy >= TA(lambda = 0.3) + 5 points
and >= 0.9 x the mean fine-tuned accuracy.

Measured (seeds 0-2, ~15 s on one core): fine-tuned 96.6 (own task), TA(0.3) 52.3 +- 1.0, WEMoE before TTA 52.3
(= TA, as initialised), WEMoE after 200 TTA steps 32.5 +- 2.5 (seeds 35.6/32.6/29.4; per task rot90 33.1, rot180
23.1, rot270 33.3, hflip 36.2, invert 37.0): entropy minimization routes every task to a confidently wrong mixture,
20 points BELOW task arithmetic. Not reproduced. The earlier record (one seed, its own data pipeline, LayerNorm in
the backbone and BOTH hidden layers upscaled, none of it the catalogue's setting) reached 64.4 vs TA 59.4 and also
failed; its docstring measured 35.2 with only ``hidden/1`` upscaled and 36.0 without LayerNorm, in line with this.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, merge, papers

PAPER_ID = 402
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # the catalogue's ROT-DIGITS substrate (paperlab.merge.finetune_task_pool arguments)
  c.pool = ml_collections.ConfigDict(dict(seeds=(0, 1, 2), width=128, base_steps=300, finetune_steps=300,
                                          batch_size=64, learning_rate=1e-3))
  c.layers = "hidden/1"  # regex over layer paths: the upscaled linear layer (the last hidden one)
  c.lam = 0.3
  c.init_lambda = 0.3
  c.router_hidden_layers = 2
  c.tta_steps = 200
  c.tta_batch_size = 16  # per task
  c.tta_learning_rate = 1e-3
  c.margin = 0.05
  c.fraction_of_finetuned = 0.9
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  pool = merge.finetune_task_pool(data.transformed_digits(), **config.pool)
  ctx.log_curve("finetune_loss", pool.finetune_loss.mean((0, 1)), every=50)
  graphdef, num_tasks = pool.graphdef, len(pool.tasks)
  test_x, y_test = pool.splits["test"]
  n_test = len(y_test)
  accuracy = lambda logits: jnp.mean(jnp.argmax(logits, -1) == y_test)
  tta_opt = optax.adam(config.tta_learning_rate)

  @jax.jit
  def one_seed(base, backbones, heads, key):
    with_head = lambda p, t: {**p, "head": jax.tree.map(lambda h: h[t], heads)}
    fts = [with_head(jax.tree.map(lambda x: x[t], backbones), t) for t in range(num_tasks)]
    params = merge.wemoe_init(jax.random.fold_in(key, 3), base, fts, config.layers, lam=config.lam,
                              init_lambda=config.init_lambda, router_hidden_layers=config.router_hidden_layers)
    moe = lambda p, t, x: merge.wemoe_apply(graphdef, p._replace(merged=with_head(p.merged, t)), x)
    wemoe_acc = lambda p: jnp.stack([accuracy(moe(p, t, test_x[t])) for t in range(num_tasks)])

    def entropy(p, batch):  # unlabeled test inputs of every task, each through its own head
      return jnp.mean(jnp.stack([jnp.mean(merge.prediction_entropy(moe(p, t, x))) for t, x in enumerate(batch)]))

    tta_step = merge.wemoe_tta_step(graphdef, tta_opt, loss_fn=entropy)

    def body(carry, k):
      p, s = carry
      idx = jax.random.choice(k, n_test, (num_tasks, config.tta_batch_size), replace=True)
      p, s, loss = tta_step(p, s, [test_x[t, idx[t]] for t in range(num_tasks)])
      return (p, s), loss

    (adapted, _), entropies = jax.lax.scan(body, (params, tta_opt.init(params.routers)),
                                           jax.random.split(jax.random.fold_in(key, 4), config.tta_steps))
    static = lambda p: jnp.stack([accuracy(merge.model_apply(graphdef)(with_head(p, t), test_x[t]))
                                  for t in range(num_tasks)])
    own = jnp.stack([accuracy(merge.model_apply(graphdef)(fts[t], test_x[t])) for t in range(num_tasks)])
    return {"task_arithmetic": static(merge.wemoe_static_params(params, config.lam)),
            "wemoe_before_tta": wemoe_acc(params), "wemoe": wemoe_acc(adapted), "finetuned_own_task": own,
            "base": static(merge.backbone_of(base))}, entropies

  tables, entropies = [], []
  for si, seed in enumerate(config.pool.seeds):
    pick = lambda tree: jax.tree.map(lambda x: x[si], tree)
    table, ent = one_seed(pick(pool.base), pick(pool.backbones), pick(pool.heads), jax.random.key(seed))
    tables.append({k: np.asarray(v) for k, v in table.items()})
    entropies.append(np.asarray(ent))
  per_task = {k: np.stack([t[k] for t in tables]) for k in tables[0]}  # (S, T)
  per_seed = {k: v.mean(1) for k, v in per_task.items()}
  mean = {k: float(v.mean()) for k, v in per_seed.items()}
  entropies = np.stack(entropies).mean(0)
  for s in range(0, config.tta_steps, max(1, config.tta_steps // 4)):
    ctx.log(s, {"tta_entropy": entropies[s]})
  ctx.log(config.tta_steps, {f"mean_acc/{k}": v for k, v in mean.items()})
  if not ctx.quiet:
    ctx.print(f"{'':>18s}  " + " ".join(f"{n:>7s}" for n in pool.tasks) + "    mean (per seed)")
    for k, v in per_task.items():
      ctx.print(f"{k:>18s}  " + " ".join(f"{a * 100:7.1f}" for a in v.mean(0)) + f"  {mean[k] * 100:6.1f} ("
                + " ".join(f"{a * 100:.1f}" for a in per_seed[k]) + ")")

  claim = lambda method: bool(mean[method] >= mean["task_arithmetic"] + config.margin
                              and mean[method] >= config.fraction_of_finetuned * mean["finetuned_own_task"])
  holds, control = claim("wemoe"), claim("task_arithmetic")
  return {
      "claim": {"passed": holds and not control, "holds": holds, "control_passes": control, "vacuous": control,
                "statement": CLAIM, "wemoe": mean["wemoe"], "task_arithmetic": mean["task_arithmetic"],
                "finetuned_own_task": mean["finetuned_own_task"], "margin": config.margin,
                "fraction_of_finetuned": config.fraction_of_finetuned,
                "std_over_seeds": {k: float(np.std(v)) for k, v in per_seed.items()}},
      "mean_task_accuracy": mean,
      "mean_task_accuracy_per_seed": {k: v.tolist() for k, v in per_seed.items()},
      "per_task_accuracy": {k: v.mean(0).tolist() for k, v in per_task.items()},
      "tta_entropy_first_last": [float(entropies[0]), float(entropies[-1])],
      "seconds": time.time() - t0,
  }
