"""Quantized distillation (Polino, Pascanu & Alistarh, "Model compression via distillation and quantization",
arXiv:1802.05668), catalogue [122]: a 2- and 4-bit student MLP trained with a teacher against QAT without one.

Setting (the catalogue's): scikit-learn digits split 70/15/15 (:mod:`paperlab.runner.digits_splits`). Teacher: MLP
64-512-512-10 (ReLU), Adam 1e-3, batch 64, one per seed. Students: MLP 64-64-64-10 trained from scratch for 40 epochs
(Adam, batch 64). In the quantized arms every student kernel is quantized in each forward pass by
:func:`paperlab.quant.bucket_quantize` (uniform, ``2^bits`` points per bucket of 256 values scaled by the bucket's
min/max, buckets along the inputs of each output unit as in the official code; deterministic rounding) and the
gradient updates the float weights (straight-through); biases stay float. Arms:

* ``qat2``: 2-bit, cross entropy only (QAT without a teacher);
* ``qdistill2`` / ``qdistill4``: 2-/4-bit, :func:`paperlab.quant.quantized_distillation_loss` (alpha 0.7, T 2, the
  official defaults; the teacher's logits of the same batch);
* ``fp_distill``: the float student on the same distillation loss.

Every arm gets the same 3-point learning-rate grid, chosen on validation accuracy (of the quantized student). Claim
(seed means of test accuracy): qdistill2 >= qat2 + 1pt, and qdistill4 within 1pt of fp_distill
(``|qdistill4 - fp_distill| <= 1pt``). Control: qat2 passed as the method.

Measured at the default config (seeds 0-2, mean +- std over seeds; record experiments/records/122.json): teacher
0.9641. 2-bit QAT without a teacher 0.9628 +- 0.0053 (lr 3e-3); 2-bit quantized distillation 0.9542 +- 0.0178 (lr 1e-2;
one seed at 0.9294); 4-bit quantized distillation 0.9665 +- 0.0030 (lr 1e-2); float distilled student 0.9591 +- 0.0030
(lr 3e-3). The claim does not reproduce: at 2 bits distillation is 0.87pt *below* QAT without a teacher (claim
+1pt); the 4-bit part holds (+0.74pt, within 1pt). A likely reason (not measured): on digits the teacher (96.4%) is
barely better than the student trained alone. Differentiable quantization (:func:`paperlab.quant.codebook_quantize`)
is implemented and unit-tested but not part of this claim.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, papers, quant, train
from paperlab.runner import digits_splits, protocol
from paperlab.runner.config import load_experiment

ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # the shared DIGITS-MLP substrate
oscillation = load_experiment(pathlib.Path(__file__).with_name("oscillation.py"))  # its memoized float models

PAPER_ID = 122
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the teacher trains for 10 epochs (CI budget; the DIGITS-MLP substrate's 40 epochs for the students)",
    "Adam on a 3-point learning-rate grid {1e-3, 3e-3, 1e-2} for every arm, chosen on validation accuracy (the paper "
    "trains with SGD schedules on CIFAR/ImageNet); distillation alpha 0.7 and temperature 2 from the official code",
    "only kernels are quantized (biases float); deterministic rounding (the paper also tries stochastic)",
    "the distillation term is the per-example KL (paperlab.losses.kd_loss), not the official nn.KLDivLoss() mean "
    "over batch and classes (a factor 1/10 on that term)",
    "digits split 70/15/15 by paperlab.runner.digits_splits (stratified)",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.teacher_widths = (512, 512)
  c.teacher_epochs = 10
  c.teacher_learning_rate = 1e-3
  c.student_widths = (64, 64)
  c.epochs = 40
  c.batch_size = 64
  c.bucket_size = 256
  c.learning_rates = (1e-3, 3e-3, 1e-2)
  c.alpha = quant.DISTILL_ALPHA
  c.temperature = quant.DISTILL_TEMPERATURE
  return c


ARMS = {"qat2": (2, False), "qdistill2": (2, True), "qdistill4": (4, True), "fp_distill": (None, True)}
"""arm -> (bits of the student kernels or None for float, distillation loss or plain cross entropy)."""


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c = config
  (x, y), val, test = digits_splits.fit_val_test()
  seeds = np.arange(c.seeds)
  teachers = oscillation.fp_digits_mlps(tuple(int(s) for s in seeds), tuple(c.teacher_widths),
                                        float(c.teacher_learning_rate), int(c.teacher_epochs), int(c.batch_size))
  teacher_logits = jnp.stack([m(x) for m in teachers])  # (seeds, N, 10): the teacher is fixed, computed once
  teacher_acc = np.mean([float(ptq_char.accuracy(*nnx.split(m), *test)) for m in teachers])
  graphdef, init = train.make_init(lambda rngs: models.MLP(64, list(c.student_widths), 10, rngs=rngs),
                                   optax.adam(1e-3))
  steps = c.epochs * (x.shape[0] // c.batch_size)

  def quantized(params, bits):
    if bits is None:
      return params

    def one(path, w):
      name = getattr(path[-1], "key", getattr(path[-1], "name", None))
      if name != "kernel":
        return w
      return quant.bucket_quantize(w.T, bits=bits, bucket_size=c.bucket_size).T  # buckets along each unit's inputs
    return jax.tree_util.tree_map_with_path(one, params)

  def fit_one(key, t_logits, lr, alpha, bits):
    params = init(key).params
    tx = optax.adam(lr)
    data_key = jax.random.fold_in(key, 1)

    def loss_fn(params, batch):
      xs, ys, ts = batch
      out = nnx.merge(graphdef, quantized(params, bits), {})(xs)
      # alpha = 0 is plain cross entropy (the arm without a teacher): one compiled program per bit width
      return quant.quantized_distillation_loss(out, ts, ys, temperature=c.temperature, alpha=alpha).mean()

    def body(carry, t):
      params, opt = carry
      grads = jax.grad(loss_fn)(params, data.batch_at((x, y, t_logits), t, data_key, c.batch_size))
      upd, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, upd), opt), None

    (params, _), _ = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
    model = nnx.merge(graphdef, quantized(params, bits), {})
    return {k: jnp.mean(jnp.argmax(model(s[0]), -1) == s[1]) for k, s in (("val", val), ("test", test))}

  runners = {b: jax.jit(jax.vmap(lambda k, t, lr, a, b=b: fit_one(k, t, lr, a, b), in_axes=(0, 0, None, None)))
             for b in {b for b, _ in ARMS.values()}}
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 17))(jnp.asarray(seeds))

  def fit(arm, hparams, seeds_):
    bits, distill = ARMS[arm.name]
    alpha = jnp.float32(c.alpha if distill else 0.0)
    out = runners[bits](keys, teacher_logits, jnp.float32(hparams["lr"]), alpha)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}

  grid = [{"lr": lr} for lr in c.learning_rates]
  cmp = protocol.compare([protocol.Arm(n, grid) for n in ARMS], seeds, fit, validate=lambda out: out["val"],
                         test=lambda out: {"accuracy": out["test"]})
  acc = {n: cmp[n].mean("accuracy") for n in ARMS}
  four_bit_within = bool(abs(acc["qdistill4"] - acc["fp_distill"]) <= 0.01)
  verdict = cmp.judge(lambda m, b: m["accuracy"] >= b["accuracy"] + 0.01 and four_bit_within,
                      method="qdistill2", baseline="qat2")
  for step, name in enumerate(ARMS):
    r = cmp[name]
    ctx.log(step, {f"{name}/accuracy": r.mean("accuracy")})
    ctx.print(f"{name} (lr {r.chosen['lr']}): test acc {r.mean('accuracy'):.4f} +- {r.std('accuracy'):.4f}")
  ctx.print(f"teacher {c.teacher_widths}: test acc {teacher_acc:.4f}")
  return {
      "protocol": cmp.to_json(),
      "claim": {
          "statement": CLAIM,
          "passed": bool(verdict["passed"]), "holds": bool(verdict["holds"]),
          "control_passes": bool(verdict["control_passes"]),
          "accuracy": acc,
          "accuracy_std": {n: cmp[n].std("accuracy") for n in ARMS},
          "gain_2bit_distill_over_qat": acc["qdistill2"] - acc["qat2"],
          "gap_4bit_to_fp_distill": acc["qdistill4"] - acc["fp_distill"],
          "four_bit_within_1pt": four_bit_within,
          "teacher_accuracy": float(teacher_acc),
          "chosen_lr": {n: cmp[n].chosen["lr"] for n in ARMS},
      },
  }
