"""Adaptive batch sizes with the norm test for AdaGrad-Norm (AdAdaGrad; Lau et al., 2024, arXiv:2402.11215),
catalogue [513].

Multinomial logistic regression on digits with a fixed budget of training samples. AdAdaGrad-Norm starts at a
small batch and grows it whenever the norm test (``paperlab.optim.norm_test``) fails; the baseline keeps the
small batch. Both use AdaGrad-Norm (``paperlab.optim.adagrad_norm``) with the same step size.

    paperlab run experiments/optim/adadagrad.py --config.eta=0.3
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data
from paperlab.optim import adagrad_norm, next_batch_size, norm_test

PAPER_ID = 513
CLAIM = ("On digits logistic regression with a 20k-sample budget, AdAdaGrad-Norm (b0=8, eta=0.5) grows the batch "
         "monotonically to >= 8x b0 and reaches a final training loss <= 1.1x that of fixed-batch (b=8) "
         "AdaGrad-Norm while taking <= 0.3x as many optimizer steps (3 seeds).")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.sample_budget = 20_000
  c.b0 = 8
  c.max_batch_size = 512
  c.eta = 0.5
  c.learning_rate = 1.0
  c.adagrad_b0 = 1e-2
  return c


def _loss(params, x, y):
  logits = x @ params["w"] + params["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  n, d = x.shape
  k = ds.num_classes
  bmax, b0 = config.max_batch_size, config.b0
  max_steps = config.sample_budget // b0 + 1
  opt = adagrad_norm(config.learning_rate, b0=config.adagrad_b0)
  per_example_grads = jax.vmap(jax.grad(lambda p, xi, yi: _loss(p, xi[None], yi[None])[0]), (None, 0, 0))

  def train(key, adaptive: bool):
    buffer = bmax if adaptive else b0   # the fixed-batch arm needs no room to grow
    params = {"w": jnp.zeros((d, k)), "b": jnp.zeros((k,))}
    init = (params, opt.init(params), jnp.asarray(b0, jnp.int32), jnp.asarray(0, jnp.int32),
            jnp.asarray(0, jnp.int32), jnp.zeros((max_steps,), jnp.int32))

    def cond(carry):
      return carry[3] < config.sample_budget

    def body(carry):
      params, opt_state, b, used, step, history = carry
      idx = jax.random.randint(jax.random.fold_in(key, step), (buffer,), 0, n)
      valid = jnp.arange(buffer) < b
      grads = per_example_grads(params, x[idx], y[idx])
      mean = jax.tree.map(lambda g: jnp.tensordot(valid.astype(g.dtype), g, 1) / b, grads)
      updates, opt_state = opt.update(mean, opt_state, params)
      params = optax.apply_updates(params, updates)
      if adaptive:
        new_b = next_batch_size(b, norm_test(grads, config.eta, where=valid), max_batch_size=bmax)
      else:
        new_b = b
      return params, opt_state, new_b, used + b, step + 1, history.at[step].set(b)

    params, _, b, used, steps, history = jax.lax.while_loop(cond, body, init)
    return jnp.mean(_loss(params, x, y)), steps, history, b

  keys = jax.random.split(jax.random.key(0), config.seeds)
  results = {}
  for name, adaptive in (("fixed", False), ("adaptive", True)):
    loss, steps, history, final_b = jax.jit(jax.vmap(lambda key: train(key, adaptive)))(keys)
    loss, steps, history = np.asarray(loss), np.asarray(steps), np.asarray(history)
    monotone = all(np.all(np.diff(h[:s]) >= 0) for h, s in zip(history, steps))
    results[name] = {"final_train_loss": loss.tolist(), "steps": steps.tolist(),
                     "final_batch_size": np.asarray(final_b).tolist(), "monotone": bool(monotone)}
    for i in range(0, int(steps.max()), max(1, int(steps.max()) // 20)):
      ctx.log(i, {f"{name}/batch_size": float(history[:, i].mean())})
    ctx.print(f"{name}: loss {loss.mean():.4f}, steps {steps.mean():.0f}, final batch {np.asarray(final_b)}")

  a, f = results["adaptive"], results["fixed"]
  loss_ratio = float(np.mean(a["final_train_loss"]) / np.mean(f["final_train_loss"]))
  steps_ratio = float(np.mean(a["steps"]) / np.mean(f["steps"]))
  grew = bool(np.min(a["final_batch_size"]) >= 8 * config.b0)
  passed = a["monotone"] and grew and loss_ratio <= 1.1 and steps_ratio <= 0.3
  results["claim"] = {"passed": bool(passed), "statement": CLAIM, "loss_ratio": loss_ratio,
                      "steps_ratio": steps_ratio, "final_batch_sizes": a["final_batch_size"],
                      "batch_monotone": a["monotone"]}
  return results
