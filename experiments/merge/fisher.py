"""Fisher-weighted averaging and RegMean beat simple averaging (Matena & Raffel, 2022; Jin et al., 2023).

Digits are split into 5 tasks of 2 classes (``paperlab.data.split_by_class``). A weak base MLP is pre-trained
briefly on a subset of all classes, then fine-tuned on each task (shared 10-way head). The five fine-tunes are
merged by simple averaging, by Fisher-weighted averaging (diagonal "exact" Fisher of each fine-tune on 256 of
its task's training examples) and by RegMean (input Grams of each fine-tune on the same examples); uncertainty-based
gradient matching (Daheim et al., 2024) with the same Fishers is reported too. The metric is the mean over tasks of
the 10-way test accuracy on each task's classes.

Calibration (6 seeds of init/base subset, split seed 0): mean task accuracy average 82.5%, Fisher 83.4%, RegMean
92.9%. RegMean's advantage is robust (+5.6 to +11.8 points on every seed tried); Fisher's is not (+5.6, +1.8, +0.0
points on seeds 0-2 with the split seed equal to the seed), so the Fisher claim (catalogue: +2 points) does not
reproduce at this scale. Fisher merging needs FusionBench's per-model Fisher normalisation here: without it Fisher
falls below the average (78.3% vs 83.4% on seed 0).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, merge, models, train

PAPER_ID = 460
CLAIM = ("Merging five digits-task fine-tunes, Fisher-weighted averaging beats simple averaging by at least 2 points "
         "of mean task accuracy (mean over 6 seeds).")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 128
  c.groups = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
  c.base_fraction = 0.05
  c.base_steps = 20
  c.finetune_steps = 200
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.num_examples = 256  # FusionBench's num_fisher_examples / num_regmean_examples
  c.regmean_alpha = 0.95
  c.fisher_eps = 1e-6  # FusionBench's minimal_fisher_weight
  c.fisher_normalize = True  # FusionBench's normalize_fisher_weight
  c.fisher_mode = "exact"
  c.gm_alpha = 1.0
  c.seeds = (0, 1, 2, 3, 4, 5)
  c.split_seed = 0
  c.margin = 0.02
  return c


def _mean_task_accuracy(apply, params, tasks):
  return float(np.mean([(jnp.argmax(apply(params, t.x_test), -1) == t.y_test).mean() for t in tasks]))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits(seed=config.split_seed)
  tasks = data.split_by_class(ds, [list(g) for g in config.groups])
  opt = optax.adam(config.learning_rate)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width, config.width], 10, rngs=r), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  apply = merge.model_apply(graphdef)
  apply_jit = jax.jit(apply)
  n_base = int(config.base_fraction * len(ds.y_train))
  n_min = min(len(t.y_train) for t in tasks)
  n_ex = min(config.num_examples, n_min)
  xs = jnp.stack([t.x_train[:n_min] for t in tasks])
  ys = jnp.stack([t.y_train[:n_min] for t in tasks])

  pretrain = jax.jit(lambda s, x, y, k: train.run_steps(step, s, (x, y), k, batch_size=config.batch_size,
                                                        num_steps=config.base_steps)[0])
  finetune = jax.jit(jax.vmap(lambda s, x, y, k: train.run_steps(
      step, s, (x, y), k, batch_size=config.batch_size, num_steps=config.finetune_steps)[0], in_axes=(None, 0, 0, 0)))
  fisher_fn = jax.jit(jax.vmap(lambda p, x, y, k: merge.diag_fisher(
      apply, p, x, mode=config.fisher_mode, labels=y, rng=k, chunk=64)))
  gram_fn = jax.jit(jax.vmap(lambda p, x: merge.gram_matrices(graphdef, p, x)))
  base_fisher_fn = jax.jit(lambda p, x: merge.diag_fisher(apply, p, x, mode="exact", chunk=64))

  per_seed = []
  for seed in config.seeds:
    key = jax.random.key(seed)
    idx = np.random.default_rng(seed).permutation(len(ds.y_train))[:n_base]
    bx, by = jnp.asarray(ds.x_train[idx]), jnp.asarray(ds.y_train[idx])
    base = pretrain(jax.jit(init)(key), bx, by, jax.random.fold_in(key, 1))
    finetuned = finetune(base, xs, ys, jax.random.split(jax.random.fold_in(key, 2), len(tasks)))
    fishers = fisher_fn(finetuned.params, xs[:, :n_ex], ys[:, :n_ex],
                        jax.random.split(jax.random.fold_in(key, 3), len(tasks)))
    grams = gram_fn(finetuned.params, xs[:, :n_ex])
    unstack = lambda tree: [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(len(tasks))]
    fts, fs, gs = unstack(finetuned.params), unstack(fishers), unstack(grams)
    merged = {
        "average": jax.tree.map(lambda *x: sum(x) / len(x), *fts),
        "fisher": merge.fisher_merge(fts, fs, eps=config.fisher_eps, normalize=config.fisher_normalize),
        "regmean": merge.regmean_merge(fts, gs, alpha=config.regmean_alpha),
        "gradient_matching": merge.gradient_matching(
            base.params, fts, fs, base_hessian=base_fisher_fn(base.params, bx), alpha=config.gm_alpha,
            sizes=[float(n_min)] * len(tasks), base_size=float(n_base)),
    }
    acc = {k: _mean_task_accuracy(apply_jit, p, tasks) for k, p in merged.items()}
    acc["base"] = _mean_task_accuracy(apply_jit, base.params, tasks)
    acc["finetuned_own_task"] = float(np.mean([_mean_task_accuracy(apply_jit, f, [t]) for f, t in zip(fts, tasks)]))
    ctx.log(seed, acc)
    per_seed.append(acc)

  mean = {k: float(np.mean([a[k] for a in per_seed])) for k in per_seed[0]}
  passed = mean["fisher"] >= mean["average"] + config.margin
  return {
      "claim": {"passed": bool(passed), "statement": CLAIM, "fisher": mean["fisher"], "average": mean["average"],
                "margin": config.margin},
      "regmean_beats_average": bool(mean["regmean"] >= mean["average"] + config.margin),
      "accuracy_mean_over_seeds": mean,
      "accuracy_per_seed": per_seed,
      "seconds": time.time() - t0,
  }
