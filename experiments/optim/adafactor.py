"""Adafactor: sublinear optimizer memory at little cost in loss (Shazeer & Stern, 2018, arXiv:1804.04235),
catalogue [267].

(a) Memory, closed form: the optimizer state of a 256x512 kernel under ``paperlab.optim.adafactor_paper`` holds
256 + 512 second-moment numbers, against 2 * 131072 for Adam. (b) Training: a digits MLP trained 500 steps with the
paper's Adafactor (factored, beta1=0, relative step, update clipping d=1) against Adam(lr=1e-3) and against the
same Adafactor without factoring: the catalogue's setting, every hyperparameter fixed by the claim, compared through
:mod:`paperlab.runner.protocol` (each arm one fixed point, so the same budget; seeds 0-2 with the same
initialisation and batches per seed; seed means with their spread). The claim is about the final training loss, so
there is no test read.

Control: both loss conditions are non-inferiority (ratios <= 1.10 and <= 1.05), which Adam passed as the method
satisfies trivially, so the control is an arm that does nothing (``optax.set_to_zero()``: the network stays at its
initialisation); the claim judged with it in Adafactor's place must fail.

Measured (seeds 0-2): state 768 vs 262144 elements; final training loss Adafactor 7.57e-4 +- 2.2e-5 (per seed
7.35/7.49/7.87e-4), Adam 3.72e-3 +- 3.6e-5, unfactored Adafactor 8.38e-4 +- 3.8e-6: ratios 0.20 (<= 1.10) and 0.90
(<= 1.05); the arm that does nothing ends at 2.36 and fails: reproduced.

    paperlab run experiments/optim/adafactor.py --config.steps=2000

CI scale (CI_CONFIG): 150 steps, XLA's fast CPU compile; at it: final training loss Adafactor 0.0306, Adam 0.0489,
unfactored 0.0360 (ratios 0.63 and 0.85), nothing 2.36 (seeds 0-2, reproduced), 29 CPU-s on a loaded 2-core machine
(the four arms' compiles dominate; about 40 before the fast compile).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, models, optim, papers, train
from paperlab.runner import protocol
from paperlab.runner.lr_transfer import fast_compile_options

PAPER_ID = 267
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"steps": 150, "fast_compile": True}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.steps = 500
  c.batch_size = 64
  c.adam_learning_rate = 1e-3
  c.widths = (128, 128)
  c.fast_compile = False  # True: XLA's cheaper CPU compile (paperlab.runner.trainer.FAST_COMPILE_CPU), CI scale only
  return c


def _second_moment_elements(opt_state) -> int:
  """Elements of the factored/unfactored second-moment statistics (optax's FactoredState or Adam's nu)."""
  leaves = []
  for s in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, (optax.FactoredState, optax.ScaleByAdamState))):
    if isinstance(s, optax.FactoredState):
      leaves += [x for x in jax.tree.leaves((s.v_row, s.v_col, s.v)) if jnp.size(x) > 1]
    elif isinstance(s, optax.ScaleByAdamState):
      leaves += jax.tree.leaves((s.mu, s.nu))
  return int(sum(jnp.size(x) for x in leaves))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  kernel = {"kernel": jnp.zeros((256, 512))}
  memory = {"adafactor": _second_moment_elements(optim.adafactor_paper().init(kernel)),
            "adam": _second_moment_elements(optax.adam(1e-3).init(kernel)),
            "adafactor_total_state": optim.state_size(optim.adafactor_paper().init(kernel)),
            "adam_total_state": optim.state_size(optax.adam(1e-3).init(kernel))}
  ctx.print(f"optimizer state for a 256x512 kernel: {memory}")

  ds = data.digits()
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  model_fn = lambda rngs: models.MLP(64, list(config.widths), ds.num_classes, rngs=rngs)
  optimizers = {"adam": optax.adam(config.adam_learning_rate), "adafactor": optim.adafactor_paper(),
                "adafactor_unfactored": optim.adafactor_paper(factored=False), "nothing": optax.set_to_zero()}

  def fit(arm, hparams, seeds):
    tx = optimizers[arm.name]
    graphdef, init = train.make_init(model_fn, tx)
    step = train.make_train_step(graphdef, train.classification_loss, tx)

    @functools.partial(jax.jit, compiler_options=fast_compile_options() if config.fast_compile else None)
    @jax.vmap
    def trial(key):
      state, metrics = train.run_steps(step, init(key), (x, y), key, batch_size=config.batch_size,
                                       num_steps=config.steps)
      return train.evaluate(graphdef, state, x, y)["loss"], metrics["loss"]

    final, losses = (np.asarray(a) for a in trial(jax.vmap(jax.random.key)(jnp.asarray(seeds))))
    for i in range(0, config.steps, max(1, config.steps // 10)):
      ctx.log(i, {f"{arm.name}/train_loss": float(losses[:, i].mean())})
    ctx.print(f"{arm.name}: final train loss {final.mean():.4f}")
    return {"final_train_loss": final}

  comparison = protocol.compare([protocol.Arm(n) for n in optimizers], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one fixed point per arm: nothing to pick
                                test=lambda out: out)
  l_unf = comparison["adafactor_unfactored"].mean("final_train_loss")
  memory_ok = memory["adafactor"] == 768 and memory["adam"] == 2 * 256 * 512
  claim = lambda m, b: m["final_train_loss"] <= 1.10 * b["final_train_loss"] and m["final_train_loss"] <= 1.05 * l_unf
  verdict = comparison.judge(claim, method="adafactor", baseline="adam")
  control = comparison.judge(claim, method="nothing", baseline="adam")["holds"]
  l_adam, l_fact = comparison["adam"].mean("final_train_loss"), comparison["adafactor"].mean("final_train_loss")
  results = {"memory": memory, **{name: {k: v.tolist() for k, v in arm.test.items()}
                                  for name, arm in comparison.arms.items()}}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "passed": bool(memory_ok and verdict["holds"] and not control),
                      "control_passes": bool(control), "vacuous": bool(control),
                      "control": "the claim with an arm that does nothing (set_to_zero) in Adafactor's place",
                      "baseline_as_method_passes": verdict["control_passes"], "statement": CLAIM,
                      "state_adafactor": memory["adafactor"], "state_adam": memory["adam"], "loss_adam": l_adam,
                      "loss_adafactor": l_fact, "loss_adafactor_unfactored": l_unf,
                      "loss_nothing": comparison["nothing"].mean("final_train_loss"),
                      "ratio_vs_adam": l_fact / l_adam, "ratio_vs_unfactored": l_fact / l_unf}
  return results
