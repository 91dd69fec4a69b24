"""Evolutionary search of per-layer, per-task merge coefficients beats the best single task-arithmetic scale
(Akiba et al., 2024).

Digits are split into 5 tasks of 2 classes; a weak base MLP is fine-tuned on each task (80% of each task's training
data; 20% is a validation set). The genome holds one task-arithmetic coefficient per (task, layer) pair (5 x 3),
searched by CMA-ES (``paperlab.merge.evolve_merge``) to maximise mean validation accuracy. The baseline is task
arithmetic with one scale chosen on the same validation data from a grid. Both are scored on the test split.

Calibration: the search always wins on validation (+3 to +4 points) but the gain does not transfer to test at this
scale. Evolved minus best-scale TA test accuracy: +0.4 (defaults, seed 0), +2.3 / -2.5 (sigma0=0.3, seeds 0/1),
+2.7 / -3.1 (sigma0=0.3, 60 generations, seeds 0/1), -1.1 / +1.0 (sigma0=0.3, val_fraction=0.5, seeds 0/1). With
15 coefficients fitted on ~50 validation examples per task the search overfits the validation set.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, merge, models, train

PAPER_ID = 305
CLAIM = ("CMA-ES over per-layer, per-task task-arithmetic coefficients reaches a mean task test accuracy at least 1 "
         "point above task arithmetic with the best single scale (both tuned on validation data).")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 128
  c.groups = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
  c.base_fraction = 0.05
  c.base_steps = 20
  c.finetune_steps = 200
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.val_fraction = 0.2
  c.lambdas = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
  c.popsize = 8
  c.generations = 30
  c.sigma0 = 0.1
  c.seed = 0
  c.margin = 0.01
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits(seed=config.seed)
  tasks = data.split_by_class(ds, [list(g) for g in config.groups])
  opt = optax.adam(config.learning_rate)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width, config.width], 10, rngs=r), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  key = jax.random.key(config.seed)
  rng = np.random.default_rng(config.seed)

  n_base = int(config.base_fraction * len(ds.y_train))
  idx = rng.permutation(len(ds.y_train))[:n_base]
  base, _ = jax.jit(lambda s, k: train.run_steps(
      step, s, (jnp.asarray(ds.x_train[idx]), jnp.asarray(ds.y_train[idx])), k, batch_size=config.batch_size,
      num_steps=config.base_steps))(jax.jit(init)(key), jax.random.fold_in(key, 1))

  perms = [rng.permutation(len(t.y_train)) for t in tasks]
  n_val = [int(config.val_fraction * len(p)) for p in perms]
  val = [(jnp.asarray(t.x_train[p[:v]]), jnp.asarray(t.y_train[p[:v]])) for t, p, v in zip(tasks, perms, n_val)]
  fit = [(t.x_train[p[v:]], t.y_train[p[v:]]) for t, p, v in zip(tasks, perms, n_val)]
  n_fit = min(len(y) for _, y in fit)
  xs = jnp.stack([x[:n_fit] for x, _ in fit])
  ys = jnp.stack([y[:n_fit] for _, y in fit])
  keys = jax.random.split(jax.random.fold_in(key, 2), len(tasks))
  finetuned = jax.jit(jax.vmap(lambda x, y, k: train.run_steps(
      step, base, (x, y), k, batch_size=config.batch_size, num_steps=config.finetune_steps)[0]))(xs, ys, keys)
  fts = [jax.tree.map(lambda x, i=i: x[i], finetuned.params) for i in range(len(tasks))]

  apply = merge.model_apply(graphdef)
  test = [(jnp.asarray(t.x_test), jnp.asarray(t.y_test)) for t in tasks]

  def mean_acc(params, sets):
    return jnp.mean(jnp.stack([(jnp.argmax(apply(params, x), -1) == y).mean() for x, y in sets]))

  val_acc = jax.jit(lambda p: mean_acc(p, val))
  test_acc = jax.jit(lambda p: mean_acc(p, test))
  layers = ["hidden/0/", "hidden/1/", "head/"]
  recipe = jax.jit(merge.task_arithmetic_recipe(base.params, fts, groups=layers))
  n_genes = len(tasks) * len(layers)

  ta_val = [float(val_acc(recipe(jnp.full((n_genes,), lam)))) for lam in config.lambdas]
  best_lam = config.lambdas[int(np.argmax(ta_val))]
  ta_test = float(test_acc(recipe(jnp.full((n_genes,), best_lam))))

  x_best, history = merge.evolve_merge(recipe, lambda p: float(val_acc(p)), np.full(n_genes, best_lam),
                                       sigma0=config.sigma0, popsize=config.popsize,
                                       generations=config.generations, seed=config.seed)
  for h in history[:: max(len(history) // 10, 1)]:
    ctx.log(h["generation"], h)
  evo_test = float(test_acc(recipe(jnp.asarray(x_best, jnp.float32))))
  evo_val = float(val_acc(recipe(jnp.asarray(x_best, jnp.float32))))
  passed = evo_test >= ta_test + config.margin
  return {
      "claim": {"passed": bool(passed), "statement": CLAIM, "evolved_test": evo_test, "task_arithmetic_test": ta_test,
                "margin": config.margin},
      "best_lambda": best_lam, "task_arithmetic_val": max(ta_val), "evolved_val": evo_val,
      "average_test": float(test_acc(jax.tree.map(lambda *x: sum(x) / len(x), *fts))),
      "base_test": float(test_acc(base.params)),
      "coefficients": np.asarray(x_best).reshape(len(tasks), len(layers)).tolist(),
      "seconds": time.time() - t0,
  }
