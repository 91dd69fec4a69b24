"""MKOR vs SGD with momentum on a digits MLP (Mozaffari et al., 2023, arXiv:2306.01685), catalogue [410].

A 64-128-128-10 MLP, minibatches of 256, 300 steps. MKOR needs each dense layer's batch-mean input and output
gradient: the inputs come from the Linear layers' outputs captured with ``nnx.capture`` (the MLP applies its
activation between layers), the output gradients are the bias gradients of the mean loss. Both optimizers take
their best learning rate of the same grid (fewest steps to reach a full-training-set loss of 0.1), and the time per
step of the jitted loops is compared at those learning rates.

    paperlab run experiments/optim/mkor.py --config.num_steps=600

MKOR follows the official code by default (``factor_update="official"``: ``SM(0.95 F⁻¹ + 0.05 I, v)``, resets to
``I`` with per-layer flags; see :func:`paperlab.optim.scale_by_mkor`). Measured (record of 2026-12-04, best LR 0.3
for both, steps to loss 0.1, mean of 3 seeds): MKOR 16.7 vs SGD-M 16.0 (ratio 1.04 > 0.7, not reproduced); time per
step 2.3x SGD-M on a shared 2-core CPU. Side runs: factor updates every step (``--config.mkor.inv_freq=1``) 12.7
vs 16.0 (0.79); the paper's Algorithm 1 (``--config.mkor.factor_update=paper``) 14.3 vs 16.0 (0.90). The previous
implementation (a hybrid of the two) gave 16.0 vs 16.0.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, optim, train
from paperlab.models import ACTIVATIONS, MLP

PAPER_ID = 410
CLAIM = ("On a digits MLP (2 hidden layers of 128, batch 256, 300 steps, 3 seeds, best LR of the same grid for "
         "each), MKOR reaches a full-training-set loss of 0.1 in <= 0.7x the steps of SGD with momentum 0.9, at "
         "<= 3x its wall time per step.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.batch_size = 256
  c.num_steps = 300
  c.momentum = 0.9
  c.learning_rates = (0.03, 0.1, 0.3, 1.0)  # both optimizers diverge at 1.0, so the best is inside the grid
  c.target_loss = 0.1
  # The official code's defaults and factor update (mkor/mkor.py @3a0e3bb); "paper" selects Algorithm 1's EMA form.
  c.mkor = ml_collections.ConfigDict({"gamma": 0.95, "inv_freq": 10, "factor_update": "official"})
  c.claim = ml_collections.ConfigDict({"steps_ratio": 0.7, "time_ratio": 3.0})
  return c


def _run_fn(config, ds, make_optimizer, track_loss=True):
  model_fn = lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs)
  graphdef, init = train.make_init(model_fn, make_optimizer(0.0))
  layers = [f"hidden/{i}" for i in range(len(config.widths))] + ["head"]
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))

  def loss_and_inputs(params, model_state, x, y):
    model = nnx.merge(graphdef, params, model_state)
    logits, inter = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
    inter = nnx.to_pure_dict(inter)
    # Input of each dense layer: x, then the activation of the previous Linear's output.
    outputs = [inter["hidden"][i]["__call__"][0] for i in range(len(config.widths))]
    inputs = [x] + [ACTIVATIONS[model.act_name](z) for z in outputs]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, [a.mean(0) for a in inputs]

  def full_loss(params, model_state):
    model = nnx.merge(graphdef, params, model_state)
    return optax.softmax_cross_entropy_with_integer_labels(model(train_data[0]), train_data[1]).mean()

  @jax.jit
  @jax.vmap
  def run(key, lr):
    optimizer = make_optimizer(lr)
    state = init(key)
    opt_state = optimizer.init(state.params)
    data_key = jax.random.fold_in(key, 1)

    def body(carry, t):
      params, opt_state = carry
      x, y = data.batch_at(train_data, t, data_key, config.batch_size)
      grads, a_means = jax.grad(loss_and_inputs, has_aux=True)(params, state.model_state, x, y)
      bias_grads = [grads["hidden"][i]["bias"] for i in range(len(config.widths))] + [grads["head"]["bias"]]
      stats = {p: (a, g) for p, a, g in zip(layers, a_means, bias_grads)}
      updates, opt_state = optimizer.update(grads, opt_state, params, layer_stats=stats)
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (full_loss(params, state.model_state) if track_loss else None)

    (params, _), losses = jax.lax.scan(body, (state.params, opt_state), jnp.arange(config.num_steps))
    return losses if track_loss else params

  return run


def _steps_to_target(losses, target):
  """First step (1-based) whose full-training loss is <= target; ``inf`` if never."""
  hit = np.asarray(losses) <= target
  return np.where(hit.any(-1), hit.argmax(-1) + 1.0, np.inf)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  keys = jax.random.split(jax.random.key(0), config.seeds)
  n_lr = len(config.learning_rates)
  key_trials = jnp.tile(keys, (n_lr, 1)) if keys.ndim == 2 else jnp.tile(keys, n_lr)
  lr_trials = jnp.repeat(jnp.asarray(config.learning_rates, jnp.float32), config.seeds)
  m = config.mkor
  makers = {
      # SGD-M ignores layer_stats (optax.chain hands extra arguments only to transforms that take them).
      "sgd_momentum": lambda lr: optax.chain(optax.sgd(lr, momentum=config.momentum)),
      "mkor": lambda lr: optim.mkor(lr, momentum=config.momentum, gamma=m.gamma, inv_freq=m.inv_freq,
                                    factor_update=m.factor_update),
  }
  results = {}
  for name, make in makers.items():
    run_fn = _run_fn(config, ds, make)
    losses = np.asarray(run_fn(key_trials, lr_trials)).reshape(n_lr, config.seeds, config.num_steps)
    steps = _steps_to_target(losses, config.target_loss).mean(-1)
    best = int(np.argmin(np.where(np.isfinite(steps), steps, np.inf)) if np.isfinite(steps).any()
               else np.argmin(losses[:, :, -1].mean(-1)))
    # Time per step at the chosen LR, training only (no full-loss tracking), timed after a warm-up call.
    timed_fn = _run_fn(config, ds, make, track_loss=False)
    best_lrs = jnp.full((config.seeds,), config.learning_rates[best], jnp.float32)
    jax.block_until_ready(timed_fn(keys, best_lrs))
    t0 = time.perf_counter()
    jax.block_until_ready(timed_fn(keys, best_lrs))
    per_step = (time.perf_counter() - t0) / config.num_steps
    curve = losses[best].mean(0)
    for s in range(0, config.num_steps, 25):
      ctx.log(s, {f"{name}/train_loss": float(curve[s])})
    results[name] = {"steps_to_target": steps.tolist(), "best_lr": float(config.learning_rates[best]),
                     "best_steps": float(steps[best]), "final_loss": losses[:, :, -1].mean(-1).tolist(),
                     "seconds_per_step": per_step}
    ctx.print(name, results[name])

  steps_ratio = results["mkor"]["best_steps"] / results["sgd_momentum"]["best_steps"]
  time_ratio = results["mkor"]["seconds_per_step"] / results["sgd_momentum"]["seconds_per_step"]
  passed = steps_ratio <= config.claim.steps_ratio and time_ratio <= config.claim.time_ratio
  return {"arms": results,
          "claim": {"passed": bool(passed), "statement": CLAIM, "steps_mkor": results["mkor"]["best_steps"],
                    "steps_sgd_momentum": results["sgd_momentum"]["best_steps"], "steps_ratio": steps_ratio,
                    "time_per_step_ratio": time_ratio}}
