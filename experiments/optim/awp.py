"""Adversarial Weight Perturbation vs plain adversarial training (Wu et al., 2020, arXiv:2004.05884), catalogue [69].

The catalogue's setting: PGD adversarial training (l_inf, epsilon = 0.1 on [0, 1] pixels, 10 steps) of a digits
MLP, 60 epochs, with and without AWP's layer-wise weight perturbation (``paperlab.optim.awp``, gamma = 1e-2, one
step). Both arms share seeds (0-2), batches, SGD with momentum and weight decay and the paper's step schedule (LR /
10 at 50% and 75% of training), one fixed point each (the catalogue tunes neither: the same budget), compared
through :mod:`paperlab.runner.protocol` (test split read once per arm; seed means with their spread). The claim
compares the flatness of the adversarial weight-loss landscape (the loss increase under random layer-wise weight
perturbations of relative norm 0.05, adversarial examples regenerated for each perturbed model) and the robust
test accuracy under PGD-20. Control: AT in AWP's place must fail (its flatness is not <= 0.7x itself).

This module also holds the adversarial-training setup that ``experiments/optim/rwp.py`` reuses (model, attack,
base optimizer and schedule, the vmapped train-and-measure program).

Measured (seeds 0-2): flatness AT 0.0055 +- 0.0012 (per seed 0.0071/0.0050/0.0043), AWP 0.0037 +- 0.0008
(0.0047/0.0038/0.0028), ratio 0.68 <= 0.7 (per seed 0.66/0.76/0.65: one seed alone would fail); robust test accuracy
(PGD-20) AWP 0.8407 +- 0.0010 vs AT 0.8452 +- 0.0086 (>= AT - 0.01); clean test accuracy 0.980 vs 0.985:
reproduced, with little margin on the flatness ratio (the previous record, before the seeds were keyed by the
protocol and the grad_fn contract change in paperlab.optim, measured 0.64).

    paperlab run experiments/optim/awp.py --config.epochs=100

Re-run on the CI machine of 2026-12-05 (the record, experiments/records/69.json): flatness AWP 0.00380 vs AT
0.00513 (ratio 0.74 > 0.7), PGD-20 robust acc 0.8444 vs 0.8511: not reproduced there; the numbers above are from
another machine (the same code gives other float results on another CPU).

CI scale (CI_CONFIG): 15 epochs, PGD-10 evaluation, flatness over 4 directions on 256 training examples, XLA's fast
CPU compile; at it: flatness AWP 0.00440 vs AT 0.00662 (ratio 0.67 <= 0.7 holds) but PGD-10 robust test accuracy AWP
0.7711 vs AT 0.7919 (below AT - 0.01): not reproduced, as the record (there for the flatness ratio), seeds 0-2; 36
CPU-s on a heavily loaded 2-core machine (67 at the full config).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, optim, papers, train
from paperlab.models import MLP
from paperlab.runner import protocol
from paperlab.runner.lr_transfer import fast_compile_options

PAPER_ID = 69
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"epochs": 15, "eval_pgd_steps": 10, "flatness.directions": 4, "flatness.num_examples": 256,
             "fast_compile": True}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.batch_size = 128
  c.epochs = 60
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.epsilon = 0.1
  c.pgd_steps = 10
  c.eval_pgd_steps = 20
  c.gamma = 1e-2
  c.flatness = ml_collections.ConfigDict({"radius": 0.05, "directions": 8, "num_examples": 512})
  c.claim = ml_collections.ConfigDict({"flatness_ratio": 0.7, "robust_acc_margin": 0.01})
  c.fast_compile = False  # True: XLA's cheaper CPU compile (paperlab.runner.trainer.FAST_COMPILE_CPU), CI scale only
  return c


# ------------------------------------------------------------------ the adversarial-training setup (shared with RWP)

# The network sees pixels standardized by one global mean and scale of the training set (a fixed input layer, as
# CIFAR models normalize inside the model); the attack works on [0, 1] pixels.
_PIXEL_MEAN, _PIXEL_STD = 0.305, 0.377


def logits_of(model, x):
  return model((x - _PIXEL_MEAN) / _PIXEL_STD)


def example_loss_fn(model, batch, rng):
  del rng
  return optax.softmax_cross_entropy_with_integer_labels(logits_of(model, batch[0]), batch[1])


def loss_fn(model, batch, rng):
  return example_loss_fn(model, batch, rng).mean(), {}


def attack(model, x, y, key, config, num_steps):
  """PGD (l_inf, step epsilon / 4, random start) on the summed cross-entropy."""
  loss = lambda xa: optax.softmax_cross_entropy_with_integer_labels(logits_of(model, xa), y).sum()
  return optim.pgd_linf(loss, x, epsilon=config.epsilon, step_size=config.epsilon / 4, num_steps=num_steps, key=key)


def robust(model, x, y, key, config, num_steps=None):
  """(mean adversarial loss, adversarial accuracy) under PGD with ``num_steps`` (default: the evaluation's) steps."""
  x_adv = attack(model, x, y, key, config, config.eval_pgd_steps if num_steps is None else num_steps)
  logits = logits_of(model, x_adv)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), jnp.mean(jnp.argmax(logits, -1) == y)


def digits_01():
  return data.digits(standardize=False)  # pixels in [0, 1]


def base_optimizer(config, num_steps: int) -> optax.GradientTransformation:
  """SGD with momentum and weight decay, LR / 10 at 50% and 75% of training (the paper's schedule)."""
  schedule = optax.piecewise_constant_schedule(
      config.learning_rate, {int(0.5 * num_steps): 0.1, int(0.75 * num_steps): 0.1})
  return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.sgd(schedule, momentum=config.momentum))


