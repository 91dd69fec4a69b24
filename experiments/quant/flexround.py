"""FlexRound vs AdaRound vs round-to-nearest (Lee et al., "FlexRound: Learnable Rounding based on Element-wise
Division for Post-Training Quantization", arXiv:2306.00317, ICML 2023), catalogue [14], on DIGITS-MLP.

Setting (the catalogue's): the DIGITS-MLP of ``experiments/quant/fp6.py`` (64-256-256-10, ReLU, Adam 1e-3, 30
epochs, batch 64, seeds 0-2; the digits training split minus a 15% validation tail; trained once and shared with the
FP6, LoRC, LeanQuant and BiLLM reproductions) quantized at W3 per tensor (one asymmetric min-max grid per kernel, the
paper's per-tensor setting) with 8-bit activations (A8: every Dense layer's input is fake-quantized per tensor on an
asymmetric 8-bit grid whose range is the min/max of that input over the calibration set in the full-precision
network -- static ranges, fixed before the weights are quantized). Three ways to round the weights onto the same
initial grid:

* RTN: round to nearest;
* AdaRound (``paperlab.quant.adaround_optimize``, arXiv:2004.10568): learned up/down rounding on the fixed grid,
  lambda 0.01, beta 20 -> 2 after a 20% warm-up, Adam lr 1e-3;
* FlexRound (``paperlab.quant.flexround_layer``): learned ``s1`` (the common grid size, per tensor), element-wise
  ``S2`` and per-output-channel ``s3``, Adam lr 2.5e-3 (the official scripts), straight-through rounding.

Both learned methods run the same layer-wise reconstruction: layer by layer in forward order, each layer's
pre-activation output ``x_fp W`` is reconstructed from the inputs ``x_q`` that the network with its earlier layers
already quantized (weights and activations) produces, on 256 calibration images, mini-batches of 32, the same number
of Adam steps per layer. Metric: test accuracy (270 images; one image is 0.37pt).

Arms are compared through :mod:`paperlab.runner.protocol` (3 seeds, one point per arm with the papers' defaults,
test read once per arm, claim judged on seed means; control "RTN passed as FlexRound").

Measured at the default config (seeds 0-2, means +- std over seeds; 1 test image = 0.37pt, test once per arm):

* full precision 0.9733 +- 0.0018; W32A8 (activations only) 0.9726 +- 0.0028;
* W3A8 per tensor: RTN 0.9696 +- 0.0010, AdaRound 0.9711 +- 0.0031, FlexRound 0.9726 +- 0.0010 (at 300 steps per
  layer: AdaRound 0.9696, FlexRound 0.9733).

FlexRound >= AdaRound - 0.5pt holds (+0.15pt), but FlexRound >= RTN + 3pt does not (+0.30pt): the claim does not
reproduce. On this MLP round-to-nearest at W3 per tensor already stays within 0.37pt of full precision, so no
rounding method can gain 3pt over it; the "+3pt" was a guess to calibrate, and it stays asserted as stated.
CI scale (CI_CONFIG: fp6.py's, which shortens only the CHAR-LM substrate this experiment does not use, so the
test hits the DIGITS models the other substrate experiments train in the same process): the run is the default one;
at it: the numbers above (not reproduced, as the record), CPU-s as the default run's.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import papers, quant
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

fp6 = load_experiment(pathlib.Path(__file__).with_name("fp6.py"))  # the shared trained substrates (cached)

PAPER_ID = 14
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "reconstruction steps: 200 Adam steps per layer for both FlexRound and AdaRound (paper: 5000 per block for "
    "FlexRound, 10k for AdaRound; AdaRound's beta schedule is compressed accordingly) so the run fits the CI budget",
    "layer-wise reconstruction of each Dense layer's pre-activation output (the catalogue's layer-wise setting; the "
    "paper's main results reconstruct blocks)",
    "the grid (s1 at initialization) is the min-max asymmetric per-tensor grid shared with RTN and AdaRound (the "
    "paper initializes s1 by an MSE search; the released scripts run with clipping=False, i.e. min-max)",
    "A8 is static per-tensor asymmetric min-max fake quantization of every Dense layer's input with ranges from the "
    "full-precision network on the calibration set (the paper uses the LSQ/QDrop-style activation quantizers of its "
    "ImageNet setting)",
    "calibration: 256 training images, mini-batches of 32 (paper: 1024 ImageNet images)",
    "DIGITS-MLP: the shared substrate of experiments/quant/fp6.py (the digits training split minus a 15% "
    "validation tail instead of the catalogue's 70/15/15; 30 epochs)",
)
CI_CONFIG = dict(fp6.CI_CONFIG)  # the shared substrates' CI scale (paperlab reproduce 14 --ci)


def get_config() -> ml_collections.ConfigDict:
  c = fp6.get_config()  # seeds, digits and char as fp6.py, so its trained substrates are shared
  del c.claim
  c.ptq = ml_collections.ConfigDict(dict(bits=3, act_bits=8, iters=200, recon_batch=32, adaround_lr=1e-3,
                                         flexround_lr=2.5e-3))
  return c


def mlp_layers(model) -> list:
  """``[(kernel, bias), ...]`` of a DIGITS-MLP's Dense layers in forward order."""
  layers = list(model.hidden) + [model.head]
  return [(layer.kernel[...], layer.bias[...]) for layer in layers]


