"""Adversarial Weight Perturbation vs plain adversarial training (Wu et al., 2020, arXiv:2004.05884), catalogue [69].

PGD adversarial training (l_inf, epsilon = 0.1 on [0, 1] pixels, 10 steps) of a digits MLP, with and without AWP's
layer-wise weight perturbation (``paperlab.optim.awp``, gamma = 1e-2, one step). Both arms share seeds, batches,
SGD with momentum and weight decay, and the paper's step schedule (LR / 10 at 50% and 75% of training). The claim
compares the flatness of the adversarial weight-loss landscape (the loss increase under random layer-wise weight
perturbations of relative norm 0.05, adversarial examples regenerated for each perturbed model) and the robust
test accuracy under PGD-20.

    paperlab run experiments/optim/awp.py --config.epochs=100
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

PAPER_ID = 69
CLAIM = ("On digits (PGD-10 adversarial training, l_inf eps=0.1 on [0,1] pixels, 60 epochs, 3 seeds), AT-AWP "
         "(gamma=1e-2) has a flatter adversarial weight-loss landscape than plain AT (loss increase under random "
         "layer-wise perturbations of relative norm 0.05 <= 0.7x AT's) and robust test accuracy (PGD-20) >= AT's "
         "- 0.01.")


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
  return c


# The network sees pixels standardized by one global mean and scale of the training set (a fixed input layer, as
# CIFAR models normalize inside the model); the attack works on [0, 1] pixels.
_PIXEL_MEAN, _PIXEL_STD = 0.305, 0.377


def _logits(model, x):
  return model((x - _PIXEL_MEAN) / _PIXEL_STD)


def _loss_fn(model, batch, rng):
  del rng
  logits = _logits(model, batch[0])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean(), {}


def _ce_sum(model, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(_logits(model, x), y).sum()


def _attack(model, x, y, key, config, num_steps):
  return optim.pgd_linf(lambda xa: _ce_sum(model, xa, y), x, epsilon=config.epsilon,
                        step_size=config.epsilon / 4, num_steps=num_steps, key=key)


def _robust(model, x, y, key, config, num_steps):
  """(mean adversarial loss, adversarial accuracy) under PGD with ``num_steps`` steps."""
  x_adv = _attack(model, x, y, key, config, num_steps)
  logits = _logits(model, x_adv)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


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


def _train_and_measure(config, ds, optimizer, keys):
  model_fn = lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs)
  graphdef, init = train.make_init(model_fn, optimizer)
  step = train.make_train_step(graphdef, _loss_fn, optimizer)
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  steps_per_epoch = ds.x_train.shape[0] // config.batch_size
  num_steps = config.epochs * steps_per_epoch
  fl = config.flatness

  @jax.jit
  @jax.vmap
  def trial(key):
    data_key, pgd_key, rng_key, eval_key = jax.random.split(key, 4)
    state, (losses, _) = train.run_adversarial_steps(
        graphdef, step, init(key), train_data, (data_key, pgd_key, rng_key), batch_size=config.batch_size,
        num_steps=num_steps, attack=lambda model, x, y, k: _attack(model, x, y, k, config, config.pgd_steps))
    model_at = lambda params: nnx.merge(graphdef, params, state.model_state)
    model = model_at(state.params)
    k_test, k_train, k_flat = jax.random.split(eval_key, 3)
    x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
    x_tr, y_tr = train_data[0][:fl.num_examples], train_data[1][:fl.num_examples]
    clean_acc = jnp.mean(jnp.argmax(_logits(model, x_te), -1) == y_te)
    _, robust_test = _robust(model, x_te, y_te, k_test, config, config.eval_pgd_steps)
    loss_train, robust_train = _robust(model, x_tr, y_tr, k_train, config, config.eval_pgd_steps)

    def perturbed_loss(k):
      # The attack's random start is shared with the unperturbed evaluation (common random numbers), so the
      # difference measures the weight perturbation only.
      params = _random_layerwise(k, state.params, fl.radius)
      return _robust(model_at(params), x_tr, y_tr, k_train, config, config.eval_pgd_steps)[0]

    perturbed = jax.lax.map(perturbed_loss, jax.random.split(k_flat, fl.directions))
    return {"clean_test_acc": clean_acc, "robust_test_acc": robust_test, "robust_train_acc": robust_train,
            "adv_train_loss": loss_train, "flatness": perturbed.mean() - loss_train, "train_losses": losses}

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
  arms = {"at": base(), "awp": optim.awp(base(), gamma=config.gamma)}
  results = {}
  for name, optimizer in arms.items():
    out = jax.device_get(_train_and_measure(config, ds, optimizer, keys))
    ctx.log_curve(f"{name}/adv_train_loss", np.asarray(out.pop("train_losses")).mean(0), every=steps_per_epoch * 5)
    results[name] = {k: np.asarray(v).tolist() for k, v in out.items()}
    ctx.print(name, {k: round(float(np.mean(v)), 4) for k, v in results[name].items()})

  mean = lambda arm, k: float(np.mean(results[arm][k]))
  flat_at, flat_awp = mean("at", "flatness"), mean("awp", "flatness")
  rob_at, rob_awp = mean("at", "robust_test_acc"), mean("awp", "robust_test_acc")
  flat_ratio = flat_awp / flat_at
  passed = (flat_ratio <= config.claim.flatness_ratio and rob_awp >= rob_at - config.claim.robust_acc_margin)
  return {
      "arms": results,
      "claim": {"passed": bool(passed), "statement": CLAIM, "flatness_at": flat_at, "flatness_awp": flat_awp,
                "flatness_ratio": flat_ratio, "robust_test_acc_at": rob_at, "robust_test_acc_awp": rob_awp,
                "robust_gap_at": mean("at", "robust_train_acc") - rob_at,
                "robust_gap_awp": mean("awp", "robust_train_acc") - rob_awp},
  }
