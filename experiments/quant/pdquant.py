"""PD-Quant vs local-MSE AdaRound (Liu et al., "PD-Quant: Post-Training Quantization based on Prediction Difference
Metric", arXiv:2212.07048, CVPR 2023), catalogue [604], on DIGITS-MLP at W2A4.

Setting: an MLP 64-128-128-10 (ReLU) trained in float (Adam 1e-3, 30 epochs, batch 64) on scikit-learn digits
(fit / validation / test 70/15/15, :mod:`paperlab.runner.digits_splits`); every Dense kernel quantized to 2 bits
per output channel (asymmetric min-max grid, the RTN grid that both rounding methods start from) and every Dense
input fake-quantized to 4 bits per tensor with a static min-max range from the float network on the calibration
set (256 training images). Arms:

* ``rtn``: round to nearest;
* ``adaround`` (the baseline, "local-MSE AdaRound"): :func:`paperlab.quant.adaround_optimize` layer by layer,
  asymmetric reconstruction of the pre-activation output from the already-quantized network's inputs, lambda
  0.01, beta 20 -> 2 after a 20% warm-up, Adam lr 1e-3 (the paper's defaults);
* ``pdquant`` (the method): :func:`paperlab.quant.pdquant` on the same grid, with the same iterations, mini-batch
  and schedule, plus the prediction difference at the network output (T = 4, lambda_r = 0.1, Adam lr 3e-3: the
  official defaults).

Claim (catalogue): acc(PD-Quant) >= acc(AdaRound) + 2pt (test accuracy, seed means over 3 seeds; 270 test images,
one image is 0.37pt); control: AdaRound passed as PD-Quant.

Measured at the default config (seeds 0-2, test accuracy mean +- std; record experiments/records/604.json): full
precision 0.9678 +- 0.0046; W2A4 RTN 0.9033 +- 0.0185, AdaRound 0.9294 +- 0.0080, PD-Quant 0.9368 +- 0.0080.
PD-Quant gains +0.74pt over local-MSE AdaRound, not the +2pt of the claim: not reproduced at this scale.
CI scale (CI_CONFIG): 15 float epochs, 150 reconstruction steps per layer; at it: PD-Quant 0.9170 vs AdaRound
0.9120 (+0.50pt, not reproduced, as the record), RTN 0.8971, FP 0.9653 (seeds 0-2), 38 CPU-s (measured under load).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, papers, quant
from paperlab.runner import digits_splits, protocol

PAPER_ID = 604
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "reconstruction steps: 500 Adam steps per layer for both PD-Quant and AdaRound (official: 20k), mini-batches "
    "of 32 from 256 calibration images (official: 1024 ImageNet images) so the run fits the CI budget",
    "distribution correction is not used: the MLP has no BatchNorm (the catalogue makes the BN variant optional); "
    "DC is exercised by the unit tests only",
    "activations: static per-tensor min-max 4-bit fake quantization of every Dense input, ranges from the float "
    "network on the calibration set (the official code learns the activation steps with LSQ and uses QDrop, and "
    "keeps the first and last layers at 8 bits)",
    "the weight grid is the min-max asymmetric per-channel grid shared by RTN, AdaRound and PD-Quant (official: "
    "MSE-initialized grid)",
    "layer-wise reconstruction of each Dense layer (official: blocks of a ResNet); MLP widths 128",
    "no tuning grid: each arm runs at its paper's defaults",
    "digits split 70/15/15 by paperlab.runner.digits_splits",
)
CI_CONFIG = {"epochs": 15, "ptq.iters": 150}  # the test suite's scale (paperlab reproduce 604 --ci)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.epochs = 30
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.ptq = ml_collections.ConfigDict(dict(bits=2, act_bits=4, calib=256, iters=500, recon_batch=32,
                                         adaround_lr=1e-3, pd_lr=3e-3, T=4.0, lam_r=0.1))
  c.claim = ml_collections.ConfigDict(dict(margin=0.02))
  return c


def _init(key, widths):
  sizes = (64,) + tuple(widths) + (10,)
  keys = jax.random.split(key, len(sizes) - 1)
  return {f"l{i}": {"kernel": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "bias": jnp.zeros((b,))}
          for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))}


def _layers(params):
  return sorted(k for k in params if k.startswith("l"))


def forward(params, x, act_bits=None):
  """``(logits, features, inputs)``: ``features["li/kernel"]`` is layer i's pre-activation output, ``inputs[i]``
  what it multiplies; with ``act_bits`` each input is fake-quantized on the grid ``params["act"][i]``."""
  names = _layers(params)
  feats, inputs = {}, []
  for i, name in enumerate(names):
    if act_bits is not None:
      scale, zero = params["act"][i]
      x = quant.dequantize_codes(quant.quantize_to_grid(x, scale, zero, act_bits), scale, zero)
    inputs.append(x)
    x = x @ params[name]["kernel"] + params[name]["bias"]
    feats[f"{name}/kernel"] = x
    if i < len(names) - 1:
      x = jax.nn.relu(x)
  return x, feats, inputs


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "widths", "lr"))
def _train_fp(keys, xy, *, steps, batch_size, widths, lr):
  def one(key):
    params = _init(key, widths)
    tx = optax.adam(lr)
    loss = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(forward(p, b[0])[0], b[1]).mean()

    def body(carry, s):
      p, opt = carry
      g = jax.grad(loss)(p, data.batch_at(xy, s, jax.random.fold_in(key, 1), batch_size))
      upd, opt = tx.update(g, opt, p)
      return (optax.apply_updates(p, upd), opt), None

    (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))
    return p

  return jax.vmap(one)(keys)


def _quantize(method, params, x_calib, c, key):
  """The W{bits}A{act_bits} model of ``method`` (``rtn | adaround | pdquant``) from float ``params``."""
  _, _, fp_inputs = forward(params, x_calib)
  act = [quant.grid_params(jnp.min(a), jnp.max(a), c.act_bits) for a in fp_inputs]
  params = {**params, "act": act}
  paths = [f"{n}/kernel" for n in _layers(params)]
  if method == "pdquant":
    apply_fn = _apply_a4 if c.act_bits == 4 else functools.partial(_apply_q, act_bits=c.act_bits)
    return quant.pdquant(params, apply_fn, x_calib, paths, bits=c.bits, iters=c.iters, T=c.T, lam_r=c.lam_r,
                         lr=c.pd_lr, batch_size=c.recon_batch, key=key)[0]
  out = params
  for i, path in enumerate(paths):
    name = path.split("/")[0]
    w = params[name]["kernel"]
    g = quant.quantize_rtn(w, bits=c.bits)
    if method == "rtn":
      w_hat = g.w_hat
    else:
      x_q = forward(out, x_calib, c.act_bits)[2][i]
      v, _ = quant.adaround_optimize(w, x_q, fp_inputs[i] @ w, g.scale, g.zero, bits=c.bits, iters=c.iters,
                                     lr=c.adaround_lr, batch_size=c.recon_batch, key=jax.random.fold_in(key, i))
      w_hat = quant.soft_quantized_kernel(w, v, g.scale, g.zero, c.bits, hard=True)
    out = {**out, name: {**out[name], "kernel": w_hat}}
  return out


def _apply_q(params, x, *, act_bits):
  logits, feats, _ = forward(params, x, act_bits)
  return logits, feats


_apply_a4 = functools.partial(_apply_q, act_bits=4)  # one object, so pdquant compiles once per layer for all seeds


@functools.partial(jax.jit, static_argnames=("act_bits",))
def _accuracy(params, x, y, *, act_bits):
  return jnp.mean(jnp.argmax(forward(params, x, act_bits)[0], -1) == y)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c = config.ptq
  (x, y), val, test = digits_splits.fit_val_test()
  splits = {"val": val, "test": test}
  seeds = np.arange(config.seeds)
  stacked = _train_fp(jax.vmap(jax.random.key)(jnp.asarray(seeds)), (x, y),
                      steps=config.epochs * (x.shape[0] // config.batch_size), batch_size=config.batch_size,
                      widths=tuple(config.widths), lr=float(config.learning_rate))
  fp_models = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(len(seeds))]
  x_calib = x[:c.calib]

  def fit(arm, hparams, seeds):
    out = {"val": [], "test": []}
    for seed, params in zip(seeds, fp_models):
      if arm.name == "fp":
        q, act_bits = params, None
      else:
        q, act_bits = _quantize(arm.name, params, x_calib, c, jax.random.key(100 + int(seed))), c.act_bits
      for split in out:
        out[split].append(float(_accuracy(q, *splits[split], act_bits=act_bits)))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp", "rtn", "adaround", "pdquant"]
  comparison = protocol.compare([protocol.Arm(n) for n in names], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"accuracy": out["test"]})
  acc = {n: comparison[n].mean("accuracy") for n in names}
  # the claim: acc(PD-Quant) >= acc(local-MSE AdaRound) + 2pt at W2A4
  verdict = comparison.judge(lambda m, b: m["accuracy"] >= b["accuracy"] + config.claim.margin,
                             method="pdquant", baseline="adaround")
  for n in names:
    ctx.print(f"digits-mlp {n} (W{c.bits}A{c.act_bits}): test acc {acc[n]:.4f} +- {comparison[n].std('accuracy'):.4f}")
  ctx.log(0, {f"digits/{n}/test_accuracy": a for n, a in acc.items()})
  claim = {**verdict, "statement": CLAIM, "digits_accuracy": acc,
           "digits_accuracy_std": {n: comparison[n].std("accuracy") for n in names},
           "pdquant_minus_adaround": acc["pdquant"] - acc["adaround"]}
  ctx.print(json.dumps({k: v for k, v in claim.items() if k not in ("statement", "mean", "std")}, indent=1))
  return {"protocol": {"digits": comparison.to_json()}, "claim": claim}
