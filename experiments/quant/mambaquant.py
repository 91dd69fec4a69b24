"""MambaQuant's KLT-enhanced rotation vs a plain Hadamard rotation at W8A8 (Xu et al., "MambaQuant: Quantizing the
Mamba Family with Variance Aligned Rotation Methods", arXiv:2501.13484), catalogue [80].

Setting (the catalogue's): synthetic heavy-tailed activations through layer 2 of DIGITS-MLP-OUT
(``experiments/quant/ptq_char.py``: MLP 64-256-256-10 trained 40 epochs, 4 hidden units of layer 1 scaled by 30 and
their rows of the layer-2 kernel by 1/30; one trained model per seed). The activations have the layer's 256
channels, ``x_ij = |t_3| * sigma_j`` (Student t with 3 degrees of freedom, folded to be non-negative like the ReLU
features layer 2 reads), with per-channel variances ``sigma_j^2`` log-spaced over 1e0..1e3 (a spread of 1e3) in a
seeded random order; n = 256 calibration tokens, 1024 validation and 1024 test tokens, fresh per seed.

Arms (each computes its rotation on the calibration tokens and quantizes ``(x T) (T^-1 W)``, ``T`` the input
transform, activations and kernel each on a per-tensor 8-bit asymmetric min-max grid of the tensor itself,
:func:`paperlab.quant.fake_quantize` with ``per_tensor=True``): ``none`` (``T = I``), ``h`` (Hadamard,
:func:`paperlab.quant.hadamard`), ``klt_h`` (``R = K H``, :func:`paperlab.quant.klt_hadamard_rotation`) and, reported
beside, ``smooth_klt_h`` (MambaQuant's smooth-fused rotation, :func:`paperlab.quant.smooth_then_rotate`,
alpha 0.5). Metric: the layer output MSE ``mean((x W - Q(x T) Q(T^-1 W))^2)`` on the test tokens. Claim on seed
means: ``MSE(klt_h) <= 0.7 MSE(h)`` and ``MSE(h) <= MSE(none)``; control: the Hadamard arm passed as KLT+H.
Nothing is tuned.

Measured at the default config (seeds 0-2; per-seed values in ``experiments/records/80.json``), not reproduced:

* output MSE: none 3.14 (4.70/1.89/2.84), Hadamard 0.264 (0.321/0.210/0.261), KLT+H 0.462 (0.683/0.252/0.452),
  smooth-fused KLT+H 0.338 (0.479/0.206/0.330). ``MSE(H) <= MSE(none)`` holds (12x lower), but KLT+H is 1.75x
  the Hadamard arm's MSE, not <= 0.7x: the KLT does equalize the rotated channels' variances (to float precision,
  see tests/quant/test_mambaquant.py), yet with per-tensor quantization of heavy-tailed tokens the error follows
  the largest entries, which the eigenbasis of a 256-token estimate of a 256-dim covariance does not shrink better
  than H alone. The control (H as KLT+H) fails. A full run takes about 35 CPU-s.

CI scale (CI_CONFIG: the DIGITS-MLP-OUT model trained 4 epochs instead of 40); at it: none 2.73, H 0.241
(0.291/0.190/0.244), KLT+H 0.418 (0.622/0.220/0.412), ratio 1.73: not reproduced, as at full scale; 29-36 CPU-s
for its test (measured under load; mostly compiling the substrate's training).
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

ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # the DIGITS-MLP-OUT substrate

PAPER_ID = 80
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the catalogue's 'n=256' is read as 256 calibration tokens (the layer's 256 channels fix the width); the "
    "heavy-tailed activations are folded Student-t(3) (non-negative, as the ReLU features layer 2 reads) scaled per "
    "channel; validation and test use 1024 fresh tokens each",
    "activations are quantized per tensor with the range of the quantized tensor itself (dynamic), so the "
    "comparison is not confounded by clipping to a calibration range",
    "the rotation is applied online to the layer-2 input (a ReLU precedes it), not fused into layer 1",
    "DIGITS-MLP-OUT: digits split 75/25 with the validation set a 15% tail of the training split (catalogue "
    "70/15/15)",
)
CI_CONFIG = {"digits.epochs": 4}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.digits = ml_collections.ConfigDict(dict(epochs=40, batch_size=64, learning_rate=1e-3, widths=(256, 256),
                                            outlier_units=4, outlier_factor=30.0))
  c.data = ml_collections.ConfigDict(dict(calib=256, val=1024, test=1024, df=3.0, variance_spread=1e3))
  c.bits = 8
  c.alpha = 0.5  # SmoothQuant's default migration strength for the smooth-fused arm
  c.claim = ml_collections.ConfigDict(dict(max_ratio=0.7))
  return c


def synthetic_activations(key: jax.Array, tokens: int, scales: np.ndarray, df: float) -> jax.Array:
  """``|t_df| * scales``: ``tokens`` heavy-tailed non-negative activations, per-channel scale ``scales``."""
  return jnp.abs(jax.random.t(key, df, (tokens, scales.shape[0]))) * jnp.asarray(scales, jnp.float32)


def _transform(arm: str, w, x_calib, alpha) -> tuple[jax.Array, jax.Array]:
  """``(T, W')`` of an arm: the input transform and the fused kernel, ``(x T) W' = x W``."""
  n = w.shape[0]
  if arm == "none":
    return jnp.eye(n), w
  if arm == "h":
    h = quant.hadamard(n)
    return h, quant.apply_rotation(w, h)
  if arm == "klt_h":
    r = quant.klt_hadamard_rotation(x_calib)
    return r, quant.apply_rotation(w, r)
  layer = quant.smooth_then_rotate(w, x_calib, alpha=alpha)
  return layer.transform, layer.w


@functools.partial(jax.jit, static_argnums=4)
def _output_mse(x, w, t, w_new, bits):
  xq = quant.fake_quantize(x @ t, bits=bits, per_tensor=True)
  wq = quant.fake_quantize(w_new, bits=bits, per_tensor=True)
  return jnp.mean(jnp.square(x @ w - xq @ wq))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c, d = config.digits, config.data
  (x, y), _ = ptq_char.digits_tail_split()
  seeds = np.arange(config.seeds)
  fp_models = [ptq_char._inject_outliers(m, jax.random.key(1000 + int(i)), c.outlier_units, c.outlier_factor)  # pylint: disable=protected-access
               for i, m in zip(seeds, ptq_char.train_digits_mlps(x, y, seeds, widths=c.widths,
                                                                 learning_rate=c.learning_rate, epochs=c.epochs,
                                                                 batch_size=c.batch_size))]
  kernels = [m.hidden[1].kernel[...] for m in fp_models]  # layer 2: 256 x 256
  data = {}
  for s, w in zip(seeds, kernels):
    rng = np.random.default_rng(int(s))
    scales = np.sqrt(np.logspace(0.0, np.log10(d.variance_spread), w.shape[0]))[rng.permutation(w.shape[0])]
    keys = jax.random.split(jax.random.key(int(s)), 3)
    data[int(s)] = {split: synthetic_activations(k, n, scales, d.df)
                    for split, k, n in zip(("calib", "val", "test"), keys, (d.calib, d.val, d.test))}

  def fit(arm, hparams, seeds):
    out = {"val": [], "test": []}
    for s, w in zip(seeds, kernels):
      xs = data[int(s)]
      t, w_new = _transform(arm.name, w, xs["calib"], config.alpha)
      for split in out:
        out[split].append(float(_output_mse(xs[split], w, t, w_new, config.bits)))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["none", "h", "klt_h", "smooth_klt_h"]
  comparison = protocol.compare([protocol.Arm(n) for n in names], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"mse": out["test"]}, maximize=False)
  mse = {n: comparison[n].mean("mse") for n in names}
  verdict = comparison.judge(lambda m, b: m["mse"] <= config.claim.max_ratio * b["mse"] and b["mse"] <= mse["none"],
                             method="klt_h", baseline="h")
  for n in names:
    ctx.print(f"digits-mlp-out layer 2, synthetic activations, W{config.bits}A{config.bits} per tensor, {n}: "
              f"output MSE {mse[n]:.5g} +- {comparison[n].std('mse'):.3g}")
  ctx.log(0, {f"mse/{n}": mse[n] for n in names})
  results = {"protocol": comparison.to_json()}
  results["claim"] = {
      "statement": CLAIM,
      "passed": verdict["passed"], "holds": verdict["holds"], "control_passes": verdict["control_passes"],
      "mse": mse, "mse_std": {n: comparison[n].std("mse") for n in names},
      "ratio_klt_h_over_h": mse["klt_h"] / mse["h"], "h_le_none": bool(mse["h"] <= mse["none"]),
      "per_seed": {n: [float(v) for v in comparison[n].test["mse"]] for n in names},
  }
  ctx.print(json.dumps({k: v for k, v in results["claim"].items() if k != "statement"}, indent=1, default=float))
  return results
