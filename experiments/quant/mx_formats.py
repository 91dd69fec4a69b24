"""Microscaling (MX) formats: direct-cast inference and MX training (Rouhani et al., 2023, arXiv:2310.10537),
catalogue [104].

Setting (DIGITS-MLP): 64-256-256-10 ReLU MLP, Adam 1e-3, 40 epochs, batch 64, seeds 0-2, trained in float32. Arms:
``fp32`` (the float32 model; every metric is its float32 test accuracy) and ``mx``: the same trained models with the
weights (blocks along the input axis) and the activations entering every matmul (blocks along the features)
direct-cast to MXINT8, MXFP8-E4M3, MXFP6-E3M2 and MXFP4-E2M1 (no retraining), plus a model trained from scratch on
the same seeds with :func:`paperlab.quant.mx_dot` in MXFP6-E3M2 for all three matmuls of every layer (forward,
both backward), float32 master weights and Adam state. Claim judged on seed means through
:mod:`paperlab.runner.protocol`; accuracy drops are in points (percent). The float32 model in the MX arm's place
has every drop 0, so the control puts the weakest format, MXFP4, in every slot: the thresholds must then fail
(the protocol's own control, the float32 model as the method, passes any "drop <= x" claim and is reported as
``baseline_as_method_passes``).

Measured (seeds 0-2, CPU): float32 test accuracy 97.70% (98.00/97.33/97.78); direct-cast drops MXINT8 0.00pt,
MXFP8-E4M3 0.00pt, MXFP6-E3M2 -0.07pt, MXFP4-E2M1 0.59pt (so drop(MXFP4) >= drop(MXFP6)); trained from scratch with
MXFP6 in all three matmuls 97.78% (98.00/97.33/98.00) >= 96.70. Control (MXFP4 in every slot): fails (0.59 > 0.3).
Wall time 130 s on the shared 2-core CPU under load (33 s of CPU time in the test).
CI scale (CI_CONFIG: 20 epochs for the float and the MXFP6-trained models); at it: drops MXINT8 0.00pt, MXFP8 0.00pt,
MXFP6 0.07pt, MXFP4 0.74pt, MXFP6-trained 97.78% vs float 97.70%: reproduced, as the record (seeds 0-2); 66 CPU-s vs
77 at the default, measured side by side under heavy load; 50 CPU-s for its pytest test once the evaluations were
jitted (14 XLA compiles instead of 238; load 4-5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, papers, quant, train
from paperlab.runner import protocol

PAPER_ID = 104
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the '(calibrate)' margin of the MX-training part is kept at the stated 1pt, not calibrated",
    "control: the protocol's baseline-as-method control passes any 'drop <= x' claim, so the control is the claim "
    "with MXFP4 direct-cast results in every format's slot (which must fail)",
)
CI_CONFIG = {"epochs": 20}  # the test suite's scale (paperlab reproduce 104 --ci)
FORMATS = ("mxint8", "mxfp8_e4m3", "mxfp6_e3m2", "mxfp4_e2m1")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.epochs = 40
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.widths = (256, 256)
  return c


def _forward(model, x, matmul):
  for layer in model.hidden:
    x = jax.nn.relu(matmul(x, layer.kernel.value) + layer.bias.value)
  return matmul(x, model.head.kernel.value) + model.head.bias.value


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  steps = config.epochs * (x.shape[0] // config.batch_size)
  model_fn = lambda rngs: models.MLP(64, list(config.widths), ds.num_classes, rngs=rngs)
  tx = optax.adam(config.learning_rate)
  graphdef, init = train.make_init(model_fn, tx)

  def mx_loss(model, batch, rng):
    xb, yb = batch
    logits = _forward(model, xb, lambda a, w: quant.mx_dot(a, w, "mxfp6_e3m2"))
    m = train.classification_metrics(logits, yb)
    return m["loss"].mean(), {"accuracy": m["accuracy"].mean()}

  def trainer(loss_fn):
    step = train.make_train_step(graphdef, loss_fn, tx)

    @jax.jit
    @jax.vmap
    def fit_all(key):
      state, metrics = train.run_steps(step, init(key), (x, y), key, batch_size=config.batch_size, num_steps=steps)
      return state, metrics["loss"]
    return fit_all

  def accuracy(state, matmul):
    model = nnx.merge(graphdef, state.params, state.model_state)
    return jnp.mean(jnp.argmax(_forward(model, x_test, matmul), -1) == y_test) * 100.0

  def accuracies(states, matmul):  # one jitted program per matmul (vmapped over seeds), not one per operation
    return np.asarray(jax.jit(jax.vmap(lambda s: accuracy(s, matmul)))(states))

  def direct_cast(fmt):
    return lambda a, w: quant.dot(a, quant.quantize(w, fmt, axis=0), act_fmt=fmt)

  cache = {}

  def fit(arm, hparams, seeds):
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    if "fp32" not in cache:
      cache["fp32"], losses = trainer(train.classification_loss)(keys)
      losses = np.asarray(losses)
      for i in range(0, steps, max(1, steps // 10)):
        ctx.log(i, {"fp32/train_loss": float(losses[:, i].mean())})
    states = cache["fp32"]
    if "fp32_acc" not in cache:
      cache["fp32_acc"] = accuracies(states, jnp.matmul)
    fp32 = cache["fp32_acc"]
    if arm.name == "fp32":
      return {"acc_fp32": fp32, **{f"acc_{f}": fp32 for f in FORMATS}, "acc_mx_trained_mxfp6_e3m2": fp32}
    out = {"acc_fp32": fp32}
    for fmt in FORMATS:
      out[f"acc_{fmt}"] = accuracies(states, direct_cast(fmt))
    mx_states, losses = trainer(mx_loss)(keys)
    losses = np.asarray(losses)
    for i in range(0, steps, max(1, steps // 10)):
      ctx.log(i, {"mx/train_loss": float(losses[:, i].mean())})
    mx6 = lambda a, w: quant.mx_dot(a, w, "mxfp6_e3m2")
    out["acc_mx_trained_mxfp6_e3m2"] = accuracies(mx_states, mx6)
    return out

  comparison = protocol.compare([protocol.Arm("fp32"), protocol.Arm("mx")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # nothing to tune: one point per arm
                                test=lambda out: out)

  def claim(m, b):
    drop = {f: b["acc_fp32"] - m[f"acc_{f}"] for f in FORMATS}
    return (drop["mxint8"] <= 0.3 and drop["mxfp8_e4m3"] <= 0.3 and drop["mxfp6_e3m2"] <= 0.5
            and drop["mxfp4_e2m1"] >= drop["mxfp6_e3m2"]
            and m["acc_mx_trained_mxfp6_e3m2"] >= b["acc_fp32"] - 1.0)

  verdict = comparison.judge(claim, method="mx", baseline="fp32")
  m = comparison["mx"].means()
  weakest = {**m, **{f"acc_{f}": m["acc_mxfp4_e2m1"] for f in FORMATS}}
  control = bool(claim(weakest, comparison["fp32"].means()))
  b = comparison["fp32"].mean("acc_fp32")
  for f in FORMATS:
    ctx.print(f"{f}: direct-cast acc {m[f'acc_{f}']:.2f} (fp32 {b:.2f}, drop {b - m[f'acc_{f}']:.2f}pt)")
  ctx.print(f"trained with mx_dot MXFP6: {m['acc_mx_trained_mxfp6_e3m2']:.2f}")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "passed": bool(verdict["holds"] and not control), "control_passes": control,
                      "vacuous": control, "control": "MXFP4 direct-cast accuracy in every format's slot",
                      "baseline_as_method_passes": verdict["control_passes"], "statement": CLAIM,
                      "acc_fp32": b, **{f"drop_{f}_pt": b - m[f"acc_{f}"] for f in FORMATS},
                      "acc_mx_trained_mxfp6_e3m2": m["acc_mx_trained_mxfp6_e3m2"]}
  return results
