"""AdaQuant + bias tuning and integer-programming bit allocation (Hubara et al., "Improving Post Training Neural
Quantization: Layer-wise Calibration and Integer Programming", arXiv:2006.10518), catalogue [592], on DIGITS-MLP.

Setting: the DIGITS-MLP of ``experiments/quant/ptq_char.py`` (64-256-256-10, ReLU, Adam 1e-3, 40 epochs, batch 64)
on scikit-learn digits split 70/15/15; calibration: 256 training images. Every Dense layer is quantized with its
weights per output channel and its input per tensor (WbAb, the official CalibTIP grids:
:func:`paperlab.quant.fake_quantize_range`), the input range measured on the full-precision network.

Arms (3 seeds, one point each -- PTQ has nothing to tune -- through :mod:`paperlab.runner.protocol`):

* ``rtn``: W4A4 with the min/max grids (round to nearest), no calibration;
* ``adaquant``: W4A4, sequential AdaQuant (:func:`paperlab.quant.adaquant_layer`, each layer fit on the inputs of
  the already-quantized earlier layers to the full-precision output), then bias tuning
  (:func:`paperlab.quant.bias_tuning`: only the biases, KL to the full-precision logits on the calibration set);
* ``ip``: per-layer precision from {2, 4, 8} (W=A bits) chosen by :func:`paperlab.quant.bit_allocation_ip` at an
  average of 4 bits per weight (cost = parameters x bits, budget = 4 x parameters), the degradation table
  ``dL[l, b]`` being the calibration cross-entropy increase with only layer ``l`` replaced by its ``b``-bit AdaQuant
  version (:func:`paperlab.quant.measure_sensitivities`); the chosen layers come from the sequential AdaQuant runs at
  their precision (the official pipeline mixes per-precision AdaQuant models) and are then bias-tuned.

Claim (catalogue): W4A4 AdaQuant + bias tuning loses at most half of RTN's accuracy drop, and the IP allocation at
an average of 4 bits is at least as accurate as uniform 4 bits with its size within the budget.

Measured at the default config (seeds 0-2, test accuracy means; 270 test images, one image = 0.37pt):

* full precision 0.9665; W4A4 RTN 0.9603 (drop 0.62pt); AdaQuant alone 0.9616; AdaQuant + bias tuning 0.9591
  (drop 0.74pt): "AdaQuant + bias tuning loses <= 0.5 x RTN's drop" does NOT reproduce -- at W4A4 this MLP hardly
  degrades (RTN's validation accuracy is even above full precision), so the drops are a few test images and the
  ratio is noise (another draw of AdaQuant's mini-batches gave 0.9641, i.e. 0.39x).
* the IP at an average of 4 bits over {2, 4, 8} chooses 4 bits for every layer in every seed (in the measured
  table 2 bits on any layer costs more than 8 bits elsewhere recovers), so its accuracy equals uniform 4 bits
  (0.9591) and its size equals the budget (337,920 bits): this part holds, trivially.
* for scale, ``--config.bits=2`` (W2A2; the IP budget is then the cheapest allocation, uniform 2 bits): full
  precision 0.9665, RTN 0.9182 (drop 4.83pt), AdaQuant + bias tuning 0.9393 (drop 2.73pt = 0.56x RTN's): AdaQuant
  clearly helps once quantization hurts, but not by the claimed factor 2 at this scale either.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import papers, quant
from paperlab.runner import digits_splits, protocol
from paperlab.runner.config import load_experiment

ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # the shared substrate

PAPER_ID = 592
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "AdaQuant keeps the best iterate on the whole calibration set (keep_best; the official code returns the last "
    "step); steps, mini-batch and learning rates are the official code's (100 steps of 50 samples; 1e-5 weights, "
    "1e-3 bias, 1e-3 weight grid, 1e-1 input grid)",
    "calibration set: 256 training images (paper: ~1k ImageNet images); biases stay in float (the official layer "
    "quantizes them to W+A bits)",
    "bias tuning: full-batch Adam (lr 1e-3, 200 steps) on the biases only, KL to the full-precision logits (the "
    "official run also updates the quantization thresholds, with its training regime's optimizer); there is no "
    "batch norm to re-estimate in the MLP",
    "IP: weight-memory cost (parameters x bits) over {2, 4, 8} with the same bits for weights and inputs of a layer; "
    "degradation measured as calibration cross-entropy increase with the other layers in full precision (the "
    "official code keeps the others at 8 bits)",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.epochs = 40
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.widths = (256, 256)
  c.calib = 256
  c.bits = 4
  c.ip_bits = (2, 4, 8)
  c.adaquant = ml_collections.ConfigDict(dict(iters=100, batch_size=50, lr_w=1e-5, lr_b=1e-3, lr_w_qparams=1e-3,
                                              lr_x_qparams=1e-1))
  c.bias_tuning = ml_collections.ConfigDict(dict(iters=200, lr=1e-3))
  return c


def _layers(model) -> list:
  """``[(kernel, bias)]`` of the MLP's Dense layers in forward order."""
  mods = list(model.hidden) + [model.head]
  return [(m.kernel[...].astype(jnp.float32), m.bias[...].astype(jnp.float32)) for m in mods]


