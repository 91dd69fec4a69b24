"""Encouraging loss (Zhao et al., 2022): rewarding well-classified examples enlarges logit margins at equal accuracy,
catalogue [257].

Digits (20% of the training split held out for validation), MLP 64-128-10 trained full-batch with Adam for 150
epochs with cross-entropy and with the (conservative, log_end=0.75) encouraging loss. Metrics: clean test accuracy
and the mean test logit margin ``z_y - max_{k != y} z_k``. Compared through the shared protocol
(:mod:`paperlab.runner.protocol`): each arm picks its Adam learning rate from the same grid (1e-3, 3e-3, 1e-2) on
validation accuracy, 3 seeds, the test split read once per arm, seed means. Control: CE passed as the method must
fail (its margin is not 1.2x its own).

Measured (seeds 0-2, lr 3e-3 chosen for both arms): test accuracy EL 0.9726 +- 0.0021 vs CE 0.9696 +- 0.0021;
mean test margin EL 8.045 +- 0.066 vs CE 6.566 +- 0.085, ratio 1.225 (per seed 1.223 / 1.218 / 1.235), a thin
margin over 1.2 (the earlier calibration saw 1.19 at 300 epochs). The earlier version used one fixed learning rate
and no validation split.

CI scale (CI_CONFIG): the learning-rate grid cut to (1e-3, 3e-3), both arms chose 3e-3 at the full scale, so every
choice and number is the record's; at it: margin ratio 1.225 (1.223/1.218/1.235), accuracy EL 0.9726 vs CE 0.9696
(seeds 0-2, reproduced), 38.3 CPU-s (measured under heavy load; the full grid 45 in the loaded profile).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import paperlab.losses as pl
from paperlab import data, models, papers, train
from paperlab.runner import protocol

PAPER_ID = 257
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"learning_rates": (1e-3, 3e-3)}  # the grid points the arms chose at the full scale

LOSSES = {
    "ce": optax.softmax_cross_entropy_with_integer_labels,
    "encouraging": lambda z, y: pl.encouraging_loss_with_integer_labels(z, y, log_end=0.75),
}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seeds = 3
  config.num_steps = 150  # the catalogue's 150 epochs (full batch)
  config.width = 128
  config.learning_rates = (1e-3, 3e-3, 1e-2)
  config.validation_fraction = 0.2
  config.margin_ratio = 1.2
  config.accuracy_slack = 0.005
  config.seed = 0  # the data split
  return config


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits(seed=config.seed)
  fit_idx, val_idx = data.stratified_split(np.asarray(ds.y_train), config.validation_fraction, config.seed)
  x, y = jnp.asarray(ds.x_train[fit_idx]), jnp.asarray(ds.y_train[fit_idx])
  x_val, y_val = jnp.asarray(ds.x_train[val_idx]), jnp.asarray(ds.y_train[val_idx])
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  model_fn = lambda rngs: models.MLP(64, [config.width], 10, rngs=rngs)  # noqa: E731

  def evaluate(graphdef, state):
    model = nnx.merge(graphdef, state.params, state.model_state)
    model.eval()
    logits = model(x_test)
    true = jnp.take_along_axis(logits, y_test[:, None], -1)[:, 0]
    other = jnp.max(jnp.where(jax.nn.one_hot(y_test, 10, dtype=bool), -jnp.inf, logits), -1)
    return {"val": jnp.mean(jnp.argmax(model(x_val), -1) == y_val),
            "test_accuracy": jnp.mean(jnp.argmax(logits, -1) == y_test), "test_margin": jnp.mean(true - other)}

  def fit(arm, hparams, seeds):
    out, metrics = train.fit_full_batch(model_fn, optax.adam(hparams["lr"]), train.mean_loss(LOSSES[arm.name]),
                                        (x, y), jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds)),
                                        num_steps=config.num_steps, evaluate_fn=evaluate)
    ctx.log_curve(f"{arm.name}/lr={hparams['lr']}/train_loss", np.asarray(metrics["loss"]).mean(0),
                  every=max(config.num_steps // 5, 1))
    return {k: np.asarray(v) for k, v in out.items()}

  grid = [{"lr": lr} for lr in config.learning_rates]
  comparison = protocol.compare([protocol.Arm(name, grid) for name in LOSSES], range(config.seeds), fit,
                                validate=lambda out: out["val"],
                                test=lambda out: {k: out[k] for k in ("test_accuracy", "test_margin")})
  for name, arm in comparison.arms.items():
    ctx.print(f"{name} (lr {arm.chosen['lr']}): accuracy {arm.mean('test_accuracy'):.4f} +- "
              f"{arm.std('test_accuracy'):.4f}, mean test logit margin {arm.mean('test_margin'):.3f} +- "
              f"{arm.std('test_margin'):.3f}")
  verdict = comparison.judge(
      lambda m, b: bool(m["test_accuracy"] >= b["test_accuracy"] - config.accuracy_slack
                        and m["test_margin"] >= config.margin_ratio * b["test_margin"]),
      method="encouraging", baseline="ce")
  ce, el = comparison["ce"].means(), comparison["encouraging"].means()
  return {
      "claim": {**verdict, "statement": CLAIM, "ce_accuracy": ce["test_accuracy"],
                "encouraging_accuracy": el["test_accuracy"], "ce_margin": ce["test_margin"],
                "encouraging_margin": el["test_margin"], "margin_ratio": el["test_margin"] / ce["test_margin"],
                "margin_ratio_per_seed": (comparison["encouraging"].test["test_margin"]
                                          / comparison["ce"].test["test_margin"]).tolist()},
      "losses": {name: {f"{k}_per_seed": v.tolist() for k, v in arm.test.items()}
                 for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
  }


if __name__ == "__main__":
  import tempfile

  from paperlab.runner import Context

  print(run(get_config(), Context(tempfile.mkdtemp()))["claim"])
