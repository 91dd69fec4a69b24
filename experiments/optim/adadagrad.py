"""Adaptive batch sizes with the norm test for AdaGrad-Norm (AdAdaGrad; Lau et al., 2024, arXiv:2402.11215),
catalogue [513].

Multinomial logistic regression on digits with a fixed budget of training samples. AdAdaGrad-Norm starts at a
small batch and grows it whenever the norm test (``paperlab.optim.norm_test``) fails; the baseline keeps the
small batch. Both use AdaGrad-Norm (``paperlab.optim.adagrad_norm``) with the same step size. The catalogue's
setting (all 10 classes, 20k samples, b0 = 8, eta = 0.5), seeds 0-2, through :mod:`paperlab.runner.protocol` (each
arm one fixed point, the same step size for both; the claim is about the training loss, so there is no test read;
judged on seed means). Control: the fixed-batch arm in the adaptive one's place must fail (its batch never grows).

Measured (seeds 0-2): the norm test grows the batch monotonically from 8 to the cap 512 in every seed and uses 49-50
steps against 2500 (ratio 0.020 <= 0.3), but at the same 20k-sample budget the final training loss is 0.2457 +-
0.0055 (per seed 0.244/0.240/0.253) against 0.0722 +- 0.0005 for fixed b=8 (ratio 3.40 > 1.1): not reproduced.

    paperlab run experiments/optim/adadagrad.py --config.eta=0.3
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, papers
from paperlab.optim import adagrad_norm, next_batch_size, norm_test
from paperlab.runner import protocol

PAPER_ID = 513
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


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

  def fit(arm, hparams, seeds):
    adaptive = arm.name == "adaptive"
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    loss, steps, history, final_b = (np.asarray(v) for v in jax.jit(jax.vmap(lambda key: train(key, adaptive)))(keys))
    monotone = [float(np.all(np.diff(h[:s]) >= 0)) for h, s in zip(history, steps)]
    for i in range(0, int(steps.max()), max(1, int(steps.max()) // 20)):
      ctx.log(i, {f"{arm.name}/batch_size": float(history[:, i].mean())})
    ctx.print(f"{arm.name}: loss {loss.mean():.4f}, steps {steps.mean():.0f}, final batch {final_b}")
    return {"final_train_loss": loss, "steps": steps, "final_batch_size": final_b, "monotone": np.asarray(monotone),
            "grew_8x_b0": (final_b >= 8 * b0).astype(float)}

  comparison = protocol.compare([protocol.Arm("fixed"), protocol.Arm("adaptive")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one fixed point per arm
                                test=lambda out: out)
  claim = lambda m, b: (m["monotone"] == 1.0 and m["grew_8x_b0"] == 1.0  # every seed
                        and m["final_train_loss"] <= 1.1 * b["final_train_loss"] and m["steps"] <= 0.3 * b["steps"])
  verdict = comparison.judge(claim, method="adaptive", baseline="fixed")
  a, f = comparison["adaptive"], comparison["fixed"]
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM,
                      "loss_ratio": a.mean("final_train_loss") / f.mean("final_train_loss"),
                      "steps_ratio": a.mean("steps") / f.mean("steps"),
                      "final_batch_sizes": a.test["final_batch_size"].tolist(),
                      "batch_monotone": bool(np.all(a.test["monotone"] == 1.0))}
  return results
