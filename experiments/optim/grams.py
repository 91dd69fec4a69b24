"""Grams vs Adam on a digits MLP (Cao et al., 2024, arXiv:2412.17107), catalogue [254].

Same MLP, seeds, batches and learning rate for both; Grams takes Adam's update magnitude with the current
gradient's sign. The claim also checks that the sign flip is not vacuous: at the end of training a sizeable
fraction of coordinates has a momentum sign that disagrees with the minibatch gradient.

    paperlab run experiments/optim/grams.py --config.num_steps=2000
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

PAPER_ID = 254
CLAIM = ("On a digits MLP (3 seeds, 400 steps, lr 1e-3, batch 32) Grams reaches a mean final training loss no "
         "higher than Adam's, while >= 10% of coordinates have sign(momentum) != sign(gradient) at the end.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (64, 64)
  c.num_steps = 400
  c.batch_size = 32
  c.learning_rate = 1e-3
  c.scale = 1  # multiplies num_steps
  return c


def _train(ds, config, optimizer):
  graphdef, init = train.make_init(lambda rngs: MLP(64, tuple(config.widths), 10, rngs=rngs), optimizer)
  step = train.make_train_step(graphdef, train.classification_loss, optimizer)
  train_data = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  num_steps = config.num_steps * config.scale

  @jax.jit
  @jax.vmap
  def trial(key):
    state = init(key)
    state, metrics = train.run_steps(step, state, train_data, key, batch_size=config.batch_size,
                                     num_steps=num_steps)
    final = train.evaluate(graphdef, state, ds.x_train, ds.y_train)["loss"]
    test = train.evaluate(graphdef, state, ds.x_test, ds.y_test)["accuracy"]
    # Sign disagreement between the first moment and a fresh minibatch gradient at the final weights.
    batch = (train_data[0][:config.batch_size], train_data[1][:config.batch_size])
    grads = jax.grad(lambda p: train.classification_loss(nnx.merge(graphdef, p, state.model_state), batch, key)[0])(
        state.params)
    mu = state.opt_state[0].adam.mu
    disagree = sum(jnp.sum(jnp.sign(m) != jnp.sign(g)) for m, g in zip(jax.tree.leaves(mu), jax.tree.leaves(grads)))
    total = sum(g.size for g in jax.tree.leaves(grads))
    return final, test, disagree / total, metrics["loss"]

  return trial(jax.random.split(jax.random.key(0), config.seeds))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  results = {}
  # Adam runs with the same state layout as Grams (GramsState wraps optax's Adam state), so the sign statistic
  # is read the same way from both.
  optimizers = {"adam": optax.chain(_adam_in_grams_state(), optax.scale_by_learning_rate(config.learning_rate)),
                "grams": optim.grams(config.learning_rate)}
  for name, opt in optimizers.items():
    final, test, disagree, curve = _train(ds, config, opt)
    curve = np.asarray(curve).mean(axis=0)
    for s in range(0, len(curve), max(1, len(curve) // 8)):
      ctx.log(int(s), {f"{name}/train_loss": float(curve[s])})
    results[name] = {"final_train_loss": np.asarray(final).tolist(), "test_accuracy": np.asarray(test).tolist(),
                     "sign_disagreement": np.asarray(disagree).tolist()}
  adam_loss = float(np.mean(results["adam"]["final_train_loss"]))
  grams_loss = float(np.mean(results["grams"]["final_train_loss"]))
  disagreement = float(np.mean(results["grams"]["sign_disagreement"]))
  passed = grams_loss <= 1.0 * adam_loss and disagreement >= 0.1
  results["claim"] = {"passed": bool(passed), "statement": CLAIM, "grams_final_train_loss": grams_loss,
                      "adam_final_train_loss": adam_loss, "ratio": grams_loss / adam_loss,
                      "grams_sign_disagreement": disagreement}
  return results


def _adam_in_grams_state() -> optax.GradientTransformation:
  """``optax.scale_by_adam`` with its state wrapped in :class:`paperlab.optim.GramsState` (plain Adam direction)."""
  adam = optax.scale_by_adam()

  def update(updates, state, params=None):
    out, adam_state = adam.update(updates, state.adam)
    return out, optim.GramsState(adam=adam_state)

  return optax.GradientTransformation(lambda p: optim.GramsState(adam=adam.init(p)), update)
