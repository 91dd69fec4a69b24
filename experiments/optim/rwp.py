"""Robust Weight Perturbation vs AWP vs plain adversarial training (Yu et al., 2022, arXiv:2205.14826), catalogue
[128].

PGD adversarial training (l_inf, epsilon = 0.1 on [0, 1] pixels, 10 steps) of a digits MLP in three arms that share
seeds, batches, SGD with momentum and weight decay and the step schedule (LR / 10 at 50% and 75% of training):
plain AT, AT-AWP (``paperlab.optim.awp``, gamma = 1e-2, one ascent step) and AT-RWP (``paperlab.optim.rwp``,
gamma = 1e-2, K2 = 10 ascent steps that use only the adversarial examples whose loss at ``w + v`` is below
``c_min``, the loss stationary condition). The per-example losses reach ``rwp`` through
``make_train_step(..., example_loss_fn=...)``. The claim compares the robust generalization gap (PGD-20 robust
accuracy on the training set minus on the test set) and the clean test accuracy.

    paperlab run experiments/optim/rwp.py --config.epochs=200
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, optim, train
from paperlab.models import MLP

PAPER_ID = 128
CLAIM = ("On digits (PGD-10 adversarial training, l_inf eps=0.1 on [0,1] pixels, 80 epochs, 3 seeds), AT-RWP (gamma=1e-2, "
         "c_min=1.7, K2=10) shrinks the robust generalization gap (PGD-20 robust train acc - robust test acc) by "
         ">= 0.02 vs plain AT, with clean test accuracy >= AT-AWP's - 0.01.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.batch_size = 128
  c.epochs = 80
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.epsilon = 0.1
  c.pgd_steps = 10
  c.eval_pgd_steps = 20
  c.gamma = 1e-2
  c.c_min = 1.7
  c.rwp_steps = 10
  c.num_train_eval = 1347  # training examples the robust train accuracy is measured on (all of them)
  c.claim = ml_collections.ConfigDict({"gap_margin": 0.02, "clean_acc_margin": 0.01})
  return c


# The network sees pixels standardized by one global mean and scale of the training set (a fixed input layer);
# the attack works on [0, 1] pixels.
_PIXEL_MEAN, _PIXEL_STD = 0.305, 0.377


def _logits(model, x):
  return model((x - _PIXEL_MEAN) / _PIXEL_STD)


def _example_loss_fn(model, batch, rng):
  del rng
  return optax.softmax_cross_entropy_with_integer_labels(_logits(model, batch[0]), batch[1])


def _loss_fn(model, batch, rng):
  return _example_loss_fn(model, batch, rng).mean(), {}


def _attack(model, x, y, key, config, num_steps):
  loss = lambda xa: optax.softmax_cross_entropy_with_integer_labels(_logits(model, xa), y).sum()
  return optim.pgd_linf(loss, x, epsilon=config.epsilon, step_size=config.epsilon / 4, num_steps=num_steps, key=key)


def _robust_acc(model, x, y, key, config):
  x_adv = _attack(model, x, y, key, config, config.eval_pgd_steps)
  return jnp.mean(jnp.argmax(_logits(model, x_adv), -1) == y)


def _train_and_measure(config, ds, optimizer, keys):
  model_fn = lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs)
  graphdef, init = train.make_init(model_fn, optimizer)
  step = train.make_train_step(graphdef, _loss_fn, optimizer, example_loss_fn=_example_loss_fn)
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  num_steps = config.epochs * (ds.x_train.shape[0] // config.batch_size)

  @jax.jit
  @jax.vmap
  def trial(key):
    data_key, pgd_key, rng_key, eval_key = jax.random.split(key, 4)
    state, (losses, excluded) = train.run_adversarial_steps(
        graphdef, step, init(key), train_data, (data_key, pgd_key, rng_key), batch_size=config.batch_size,
        num_steps=num_steps, attack=lambda model, x, y, k: _attack(model, x, y, k, config, config.pgd_steps),
        # share of the adversarial batch that fails the loss stationary condition at w (RWP leaves it out)
        aux_fn=lambda model, x_adv, y: jnp.mean(_example_loss_fn(model, (x_adv, y), None) >= config.c_min))
    model = nnx.merge(graphdef, state.params, state.model_state)
    k_test, k_train = jax.random.split(eval_key)
    x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    x_tr, y_tr = train_data[0][:config.num_train_eval], train_data[1][:config.num_train_eval]
    return {"clean_test_acc": jnp.mean(jnp.argmax(_logits(model, x_te), -1) == y_te),
            "robust_test_acc": _robust_acc(model, x_te, y_te, k_test, config),
            "robust_train_acc": _robust_acc(model, x_tr, y_tr, k_train, config),
            "lsc_excluded_fraction": excluded.mean(), "train_losses": losses}

  return trial(keys)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits(standardize=False)  # pixels in [0, 1]
  steps_per_epoch = ds.x_train.shape[0] // config.batch_size
  num_steps = config.epochs * steps_per_epoch
  schedule = optax.piecewise_constant_schedule(
      config.learning_rate, {int(0.5 * num_steps): 0.1, int(0.75 * num_steps): 0.1})

  def base():
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=config.momentum))

  keys = jax.random.split(jax.random.key(0), config.seeds)
  arms = {"at": optax.with_extra_args_support(base()), "awp": optim.awp(base(), gamma=config.gamma),
          "rwp": optim.rwp(base(), gamma=config.gamma, c_min=config.c_min, steps=config.rwp_steps)}
  results = {}
  for name, optimizer in arms.items():
    out = jax.device_get(_train_and_measure(config, ds, optimizer, keys))
    ctx.log_curve(f"{name}/adv_train_loss", np.asarray(out.pop("train_losses")).mean(0), every=steps_per_epoch * 5)
    out["robust_gap"] = np.asarray(out["robust_train_acc"]) - np.asarray(out["robust_test_acc"])
    results[name] = {k: np.asarray(v).tolist() for k, v in out.items()}
    ctx.print(name, {k: round(float(np.mean(v)), 4) for k, v in results[name].items()})

  mean = lambda arm, k: float(np.mean(results[arm][k]))
  gap = {arm: mean(arm, "robust_gap") for arm in arms}
  clean = {arm: mean(arm, "clean_test_acc") for arm in arms}
  passed = (gap["rwp"] <= gap["at"] - config.claim.gap_margin
            and clean["rwp"] >= clean["awp"] - config.claim.clean_acc_margin)
  return {
      "arms": results,
      "claim": {"passed": bool(passed), "statement": CLAIM,
                "robust_gap_at": gap["at"], "robust_gap_awp": gap["awp"], "robust_gap_rwp": gap["rwp"],
                "clean_test_acc_at": clean["at"], "clean_test_acc_awp": clean["awp"],
                "clean_test_acc_rwp": clean["rwp"],
                "robust_test_acc_at": mean("at", "robust_test_acc"),
                "robust_test_acc_awp": mean("awp", "robust_test_acc"),
                "robust_test_acc_rwp": mean("rwp", "robust_test_acc"),
                "lsc_excluded_fraction_rwp": mean("rwp", "lsc_excluded_fraction")},
  }
