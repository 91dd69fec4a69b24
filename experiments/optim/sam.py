"""SAM vs its base optimizer under label noise (Foret et al., 2021, arXiv:2010.01412), catalogue [261].

Digits MLP trained on labels with 20% symmetric noise, SGD with momentum 0.9 (lr 0.05) alone and wrapped in
``paperlab.optim.sam`` (rho=0.05), same epochs, seeds and batches: the catalogue's setting, compared through the
shared protocol (:mod:`paperlab.runner.protocol`: both arms have one fixed point, so the same budget; 3 seeds; test
read once per arm; the claim judged on seed means; control: SGD passed as the method must fail the claim).
Sharpness is the top eigenvalue of the Hessian of the (noisy) training loss at the final weights, by power iteration
on Hessian-vector products (forward-over-reverse).

Measured (40 epochs, seeds 0-2): lambda_max SAM 1.86 +- 0.49 vs SGD 1.84 +- 0.19 (ratio 1.01; per seed SAM
1.65/1.40/2.54, SGD 2.09/1.64/1.80), clean test accuracy 0.810 vs 0.816: the catalogue's claim does not reproduce on
this MLP at rho=0.05. The earlier record passed only after raising rho to 0.2 (ratio 0.58), a value picked on the
claim's own metric, which the protocol does not allow. Explore it without a record with

    paperlab run experiments/optim/sam.py --config.rho=0.2

CI scale (CI_CONFIG): 10 epochs, XLA's fast CPU compile; at it: lambda_max SAM 1.82 vs SGD 2.04 (ratio 0.89 > 0.7),
clean test accuracy 0.911 vs 0.906 (seeds 0-2; not reproduced, as the record), 24 CPU-s on a loaded 2-core machine
(about 32 before the fast compile).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, optim, papers, train
from paperlab.runner import protocol
from paperlab.runner.lr_transfer import fast_compile_options

PAPER_ID = 261
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"epochs": 10, "fast_compile": True}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.epochs = 40
  c.batch_size = 64
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.rho = 0.05
  c.noise_rate = 0.2
  c.width = 128
  c.power_iterations = 20
  c.fast_compile = False  # True: XLA's cheaper CPU compile (paperlab.runner.trainer.FAST_COMPILE_CPU), CI scale only
  return c


def top_hessian_eigenvalue(loss_fn, params, key, iterations: int) -> jax.Array:
  """Largest eigenvalue of the Hessian of ``loss_fn`` at ``params`` by power iteration on HVPs."""
  hvp = lambda v: jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]
  leaves, treedef = jax.tree.flatten(params)
  v = treedef.unflatten([jax.random.normal(k, l.shape) for k, l in zip(jax.random.split(key, len(leaves)), leaves)])

  def body(_, carry):
    v, _ = carry
    v = jax.tree.map(lambda a: a / optax.global_norm(v), v)
    hv = hvp(v)
    return hv, sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hv)))

  return jax.lax.fori_loop(0, iterations, body, (v, jnp.zeros(())))[1]


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.with_label_noise(data.digits(), rate=config.noise_rate, seed=0)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  steps = config.epochs * (x.shape[0] // config.batch_size)
  model_fn = lambda rngs: models.MLP(64, [config.width], ds.num_classes, rngs=rngs)
  base = optax.sgd(config.learning_rate, momentum=config.momentum)
  optimizers = {"sgd": base, "sam": optim.sam(base, rho=config.rho)}

  def fit(arm, hparams, seeds):
    tx = optimizers[arm.name]
    graphdef, init = train.make_init(model_fn, tx)
    step = train.make_train_step(graphdef, train.classification_loss, tx)

    @functools.partial(jax.jit, compiler_options=fast_compile_options() if config.fast_compile else None)
    @jax.vmap
    def trial(key):
      state = init(key)
      state, metrics = train.run_steps(step, state, (x, y), key, batch_size=config.batch_size, num_steps=steps)
      loss_fn = lambda p: train.classification_loss(nnx.merge(graphdef, p, state.model_state), (x, y), key)[0]
      sharpness = top_hessian_eigenvalue(loss_fn, state.params, jax.random.key(1), config.power_iterations)
      test = train.evaluate(graphdef, state, jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))
      return {"lambda_max": sharpness, "test_accuracy": test["accuracy"]}, metrics["loss"]

    out, losses = trial(jax.vmap(jax.random.key)(jnp.asarray(seeds)))
    losses = np.asarray(losses)
    for i in range(0, steps, max(1, steps // 10)):
      ctx.log(i, {f"{arm.name}/train_loss": float(losses[:, i].mean())})
    return jax.tree.map(np.asarray, out)

  comparison = protocol.compare([protocol.Arm("sgd"), protocol.Arm("sam")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one point per arm: nothing to pick
                                test=lambda out: out)
  for name in ("sgd", "sam"):
    ctx.print(f"{name}: lambda_max {comparison[name].mean('lambda_max'):.3f}, "
              f"clean test acc {comparison[name].mean('test_accuracy'):.4f}")
  verdict = comparison.judge(
      lambda m, b: m["lambda_max"] <= 0.7 * b["lambda_max"] and m["test_accuracy"] >= b["test_accuracy"] - 0.005,
      method="sam", baseline="sgd")
  l_sgd, l_sam = comparison["sgd"].mean("lambda_max"), comparison["sam"].mean("lambda_max")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "lambda_max_sgd": l_sgd, "lambda_max_sam": l_sam,
                      "sharpness_ratio": l_sam / l_sgd, "test_accuracy_sgd": comparison["sgd"].mean("test_accuracy"),
                      "test_accuracy_sam": comparison["sam"].mean("test_accuracy")}
  return results