def _as_bits(bits: tuple) -> jax.Array:
  """A per-layer bit assignment (``None``: float) as the traced vector of :func:`_forward` (0 = float)."""
  return jnp.asarray([0 if v is None else v for v in bits], jnp.float32)


def _fp_params(kernel: jax.Array, bias: jax.Array) -> quant.AdaQuantParams:
  """A float layer in the quantized layers' structure (its grids are never used)."""
  one, zero = jnp.ones(kernel.shape[1]), jnp.zeros(kernel.shape[1])
  return quant.AdaQuantParams(kernel, bias, one, zero, jnp.float32(1.0), jnp.float32(0.0))


@jax.jit
def _forward(params: tuple, x: jax.Array) -> jax.Array:
  """``params = (layers, bits)``: the MLP with layer ``i`` at ``bits[i]`` (W=A bits; 0: float). One compiled
  program serves every assignment (the float and quantized branches are both computed; where selects)."""
  layers, bits = params
  h = x.astype(jnp.float32)
  for i, p in enumerate(layers):
    b = jax.lax.stop_gradient(bits[i])
    hq = quant.adaquant_forward(p, h, jnp.where(b > 0, b, 8.0), jnp.where(b > 0, b, 8.0))
    h = jnp.where(b > 0, hq, h @ p.kernel + p.bias)
    if i < len(layers) - 1:
      h = jax.nn.relu(h)
  return h


def _inputs(bits: tuple, layers: list, x: jax.Array, upto: int) -> jax.Array:
  """The input of layer ``upto`` in the (partly quantized) network."""
  h = x.astype(jnp.float32)
  for i in range(upto):
    p = layers[i]
    h = h @ p[0] + p[1] if bits[i] is None else quant.adaquant_forward(p, h, bits[i], bits[i])
    h = jax.nn.relu(h)
  return h


def _rtn(fp_layers, x_calib, bits):
  out = []
  for i, (k, b) in enumerate(fp_layers):
    x_in = _inputs((None,) * len(fp_layers), fp_layers, x_calib, i)
    out.append(quant.AdaQuantParams(k, b, *quant.weight_qparams(k), *quant.input_qparams(x_in)))
  return out


def _adaquant_sequential(fp_layers, x_calib, bits, cfg, key):
  """Sequential AdaQuant at WbAb: layer ``i`` sees the inputs of the quantized layers ``< i``."""
  fp_bits = (None,) * len(fp_layers)
  done: list = []
  for i, (k, b) in enumerate(fp_layers):
    x_fp = _inputs(fp_bits, fp_layers, x_calib, i)
    x_q = _inputs((bits,) * i, done, x_calib, i)
    y_fp = x_fp @ k + b
    res = quant.adaquant_layer(k, x_q, y_fp, bias=b, bits=bits, act_bits=bits, iters=cfg.iters,
                               batch_size=cfg.batch_size, lr_w=cfg.lr_w, lr_b=cfg.lr_b,
                               lr_w_qparams=cfg.lr_w_qparams, lr_x_qparams=cfg.lr_x_qparams,
                               x_qparams=quant.input_qparams(x_fp), key=jax.random.fold_in(key, i))
    done.append(res.params)
  return done


def _bias_tune(bits, layers, x_calib, ref_logits, cfg):
  (tuned, _), _ = quant.bias_tuning(_forward, (list(layers), _as_bits(bits)), x_calib, ref_logits,
                                    select=r"0/\d+/bias", iters=cfg.iters, lr=cfg.lr)
  return tuned


def _logits(bits, layers, x):
  return _forward((list(layers), _as_bits(bits)), x)


def _ce(bits, layers, x, y) -> float:
  return float(optax.softmax_cross_entropy_with_integer_labels(_logits(bits, layers, x), y).mean())


def _acc(bits, layers, x, y) -> float:
  return float(jnp.mean(jnp.argmax(_logits(bits, layers, x), -1) == y))


