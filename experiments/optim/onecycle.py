"""1cycle and the LR range test (Smith, 2018, arXiv:1803.09820), catalogue [204].

An LR range test on a digits MLP picks ``lr_max``; SGD with the 1cycle policy (LR and inverse cyclical momentum)
for a quarter of the epochs is then compared with SGD at the best constant LR of a grid for all epochs.

    paperlab run experiments/optim/onecycle.py --config.epochs=80
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, train
from paperlab.models import MLP
from paperlab.optim import lr_range_test, one_cycle, one_cycle_momentum

PAPER_ID = 204
CLAIM = ("SGD with the 1cycle policy (lr_max from the LR range test) for E/4 epochs reaches test accuracy within "
         "0.005 of SGD at the best constant LR of {0.01, 0.03, 0.1, 0.3} for E=40 epochs (mean of 3 seeds), and "
         "the range test's lr_max lies within 3x of 3x the best constant LR.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128,)
  c.batch_size = 64
  c.epochs = 40
  c.momentum = 0.9
  c.constant_lrs = (0.01, 0.03, 0.1, 0.3)
  c.range_test = ml_collections.ConfigDict({"lr_min": 1e-4, "lr_max": 10.0, "num_steps": 200})
  c.one_cycle = ml_collections.ConfigDict({"pct_start": 0.45, "div_factor": 10.0, "final_div_factor": 100.0,
                                           "base_momentum": 0.85, "max_momentum": 0.95})
  return c


def _with_lr(state, lr, momentum=None):
  hp = dict(state.opt_state.hyperparams)
  hp["learning_rate"] = jnp.asarray(lr, jnp.float32)
  if momentum is not None:
    hp["momentum"] = jnp.asarray(momentum, jnp.float32)
  return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  bs = config.batch_size
  steps_per_epoch = ds.x_train.shape[0] // bs
  model_fn = lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs)
  # One optimizer for every arm; LR and momentum are set per step from outside (inject_hyperparams).
  optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=config.momentum)
  graphdef, init = train.make_init(model_fn, optimizer)
  step = train.make_train_step(graphdef, train.classification_loss, optimizer)
  keys = jax.random.split(jax.random.key(0), config.seeds)

  # 1. LR range test, one per seed.
  rt = config.range_test

  @jax.jit
  @jax.vmap
  def range_test(key):
    data_key, rng_key = jax.random.split(key)

    def step_fn(state, lr, t):
      batch = data.batch_at(train_data, t, data_key, bs)
      state, metrics = step(_with_lr(state, lr), batch, jax.random.fold_in(rng_key, t))
      return state, metrics["loss"]

    res = lr_range_test(step_fn, init(key), lr_min=rt.lr_min, lr_max=rt.lr_max, num_steps=rt.num_steps)
    return res.suggested_lr, res.lrs, res.smoothed_losses

  suggested, lrs, smoothed = range_test(keys)
  lr_max = float(np.median(np.asarray(suggested)))
  for i in range(0, rt.num_steps, 10):
    ctx.log(i, {"range_test/lr": lrs[0, i], "range_test/smoothed_loss": smoothed[:, i].mean()})
  ctx.print(f"range test suggests lr_max = {lr_max:.3g} (per seed {np.asarray(suggested).round(3).tolist()})")

  # 2. Constant LRs for E epochs: every (lr, seed) pair in one vmapped program.
  const_steps = config.epochs * steps_per_epoch
  grid = jnp.asarray(config.constant_lrs, jnp.float32)
  lr_trials = jnp.repeat(grid, config.seeds)
  key_trials = jnp.tile(keys, (len(config.constant_lrs), 1)) if keys.ndim == 2 else jnp.tile(keys, len(grid))

  @jax.jit
  @jax.vmap
  def constant_run(key, lr):
    state = _with_lr(init(key), lr)
    state, metrics = train.run_steps(step, state, train_data, key, batch_size=bs, num_steps=const_steps)
    return train.evaluate(graphdef, state, ds.x_test, ds.y_test)["accuracy"], metrics["loss"][-steps_per_epoch:]

  const_acc, const_loss = constant_run(key_trials, lr_trials)
  const_acc = np.asarray(const_acc).reshape(len(config.constant_lrs), config.seeds)
  best = int(np.argmax(const_acc.mean(axis=1)))
  best_lr = float(config.constant_lrs[best])
  for lr, acc in zip(config.constant_lrs, const_acc):
    ctx.log(const_steps, {"constant/lr": lr, "constant/test_accuracy": acc.mean()})

  # 3. 1cycle for E/4 epochs.
  oc = config.one_cycle
  cycle_steps = const_steps // 4
  lr_sched = one_cycle(cycle_steps, lr_max, pct_start=oc.pct_start, div_factor=oc.div_factor,
                       final_div_factor=oc.final_div_factor)
  mom_sched = one_cycle_momentum(cycle_steps, pct_start=oc.pct_start, base_momentum=oc.base_momentum,
                                 max_momentum=oc.max_momentum)

  @jax.jit
  @jax.vmap
  def cycle_run(key):
    data_key, rng_key = jax.random.split(key)

    def body(state, t):
      batch = data.batch_at(train_data, t, data_key, bs)
      state = _with_lr(state, lr_sched(t), mom_sched(t))
      state, metrics = step(state, batch, jax.random.fold_in(rng_key, t))
      return state, metrics["loss"]

    state, losses = jax.lax.scan(body, init(key), jnp.arange(cycle_steps))
    return train.evaluate(graphdef, state, ds.x_test, ds.y_test)["accuracy"], losses

  cycle_acc, cycle_losses = cycle_run(keys)
  cycle_acc = np.asarray(cycle_acc)
  for i in range(0, cycle_steps, steps_per_epoch):
    ctx.log(i, {"one_cycle/lr": lr_sched(i), "one_cycle/train_loss": cycle_losses[:, i].mean()})

  acc_cycle, acc_const = float(cycle_acc.mean()), float(const_acc[best].mean())
  ratio = lr_max / (3.0 * best_lr)
  passed = acc_cycle >= acc_const - 0.005 and 1.0 / 3.0 <= ratio <= 3.0
  ctx.print(f"1cycle ({cycle_steps} steps): {acc_cycle:.4f}; best constant lr={best_lr} ({const_steps} steps): "
            f"{acc_const:.4f}")
  return {
      "range_test": {"suggested_lr_per_seed": np.asarray(suggested).tolist(), "lr_max": lr_max},
      "constant": {"lrs": list(config.constant_lrs), "test_accuracy": const_acc.tolist(), "num_steps": const_steps},
      "one_cycle": {"test_accuracy": cycle_acc.tolist(), "num_steps": cycle_steps},
      "claim": {"passed": bool(passed), "statement": CLAIM, "acc_one_cycle": acc_cycle,
                "acc_best_constant": acc_const, "best_constant_lr": best_lr, "lr_max": lr_max,
                "lr_max_over_3x_best_constant": ratio},
  }
