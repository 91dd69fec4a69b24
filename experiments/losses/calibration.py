"""A benchmark study on calibration (Tao et al., 2023): temperature scaling and the bin-count sensitivity of ECE,
catalogue [586].

Digits with a 360-example test set (test fraction 0.2); 20% of the training split is held out for validation and
the MLP 64-256-256-256-10 is trained on the rest (1150 examples) with cross-entropy and Adam (1e-3, batch 64) for
300 epochs, long past the point where its training loss vanishes, so its test confidences are too high (Guo et al.:
depth and NLL overfitting). The temperature T = argmin NLL(logits / T) is fitted on the validation split with
:func:`paperlab.losses.fit_temperature`. Compared through the shared protocol (:mod:`paperlab.runner.protocol`):
two arms on the same trained nets, "uncalibrated" (T = 1) and "temperature"; one point per arm; 3 seeds; the test
split read once per arm; seed means. The claim: ECE(15) after <= 0.7 x before, accuracy unchanged, and ECE(100) >=
ECE(15) of the overfit net on the 360 test examples. Control: the uncalibrated net passed as the method (T = 1, a
calibration that does nothing) must fail.

Measured (seeds 0-2, 5400 steps): T = 2.49 / 2.82 / 2.10; test ECE(15) 0.0297 +- 0.0015 -> 0.0203 +- 0.0052
(31.5% lower, a thin margin over 30%: per seed 43%, 40%, 13%); accuracy 0.9656 unchanged; ECE(100) 0.0316 >= ECE(15)
0.0297 on the overfit net (after scaling: 0.0387 vs 0.0203); mean confidence 0.990 -> 0.967. The control (T = 1)
fails. The earlier version trained 1000 full-batch steps on a quarter of the training split instead of the
catalogue's 300 epochs.

CI scale (CI_CONFIG): 30 epochs instead of 300 (540 steps); at it: ECE(15) 0.0245 -> 0.0200 (18.7% lower, claim
30%; T 1.59), accuracy 0.9638 unchanged, ECE(100) 0.0339 >= 0.0245 (seeds 0-2, not reproduced: the net is not yet
over-confident enough; 100 epochs: 20%, 1 epoch passes only because the untrained net is under-confident), 23.9
CPU-s (measured under heavy load).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import paperlab.losses as pl
from paperlab import data, models, papers, train
from paperlab.runner import protocol

PAPER_ID = 586
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"epochs": 30}  # the full run (the record): 300


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # the data split
  config.test_fraction = 0.2  # 360 test examples
  config.validation_fraction = 0.2  # of the training split
  config.widths = (256, 256, 256)  # depth makes MLPs over-confident (Guo et al., Sec. 3)
  config.epochs = 300
  config.batch_size = 64
  config.learning_rate = 1e-3
  config.seeds = 3
  config.min_relative_reduction = 0.3
  return config


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits(test_fraction=config.test_fraction, seed=config.seed)
  fit_idx, val_idx = data.stratified_split(np.asarray(ds.y_train), config.validation_fraction, config.seed)
  x_fit, y_fit = jnp.asarray(ds.x_train[fit_idx]), jnp.asarray(ds.y_train[fit_idx])
  x_val, y_val = jnp.asarray(ds.x_train[val_idx]), jnp.asarray(ds.y_train[val_idx])
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  steps_per_epoch = -(-x_fit.shape[0] // config.batch_size)
  num_steps = config.epochs * steps_per_epoch
  optimizer = optax.adam(config.learning_rate)
  graphdef, init = train.make_init(lambda rngs: models.MLP(64, list(config.widths), 10, rngs=rngs), optimizer)
  step = train.make_train_step(graphdef, train.mean_loss(optax.softmax_cross_entropy_with_integer_labels),
                               optimizer)

  def metrics(graphdef, state):
    model = nnx.merge(graphdef, state.params, state.model_state)
    model.eval()
    temperature = pl.fit_temperature(model(x_val), y_val)
    logits = model(x_test)
    out = {"T": temperature}
    for tag, t in (("uncalibrated", 1.0), ("temperature", temperature)):
      z = logits / t
      probs = jax.nn.softmax(z, axis=-1)
      out[tag] = {"accuracy": jnp.mean(jnp.argmax(z, -1) == y_test),
                  "ece15": pl.expected_calibration_error(probs, y_test, num_bins=15),
                  "ece100": pl.expected_calibration_error(probs, y_test, num_bins=100),
                  "nll": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, y_test)),
                  "confidence": jnp.mean(jnp.max(probs, -1))}
    return out

  @functools.cache
  def trained(seeds):
    @jax.jit
    @jax.vmap
    def one(key):
      state, curve = train.run_steps(step, init(key), (x_fit, y_fit), key, batch_size=config.batch_size,
                                     num_steps=num_steps)
      return metrics(graphdef, state), curve["loss"]

    out, losses = one(jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds)))
    ctx.log_curve("train_loss", np.asarray(losses).mean(0), every=max(num_steps // 10, 1))
    return jax.tree.map(np.asarray, out)

  def fit(arm, hparams, seeds):
    out = trained(tuple(int(s) for s in seeds))
    return {**out[arm.name], "T": out["T"] if arm.name == "temperature" else np.ones_like(out["T"])}

  comparison = protocol.compare([protocol.Arm("uncalibrated"), protocol.Arm("temperature")], range(config.seeds),
                                fit, validate=lambda out: np.zeros(config.seeds), test=lambda out: out)

  def claim(m, b):
    reduction = 1.0 - m["ece15"] / b["ece15"]
    return bool(reduction >= config.min_relative_reduction and abs(m["accuracy"] - b["accuracy"]) < 1e-9
                and b["ece100"] >= b["ece15"])

  verdict = comparison.judge(claim, method="temperature", baseline="uncalibrated")
  m, b = comparison["temperature"].means(), comparison["uncalibrated"].means()
  reduction = 1.0 - m["ece15"] / b["ece15"]
  ctx.print(f"T = {np.round(comparison['temperature'].test['T'], 3).tolist()}; test ECE15 "
            f"{b['ece15']:.4f} -> {m['ece15']:.4f} ({100 * reduction:.1f}% lower); ECE100 {b['ece100']:.4f} -> "
            f"{m['ece100']:.4f}; accuracy {b['accuracy']:.4f} -> {m['accuracy']:.4f}; confidence "
            f"{b['confidence']:.4f} -> {m['confidence']:.4f}")
  return {
      "claim": {**verdict, "statement": CLAIM, "ece15_before": b["ece15"], "ece15_after": m["ece15"],
                "relative_reduction": reduction, "accuracy_before": b["accuracy"], "accuracy_after": m["accuracy"],
                "ece100_before": b["ece100"], "ece100_after": m["ece100"],
                "accuracy_unchanged": abs(m["accuracy"] - b["accuracy"]) < 1e-9,
                "bins_sensitivity": b["ece100"] >= b["ece15"]},
      "per_seed": {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
      "test_size": int(y_test.shape[0]),
      "train_size": int(y_fit.shape[0]),
      "num_steps": num_steps,
  }


if __name__ == "__main__":
  import tempfile

  from paperlab.runner import Context

  print(run(get_config(), Context(tempfile.mkdtemp()))["claim"])