def _quantize_seed(m, x_calib, y_calib, c, key) -> dict:
  """All quantized networks of one seed: ``{arm: (bits tuple, layers)}`` plus the IP's allocation."""
  fp_raw = _layers(m)
  fp = [_fp_params(k, b) for k, b in fp_raw]
  n = len(fp)
  fp_bits = (None,) * n
  ref = _logits(fp_bits, fp, x_calib)
  per_bits = {b: _adaquant_sequential(fp_raw, x_calib, b, c.adaquant, jax.random.fold_in(key, b)) for b in c.ip_bits}
  u = c.bits
  out = {"fp": (fp_bits, fp), "rtn": ((u,) * n, _rtn(fp_raw, x_calib, u)),
         "adaquant_only": ((u,) * n, per_bits[u]),
         "adaquant": ((u,) * n, _bias_tune((u,) * n, per_bits[u], x_calib, ref, c.bias_tuning))}
  names = [str(i) for i in range(n)]

  def evaluate(assignment):
    bits = tuple(assignment.get(nm) for nm in names)
    layers = [fp[i] if b is None else per_bits[b][i] for i, b in enumerate(bits)]
    return _ce(bits, layers, x_calib, y_calib)

  delta = quant.measure_sensitivities(evaluate, names, c.ip_bits)
  sizes = [int(k.size) for k, _ in fp_raw]
  cost = quant.allocation_cost(sizes, c.ip_bits)
  budget = float(u * sum(sizes))
  chosen = tuple(int(b) for b in quant.bit_allocation_ip(delta, cost, budget, bits=c.ip_bits))
  mixed = [per_bits[b][i] for i, b in enumerate(chosen)]
  out["ip"] = (chosen, _bias_tune(chosen, mixed, x_calib, ref, c.bias_tuning))
  size = float(sum(s * b for s, b in zip(sizes, chosen)))
  return {"nets": out, "ip_bits": chosen, "ip_size_bits": size, "budget_bits": budget, "delta": delta.tolist()}


ARMS = ("fp", "rtn", "adaquant_only", "adaquant", "ip")


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c = config
  (x, y), val, test = digits_splits.fit_val_test()
  splits = {"val": val, "test": test}
  seeds = np.arange(c.seeds)
  fp_models = ptq_char.train_digits_mlps(x, y, seeds, widths=c.widths, learning_rate=c.learning_rate,
                                         epochs=c.epochs, batch_size=c.batch_size)
  x_calib, y_calib = x[:c.calib], y[:c.calib]
  per_seed = [_quantize_seed(m, x_calib, y_calib, c, jax.random.key(100 + int(s))) for s, m in zip(seeds, fp_models)]

  def fit(arm, hparams, seeds):
    out = {"val": [], "test": []}
    for q in per_seed:
      bits, layers = q["nets"][arm.name]
      for split in out:
        out[split].append(_acc(bits, layers, *splits[split]))
    return {k: np.asarray(v) for k, v in out.items()}

  comparison = protocol.compare([protocol.Arm(n) for n in ARMS], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"accuracy": out["test"]})
  acc = {n: comparison[n].mean("accuracy") for n in ARMS}
  within_budget = all(q["ip_size_bits"] <= q["budget_bits"] for q in per_seed)
  ip_ok = acc["ip"] >= acc["adaquant"] and within_budget
  verdict = comparison.judge(lambda m, b: acc["fp"] - m["accuracy"] <= 0.5 * (acc["fp"] - b["accuracy"]) and ip_ok,
                             method="adaquant", baseline="rtn")
  for n in ARMS:
    ctx.print(f"digits-mlp W{c.bits}A{c.bits} {n}: test acc {acc[n]:.4f} +- {comparison[n].std('accuracy'):.4f}")
  ctx.log(0, {f"digits/{n}/test_accuracy": a for n, a in acc.items()})
  claim = {**verdict, "statement": CLAIM, "accuracy": acc,
           "accuracy_std": {n: comparison[n].std("accuracy") for n in ARMS},
           "drop_rtn": acc["fp"] - acc["rtn"], "drop_adaquant": acc["fp"] - acc["adaquant"],
           "ip_bits": [list(q["ip_bits"]) for q in per_seed],
           "ip_size_bits": [q["ip_size_bits"] for q in per_seed], "budget_bits": [q["budget_bits"] for q in per_seed],
           "ip_within_budget": within_budget, "ip_at_least_uniform": bool(acc["ip"] >= acc["adaquant"]),
           "delta": [q["delta"] for q in per_seed]}
  ctx.print(json.dumps({k: v for k, v in claim.items() if k not in ("statement", "mean", "std", "delta")}, indent=1))
  return {"digits": comparison.to_json(), "protocol": {"digits": comparison.to_json()}, "claim": claim}
