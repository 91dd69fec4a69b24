"""BiLLM vs naive binarization vs GPTQ-binary (Huang et al., "BiLLM: Pushing the Limit of Post-Training
Quantization for LLMs", arXiv:2402.04291), catalogue [111], on DIGITS-MLP.

Setting (the catalogue's): the DIGITS-MLP of ``experiments/quant/fp6.py`` (64-256-256-10, ReLU, Adam 1e-3, 30
epochs, seeds 0-2; the digits training split minus a 15% validation tail; trained once and shared with the FP6,
LoRC, FlexRound and LeanQuant reproductions). The first and the last Dense layer are quantized to 8 bits (RTN per
output channel) in every arm; the hidden layer between them (``hidden/1``, 256x256) is binarized:

* naive: ``sign(w) * mean|w|`` per output channel (the L2-optimal scale of ``sign(w)``);
* GPTQ-binary: GPTQ's column loop with error feedback (percdamp 0.01, block 128) onto the same per-channel
  two-point grid ``{-mean|w|, +mean|w|}`` (``paperlab.quant.leanquant_layer`` with that fixed code book: the GPTQ
  loop with a nearest-point quantizer);
* BiLLM (``paperlab.quant.billm_model``): salient columns by ``w^2 / [H^-1]_jj^2`` with residual (order-2)
  binarization, the rest split at a searched magnitude into two order-1 groups, GPTQ error feedback between blocks
  of 128 (the official code's defaults).

Calibration: 256 training images, through the network whose first layer is already at 8 bits. Metric: test
accuracy (270 images; one image is 0.37pt). Bits per weight of the binarized layer are reported two ways: the
paper's count (one sign bit per weight, a second for the salient columns' residual, plus the salient-column bitmap)
and the full count that adds the concentrated/sparse group bitmap and the float16 scales and means.

Arms are compared through :mod:`paperlab.runner.protocol` (3 seeds, one point per arm: nothing is tuned, test read
once per arm, claim judged on seed means; control "naive binarization passed as BiLLM").

Measured at the default config (seeds 0-2, means +- std):

* full precision 0.9733 +- 0.0018; first and last layers at 8 bits, hidden/1 in float 0.9733 +- 0.0018;
* hidden/1 binarized: naive 0.9696 +- 0.0010, GPTQ-binary 0.9719 +- 0.0021, BiLLM 0.9689 +- 0.0018;
* BiLLM bits per weight of hidden/1: 1.174 by the paper's count (about 17% salient columns: the search may pick up
  to 49 of every 128-column block, and these layers are narrow), 3.00 with the group bitmap and float16 scales.

Not reproduced: BiLLM is 0.07pt below naive binarization (claim: +15pt) and 0.30pt below GPTQ-binary. Binarizing
the one hidden-to-hidden layer of this MLP costs naive binarization only 0.37pt (one test image), so the +15pt was a
guess to calibrate that this substrate cannot show; kept as stated.
CI scale (CI_CONFIG: fp6.py's, which shortens only the CHAR-LM substrate this experiment does not use, so the
test hits the DIGITS models the other substrate experiments train in the same process): the run is the default one;
at it: the numbers above (not reproduced, as the record), CPU-s as the default run's.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from paperlab import papers, quant
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

fp6 = load_experiment(pathlib.Path(__file__).with_name("fp6.py"))  # the shared trained substrates (cached)
ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # Dense-kernel walk and metrics

PAPER_ID = 111
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the DIGITS-MLP has one hidden-to-hidden layer (hidden/1, 256x256): it is the only binarized layer, the first "
    "and last layers are at 8 bits (RTN per output channel, not GPTQ)",
    "GPTQ-binary's grid is the per-output-channel {-mean|w|, +mean|w|} of the original weight, fixed before the loop",
    "the '~1.1 bit' is the paper's count (sign bits, the salient residual's extra bit, the salient-column bitmap); "
    "the full count with the group bitmap and float16 scales is reported beside it",
    "DIGITS-MLP: the shared substrate of experiments/quant/fp6.py (the digits training split minus a 15% "
    "validation tail instead of the catalogue's 70/15/15; 30 epochs); calibration 256 training images",
)
CI_CONFIG = dict(fp6.CI_CONFIG)  # the shared substrates' CI scale (paperlab reproduce 111 --ci)


def get_config() -> ml_collections.ConfigDict:
  c = fp6.get_config()  # seeds, digits and char as fp6.py, so its trained substrates are shared
  del c.claim
  c.ptq = ml_collections.ConfigDict(dict(layer="hidden/1", end_bits=8, blocksize=128, percdamp=0.01,
                                         max_salient=50))
  return c


def naive_binarize(w: jax.Array) -> jax.Array:
  """``sign(w) * mean|w|`` per output channel (column of the Flax kernel)."""
  return jnp.sign(w) * jnp.mean(jnp.abs(w), axis=0, keepdims=True)


def gptq_binary_layer(w: jax.Array, h: jax.Array, percdamp: float, blocksize: int) -> jax.Array:
  """GPTQ's loop onto the per-channel two-point grid ``{-mean|w|, mean|w|}`` (each point listed twice: the code
  book of a 2-bit grid with two distinct points, nearest-point rounding = ``sign``)."""
  a = jnp.mean(jnp.abs(w), axis=0)
  codebook = jnp.stack([-a, -a, a, a], axis=1)
  return quant.leanquant_layer(w, h, bits=2, percdamp=percdamp, blocksize=blocksize, codebook=codebook).w_hat


def paper_bits(bw, blocksize: int) -> tuple[float, float]:
  """``(paper, full)`` bits per weight of a :class:`paperlab.quant.BiLLMWeight` ``(in, out)``.

  Paper: 1 sign bit per weight, +1 for the salient columns' second residual term, +1 bit per input column per
  block for the salient-column bitmap. Full: adds 1 group bit per non-salient weight and, per output channel and
  block, float16 ``(alpha, mu)`` pairs: two for the salient order-2 term, one each for the two groups.
  """
  rows, cols = bw.w_hat.shape  # (in, out)
  n = rows * cols
  salient = float(jnp.sum(bw.salient)) * cols
  blocks = -(-rows // blocksize)
  paper = (n + salient + rows) / n
  full = paper + (n - salient) / n + blocks * cols * 4 * 2 * 16 / n
  return paper, full


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  c = config.ptq
  sub = fp6._digits_models(fp6._key(config))  # pylint: disable=protected-access  (fp6's cache, digits only)
  calib, splits = sub["calib"], sub["splits"]
  graphdef = nnx.split(sub["models"][0])[0]
  include = f"^{c.layer}$"

  def ends_quantized(m):
    return quant.replace_kernels(m, {p: quant.fake_quantize_rtn(k, bits=c.end_bits)
                                     for p, k in ptq_char.kernels(m).items() if p != c.layer})

  bits_seen = {"paper": [], "full": []}

  def quantized(method, m):
    if method == "fp":
      return m
    m8 = ends_quantized(m)
    if method == f"w{c.end_bits}_ends":
      return m8
    if method == "naive":
      return quant.replace_kernels(m8, {c.layer: naive_binarize(ptq_char.kernels(m8)[c.layer])})
    if method == "gptq_binary":
      solve = lambda path, kernel, h: quant.LeanQuantWeight(gptq_binary_layer(kernel, h, c.percdamp, c.blocksize),
                                                            None, None)
      return quant.sequential(m8, calib, solve, statistic="hessian", include=include)[0]
    q, results = quant.billm_model(m8, calib, blocksize=c.blocksize, percdamp=c.percdamp, max_salient=c.max_salient,
                                   include=include)
    paper, full = paper_bits(results[c.layer], c.blocksize)
    bits_seen["paper"].append(paper)
    bits_seen["full"].append(full)
    return q

  def fit(arm, hparams, seeds):
    out = {"val": [], "test": []}
    for m in sub["models"]:
      state = nnx.split(quantized(arm.name, m))[1]
      for split in out:
        out[split].append(float(ptq_char.accuracy(graphdef, state, *splits[split])))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp", f"w{c.end_bits}_ends", "naive", "gptq_binary", "billm"]
  comparison = protocol.compare([protocol.Arm(n) for n in names], np.arange(config.seeds), fit,
                                validate=lambda out: out["val"], test=lambda out: {"accuracy": out["test"]})
  acc = {n: comparison[n].mean("accuracy") for n in names}
  gptq_bin = acc["gptq_binary"]
  # the claim: BiLLM acc >= naive binarization acc + 15pt, and BiLLM acc >= GPTQ-binary acc
  verdict = comparison.judge(lambda m, b: m["accuracy"] >= b["accuracy"] + 0.15 and m["accuracy"] >= gptq_bin,
                             method="billm", baseline="naive")
  for n in names:
    ctx.print(f"digits-mlp {n}: test acc {acc[n]:.4f} +- {comparison[n].std('accuracy'):.4f}")
  bits = {k: float(np.mean(v)) for k, v in bits_seen.items()}
  ctx.print(f"BiLLM bits per weight of {c.layer}: paper's count {bits['paper']:.3f}, full count {bits['full']:.3f}")
  ctx.log(0, {**{f"digits/{n}/test_accuracy": a for n, a in acc.items()},
              "billm_bits_paper": bits["paper"], "billm_bits_full": bits["full"]})
  claim = {**verdict, "statement": CLAIM, "digits_accuracy": acc,
           "digits_accuracy_std": {n: comparison[n].std("accuracy") for n in names},
           "billm_minus_naive": acc["billm"] - acc["naive"], "billm_minus_gptq_binary": acc["billm"] - gptq_bin,
           "billm_bits_per_weight_paper": bits["paper"], "billm_bits_per_weight_full": bits["full"]}
  ctx.print(json.dumps({k: v for k, v in claim.items() if k not in ("statement", "mean", "std")}, indent=1))
  return {"digits": comparison.to_json(), "protocol": {"digits": comparison.to_json()}, "claim": claim}
