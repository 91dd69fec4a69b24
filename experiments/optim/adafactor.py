"""Adafactor: sublinear optimizer memory at little cost in loss (Shazeer & Stern, 2018, arXiv:1804.04235),
catalogue [267].

(a) Memory, closed form: the optimizer state of a 256x512 kernel under ``paperlab.optim.adafactor_paper`` holds
256 + 512 second-moment numbers, against 2 * 131072 for Adam. (b) Training: a digits MLP trained 500 steps with the
paper's Adafactor (factored, beta1=0, relative step, update clipping d=1) against Adam(lr=1e-3) and against the
same Adafactor without factoring.

    paperlab run experiments/optim/adafactor.py --config.steps=2000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, models, optim, train

PAPER_ID = 267
CLAIM = ("Adafactor's state for a 256x512 kernel is 768 numbers (vs 262144 for Adam), and on a digits MLP "
         "(500 steps) the paper's Adafactor reaches final training loss <= 1.10x Adam(lr=1e-3) and <= 1.05x the "
         "unfactored Adafactor (mean of 3 seeds).")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.steps = 500
  c.batch_size = 64
  c.adam_learning_rate = 1e-3
  c.widths = (128, 128)
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
  keys = jax.random.split(jax.random.key(0), config.seeds)
  optimizers = {"adam": optax.adam(config.adam_learning_rate), "adafactor": optim.adafactor_paper(),
                "adafactor_unfactored": optim.adafactor_paper(factored=False)}
  results = {"memory": memory}
  for name, tx in optimizers.items():
    graphdef, init = train.make_init(model_fn, tx)
    step = train.make_train_step(graphdef, train.classification_loss, tx)

    @jax.jit
    @jax.vmap
    def trial(key):
      state, metrics = train.run_steps(step, init(key), (x, y), key, batch_size=config.batch_size,
                                       num_steps=config.steps)
      return train.evaluate(graphdef, state, x, y)["loss"], metrics["loss"]

    final, losses = (np.asarray(a) for a in trial(keys))
    for i in range(0, config.steps, max(1, config.steps // 10)):
      ctx.log(i, {f"{name}/train_loss": float(losses[:, i].mean())})
    results[name] = {"final_train_loss": final.tolist()}
    ctx.print(f"{name}: final train loss {final.mean():.4f}")

  l_adam, l_fact, l_unf = (float(np.mean(results[k]["final_train_loss"]))
                           for k in ("adam", "adafactor", "adafactor_unfactored"))
  passed = bool(memory["adafactor"] == 768 and memory["adam"] == 2 * 256 * 512
                and l_fact <= 1.10 * l_adam and l_fact <= 1.05 * l_unf)
  results["claim"] = {"passed": passed, "statement": CLAIM, "state_adafactor": memory["adafactor"],
                      "state_adam": memory["adam"], "loss_adam": l_adam, "loss_adafactor": l_fact,
                      "loss_adafactor_unfactored": l_unf, "ratio_vs_adam": l_fact / l_adam,
                      "ratio_vs_unfactored": l_fact / l_unf}
  return results