def fake_quantize_act(x: jax.Array, scale: jax.Array, zero: jax.Array, bits: int) -> jax.Array:
  """Static per-tensor activation fake quantization ``scale * (clip(round(x / scale) + zero) - zero)``."""
  return quant.dequantize_codes(quant.quantize_to_grid(x, scale, zero, bits), scale, zero)


@functools.partial(jax.jit, static_argnames=("act_bits",))
def forward(layers, x, act_q, *, act_bits: int):
  """``(logits, inputs)`` of the MLP on ``x``: ``inputs[i]`` is what Dense layer ``i`` multiplies, fake-quantized by
  ``act_q[i] = (scale, zero)`` (``act_q = None``: float activations)."""
  inputs = []
  for i, (w, b) in enumerate(layers):
    if act_q is not None:
      x = fake_quantize_act(x, *act_q[i], act_bits)
    inputs.append(x)
    x = x @ w + b
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x, inputs


def activation_grids(layers, x_calib, act_bits: int) -> list:
  """Per-tensor ``(scale, zero)`` of every Dense input from its min/max over the calibration set (float network)."""
  _, inputs = forward(layers, x_calib, None, act_bits=act_bits)
  return [quant.grid_params(jnp.min(x_in), jnp.max(x_in), act_bits) for x_in in inputs]


