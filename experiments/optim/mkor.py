"""MKOR vs SGD with momentum on a digits MLP (Mozaffari et al., 2023, arXiv:2306.01685), catalogue [410].

A 64-128-128-10 MLP, minibatches of 256, 300 steps. MKOR needs each dense layer's batch-mean input and output
gradient: the inputs come from the Linear layers' outputs captured with ``nnx.capture`` (the MLP applies its
activation between layers), the output gradients are the bias gradients of the mean loss. The catalogue's setting,
through the shared protocol (:mod:`paperlab.runner.protocol`): both optimizers get the same LR grid, each picks the
LR with the fewest steps to a full-training-set loss of 0.1 on selection seeds (100-102), and the claim is measured
once per arm at that LR on fresh seeds (0-2), the time per step of the jitted loops included. The claim is about
optimisation speed on the training set, so there is no held-out split: separate seeds play the validation role.
Control: SGD-M passed as the method must fail the claim.

    paperlab run experiments/optim/mkor.py --config.num_steps=600

MKOR follows the official code by default (``factor_update="official"``: ``SM(0.95 F⁻¹ + 0.05 I, v)``, resets to
``I`` with per-layer flags; see :func:`paperlab.optim.scale_by_mkor`). Measured (protocol record: LR 0.3 chosen
for both, selection-seed steps MKOR 43.3/21.3/14.0/diverged vs SGD-M 48.3/22.0/14.3/diverged over lr
0.03/0.1/0.3/1.0): steps to loss 0.1 on seeds 0-2 MKOR 15.7 +- 2.4 (19/14/14) vs SGD-M 15.0 +- 0.8 (15/14/16), ratio
1.04 > 0.7, not reproduced; time per step 1.32x SGD-M on a shared 2-core CPU (holds). Side runs of the previous
record (seeds of one split key, selection on the same seeds): 16.7 vs 16.0; factor updates every step
(``--config.mkor.inv_freq=1``) 12.7 vs 16.0 (0.79); the paper's Algorithm 1 (``--config.mkor.factor_update=paper``)
14.3 vs 16.0 (0.90).

CI scale (CI_CONFIG): 60 steps, XLA's fast CPU compile; at it: LR 0.3 chosen for both, steps to loss 0.1 MKOR 15.7 vs
SGD-M 15.0 (ratio 1.04, seeds 0-2; not reproduced, the same numbers as the record; time per step 0.97x SGD-M), 43
CPU-s on a loaded 2-core machine (49 before the fast compile).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, optim, papers, train
from paperlab.models import ACTIVATIONS, MLP
from paperlab.runner import protocol
from paperlab.runner.lr_transfer import fast_compile_options

PAPER_ID = 410
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
# 60 steps: every arm reaches loss 0.1 well before step 60 (the slowest in ~48)
CI_CONFIG = {"num_steps": 60, "fast_compile": True}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.batch_size = 256
  c.num_steps = 300
  c.momentum = 0.9
  c.learning_rates = (0.03, 0.1, 0.3, 1.0)  # both optimizers diverge at 1.0, so the best is inside the grid
  c.target_loss = 0.1
  c.selection_seed_offset = 100  # the LR is picked on seeds 100.. and the claim measured on seeds 0..
  # The official code's defaults and factor update (mkor/mkor.py @3a0e3bb); "paper" selects Algorithm 1's EMA form.
  c.mkor = ml_collections.ConfigDict({"gamma": 0.95, "inv_freq": 10, "factor_update": "official"})
  c.claim = ml_collections.ConfigDict({"steps_ratio": 0.7, "time_ratio": 3.0})
  c.fast_compile = False  # True: XLA's cheaper CPU compile (paperlab.runner.trainer.FAST_COMPILE_CPU), CI scale only
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

  @functools.partial(jax.jit, compiler_options=fast_compile_options() if config.fast_compile else None)
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
  seeds = np.arange(config.seeds)
  m = config.mkor
  makers = {
      # SGD-M ignores layer_stats (optax.chain hands extra arguments only to transforms that take them).
      "sgd_momentum": lambda lr: optax.chain(optax.sgd(lr, momentum=config.momentum)),
      "mkor": lambda lr: optim.mkor(lr, momentum=config.momentum, gamma=m.gamma, inv_freq=m.inv_freq,
                                    factor_update=m.factor_update),
  }
  run_fns = {name: _run_fn(config, ds, make) for name, make in makers.items()}
  timed_fns = {name: _run_fn(config, ds, make, track_loss=False) for name, make in makers.items()}
  keys_of = lambda s: jax.vmap(jax.random.key)(jnp.asarray(s))

  def losses_at(name, lr, s):
    return np.asarray(run_fns[name](keys_of(s), jnp.full((len(s),), lr, jnp.float32)))

  def fit(arm, hparams, _):
    # The LR is selected on separate selection seeds; the claim is measured once, on fresh seeds, in `test`.
    losses = losses_at(arm.name, hparams["lr"], seeds + config.selection_seed_offset)
    return {"arm": arm.name, "lr": hparams["lr"], "losses": losses}

  def selection_score(trained):
    # Steps to the target (inf if never) on the selection seeds, the final loss breaking ties between misses.
    steps = _steps_to_target(trained["losses"], config.target_loss)
    return np.where(np.isfinite(steps), steps, config.num_steps + 1 + trained["losses"][:, -1])

  def test(trained):
    name, lr = trained["arm"], trained["lr"]
    losses = losses_at(name, lr, seeds)
    # Time per step at the chosen LR, training only (no full-loss tracking), timed after a warm-up call.
    lrs = jnp.full((config.seeds,), lr, jnp.float32)
    jax.block_until_ready(timed_fns[name](keys_of(seeds), lrs))
    t0 = time.perf_counter()
    jax.block_until_ready(timed_fns[name](keys_of(seeds), lrs))
    per_step = (time.perf_counter() - t0) / config.num_steps
    curve = losses.mean(0)
    for s in range(0, config.num_steps, 25):
      ctx.log(s, {f"{name}/train_loss": float(curve[s])})
    return {"steps_to_target": _steps_to_target(losses, config.target_loss), "final_loss": losses[:, -1],
            "seconds_per_step": np.full(config.seeds, per_step)}

  arms = [protocol.Arm(name, [{"lr": lr} for lr in config.learning_rates]) for name in ("sgd_momentum", "mkor")]
  comparison = protocol.compare(arms, seeds, fit, validate=selection_score, test=test, maximize=False)
  c = config.claim
  verdict = comparison.judge(
      lambda a, b: a["steps_to_target"] <= c.steps_ratio * b["steps_to_target"]
      and a["seconds_per_step"] <= c.time_ratio * b["seconds_per_step"], method="mkor", baseline="sgd_momentum")
  mk, sg = comparison["mkor"], comparison["sgd_momentum"]
  for name in ("sgd_momentum", "mkor"):
    ctx.print(name, comparison[name].chosen, comparison[name].means())
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "best_lr_mkor": mk.chosen["lr"],
                      "best_lr_sgd_momentum": sg.chosen["lr"], "steps_mkor": mk.mean("steps_to_target"),
                      "steps_sgd_momentum": sg.mean("steps_to_target"),
                      "steps_ratio": mk.mean("steps_to_target") / sg.mean("steps_to_target"),
                      "time_per_step_ratio": mk.mean("seconds_per_step") / sg.mean("seconds_per_step")}
  return results