def num_steps_of(config, ds) -> int:
  return config.epochs * (ds.x_train.shape[0] // config.batch_size)


def train_and_measure(config, ds, optimizer, seeds, measure: Callable, aux_fn: Callable | None = None) -> dict:
  """Adversarially train one MLP per seed (one vmapped program) and return ``measure(model_at, params, key)``'s
  dict per seed plus ``train_losses`` (and ``aux`` when ``aux_fn`` is given, see
  :func:`paperlab.train.run_adversarial_steps`). ``model_at(params)`` builds the model at other weights."""
  model_fn = lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs)
  graphdef, init = train.make_init(model_fn, optimizer)
  step = train.make_train_step(graphdef, loss_fn, optimizer, example_loss_fn=example_loss_fn)
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))

  @functools.partial(jax.jit, compiler_options=fast_compile_options() if config.get("fast_compile") else None)
  @jax.vmap
  def trial(key):
    data_key, pgd_key, rng_key, eval_key = jax.random.split(key, 4)
    state, (losses, aux) = train.run_adversarial_steps(
        graphdef, step, init(key), train_data, (data_key, pgd_key, rng_key), batch_size=config.batch_size,
        num_steps=num_steps_of(config, ds), aux_fn=aux_fn,
        attack=lambda model, x, y, k: attack(model, x, y, k, config, config.pgd_steps))
    model_at = lambda params: nnx.merge(graphdef, params, state.model_state)
    out = measure(model_at, state.params, eval_key)
    return {**out, "train_losses": losses, **({} if aux_fn is None else {"aux": aux})}

  return jax.device_get(trial(jax.vmap(jax.random.key)(jnp.asarray(seeds))))


def compare_arms(config, ds, optimizers: dict, measure: Callable, ctx, aux_fn: Callable | None = None,
                 aux_name: str = "aux"):
  """The protocol over adversarial-training arms, each one fixed point; per-step losses go to the log, the
  per-step ``aux_fn`` values are averaged over training into the metric ``aux_name``."""
  steps_per_epoch = ds.x_train.shape[0] // config.batch_size

  def fit(arm, hparams, seeds):
    out = train_and_measure(config, ds, optimizers[arm.name], seeds, measure, aux_fn)
    ctx.log_curve(f"{arm.name}/adv_train_loss", np.asarray(out.pop("train_losses")).mean(0),
                  every=steps_per_epoch * 5)
    if "aux" in out:
      out[aux_name] = np.asarray(out.pop("aux")).mean(-1)
    out = {k: np.asarray(v) for k, v in out.items()}
    ctx.print(arm.name, {k: round(float(np.mean(v)), 4) for k, v in out.items()})
    return out

  return protocol.compare([protocol.Arm(name) for name in optimizers], range(config.seeds), fit,
                          validate=lambda out: np.zeros(config.seeds),  # one fixed point per arm: nothing to pick
                          test=lambda out: out)


# ------------------------------------------------------------------------------------------------------ the claim


def _random_layerwise(key, params, radius):
  """Random Gaussian direction per weight matrix, scaled to ``radius * ||w_l||``; biases untouched."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  out = []
  for k, w in zip(keys, leaves):
    if w.ndim > 1:
      d = jax.random.normal(k, w.shape, w.dtype)
      out.append(w + radius * jnp.linalg.norm(w) * d / jnp.linalg.norm(d))
    else:
      out.append(w)
  return jax.tree.unflatten(treedef, out)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = digits_01()
  fl = config.flatness
  x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  x_tr, y_tr = jnp.asarray(ds.x_train[:fl.num_examples]), jnp.asarray(ds.y_train[:fl.num_examples])

  def measure(model_at, params, key):
    model = model_at(params)
    k_test, k_train, k_flat = jax.random.split(key, 3)
    _, robust_test = robust(model, x_te, y_te, k_test, config)
    loss_train, robust_train = robust(model, x_tr, y_tr, k_train, config)

    def perturbed_loss(k):
      # The attack's random start is shared with the unperturbed evaluation (common random numbers), so the
      # difference measures the weight perturbation only.
      return robust(model_at(_random_layerwise(k, params, fl.radius)), x_tr, y_tr, k_train, config)[0]

    perturbed = jax.lax.map(perturbed_loss, jax.random.split(k_flat, fl.directions))
    return {"clean_test_acc": jnp.mean(jnp.argmax(logits_of(model, x_te), -1) == y_te),
            "robust_test_acc": robust_test, "robust_train_acc": robust_train, "adv_train_loss": loss_train,
            "flatness": perturbed.mean() - loss_train}

  num_steps = num_steps_of(config, ds)
  optimizers = {"at": base_optimizer(config, num_steps), "awp": optim.awp(base_optimizer(config, num_steps),
                                                                          gamma=config.gamma)}
  comparison = compare_arms(config, ds, optimizers, measure, ctx)
  cl = config.claim
  verdict = comparison.judge(
      lambda m, b: (m["flatness"] <= cl.flatness_ratio * b["flatness"]
                    and m["robust_test_acc"] >= b["robust_test_acc"] - cl.robust_acc_margin),
      method="awp", baseline="at")
  mean = lambda arm, k: comparison[arm].mean(k)
  flat_at, flat_awp = mean("at", "flatness"), mean("awp", "flatness")
  return {
      "arms": {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
      "claim": {**verdict, "statement": CLAIM, "flatness_at": flat_at, "flatness_awp": flat_awp,
                "flatness_ratio": flat_awp / flat_at, "robust_test_acc_at": mean("at", "robust_test_acc"),
                "robust_test_acc_awp": mean("awp", "robust_test_acc"),
                "robust_gap_at": mean("at", "robust_train_acc") - mean("at", "robust_test_acc"),
                "robust_gap_awp": mean("awp", "robust_train_acc") - mean("awp", "robust_test_acc")},
  }