def per_tensor_grid(w: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
  """The min-max asymmetric per-tensor grid, broadcast to ``(1, out)`` as the rounding methods take it."""
  scale, zero = quant.grid_params(jnp.min(w), jnp.max(w), bits)
  return jnp.full((1, w.shape[1]), scale), jnp.full((1, w.shape[1]), zero)


def quantize_layers(method: str, layers, x_calib, act_q, config, key) -> list:
  """Layer-wise PTQ of every kernel: ``method`` in ``rtn | adaround | flexround`` (module docstring).

  The learned methods see every kernel zero-padded to one square shape (and the inputs padded with zero features),
  so one compiled optimization serves all layers: a zero row meets a zero input, a zero column has a zero target,
  zero lies on every grid, so the padding changes neither the grid nor the reconstructed outputs.
  """
  c = config
  size = max(max(w.shape) for w, _ in layers)
  out = []
  for i, (w, b) in enumerate(layers):
    scale, zero = per_tensor_grid(w, c.bits)
    if method == "rtn":
      w_hat = quant.dequantize_codes(quant.quantize_to_grid(w, scale, zero, c.bits), scale, zero)
    else:
      pad = ((0, size - w.shape[0]), (0, size - w.shape[1]))
      w_pad = jnp.pad(w, pad)
      s_pad, z_pad = (jnp.pad(a, ((0, 0), pad[1]), mode="edge") for a in (scale, zero))
      x_fp = jnp.pad(forward(layers, x_calib, None, act_bits=c.act_bits)[1][i], ((0, 0), pad[0]))
      x_q = jnp.pad(forward(out + list(layers[i:]), x_calib, act_q, act_bits=c.act_bits)[1][i], ((0, 0), pad[0]))
      k = jax.random.fold_in(key, i)
      if method == "adaround":
        v, _ = quant.adaround_optimize(w_pad, x_q, x_fp @ w_pad, s_pad, z_pad, bits=c.bits, iters=c.iters,
                                       lr=c.adaround_lr, batch_size=c.recon_batch, key=k)
        w_hat = quant.soft_quantized_kernel(w_pad, v, s_pad, z_pad, c.bits, hard=True)
      else:
        w_hat = quant.flexround_layer(w_pad, x_q, x_fp=x_fp, bits=c.bits, per_tensor=True, iters=c.iters,
                                      lr=c.flexround_lr, batch_size=c.recon_batch, key=k).w_hat
      w_hat = w_hat[:w.shape[0], :w.shape[1]]
    out.append((w_hat.astype(w.dtype), b))
  return out


@functools.partial(jax.jit, static_argnames=("act_bits",))
def _accuracy(layers, act_q, xs, ys, *, act_bits):
  return jnp.mean(jnp.argmax(forward(layers, xs, act_q, act_bits=act_bits)[0], -1) == ys)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c = config.ptq
  sub = fp6._digits_models(fp6._key(config))  # pylint: disable=protected-access  (fp6's cache, digits only)
  splits = sub["splits"]
  seeds = np.arange(config.seeds)
  fp_layers = [mlp_layers(m) for m in sub["models"]]
  x_calib = sub["calib"][0]
  act_grids = [activation_grids(layers, x_calib, c.act_bits) for layers in fp_layers]
  suffix = f"_w{c.bits}a{c.act_bits}"

  def fit(arm, hparams, seeds):
    out = {"val": [], "test": []}
    for seed, layers, act_q in zip(seeds, fp_layers, act_grids):
      if arm.name == "fp":
        q_layers, act_q = layers, None
      elif arm.name == f"fp_a{c.act_bits}":
        q_layers = layers
      else:
        q_layers = quantize_layers(arm.name.removesuffix(suffix), layers, x_calib, act_q, c,
                                   jax.random.key(100 + int(seed)))
      for split in out:
        out[split].append(float(_accuracy(q_layers, act_q, *splits[split], act_bits=c.act_bits)))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp", f"fp_a{c.act_bits}"] + [m + suffix for m in ("rtn", "adaround", "flexround")]
  comparison = protocol.compare([protocol.Arm(n) for n in names], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"accuracy": out["test"]})
  acc = {n: comparison[n].mean("accuracy") for n in names}
  ada = acc["adaround" + suffix]
  # the claim: FlexRound acc >= AdaRound acc - 0.5pt and >= RTN acc + 3pt
  verdict = comparison.judge(lambda m, b: m["accuracy"] >= ada - 0.005 and m["accuracy"] >= b["accuracy"] + 0.03,
                             method="flexround" + suffix, baseline="rtn" + suffix)
  for n in names:
    ctx.print(f"digits-mlp {n}: test acc {acc[n]:.4f} +- {comparison[n].std('accuracy'):.4f}")
  ctx.log(0, {f"digits/{n}/test_accuracy": a for n, a in acc.items()})
  claim = {**verdict, "statement": CLAIM, "digits_accuracy": acc,
           "digits_accuracy_std": {n: comparison[n].std("accuracy") for n in names},
           "flexround_minus_adaround": acc["flexround" + suffix] - ada,
           "flexround_minus_rtn": acc["flexround" + suffix] - acc["rtn" + suffix]}
  ctx.print(json.dumps({k: v for k, v in claim.items() if k not in ("statement", "mean", "std")}, indent=1))
  return {"digits": comparison.to_json(), "protocol": {"digits": comparison.to_json()}, "claim": claim}
