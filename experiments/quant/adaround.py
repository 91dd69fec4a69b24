"""AdaRound vs round-to-nearest (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization",
arXiv:2004.10568), catalogue [110], on DIGITS-MLP and the char transformer of ``experiments/quant/ptq_char.py``.

1. DIGITS-MLP (the claim's setting): an MLP 64-256-256-10 (ReLU, Adam 1e-3, 40 epochs, batch 64) on scikit-learn
   digits split 70/15/15; every Dense kernel is quantized weight-only (activations in float) per output channel at
   W3 and W4 (asymmetric min-max grid) with RTN and with AdaRound (``paperlab.quant.adaround_model``: layer by
   layer, asymmetric reconstruction from the already-quantized earlier layers, lambda 0.01, beta 20 -> 2 after a
   20% warm-up, Adam lr 1e-3, mini-batches of 32 calibration images); calibration: 256 training images. Metric:
   test accuracy drop from full precision.
2. CHAR-LM (reported, not part of the claim): the 2-layer character transformer of ``ptq_char`` (d 64, 500 Adam
   steps on the embedded corpus), its block Dense layers quantized at W4 g32 and W3 g32 with RTN and AdaRound
   (calibration 16 windows = 512 tokens, mini-batches of 128 tokens); metric: test perplexity.

Arms are compared through :mod:`paperlab.runner.protocol` (3 seeds, one point per arm -- PTQ has nothing to tune
-- test read once per arm, claim judged on seed means, control "RTN passed as AdaRound").

Measured at the default config (seeds 0-2, means):

* DIGITS-MLP test accuracy (270 test images; one image is 0.37pt): full precision 0.9665; W3 per channel RTN
  0.9603 (drop 0.62pt), AdaRound 0.9653 (drop 0.12pt, 0.2x RTN's <= 0.4x: holds); W4 RTN 0.9653, AdaRound 0.9665
  (drop 0.0pt <= 1pt: holds). Reproduced with the deviations below; the control (RTN as AdaRound) fails.
* CHAR-LM (``--config.char.enabled=True``, AdaRound 2000 iterations per layer; ~80 CPU-s more, so not in the CI
  run) test perplexity, block Dense layers only (as ``ptq_char``, whose GPTQ reaches 2.349 / 2.385):

  | method | W4 g32 | W3 g32 |
  |---|---|---|
  | full precision | 2.339 | 2.339 |
  | RTN | 2.384 | 2.536 |
  | AdaRound | 2.347 | 2.399 |

  AdaRound removes 82% (W4) and 70% (W3) of RTN's perplexity increase over full precision.
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
from paperlab.runner import digits_splits, protocol
from paperlab.runner.config import load_experiment

ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # the shared substrates and metrics

PAPER_ID = 110
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "AdaRound iterations: 1000 per layer (paper: 10k; the beta schedule is compressed accordingly) so the run fits "
    "the CI budget; the mini-batch is 32 "
    "calibration images as in the paper, drawn from 256 training images (paper: 1024 ImageNet images)",
    "the weight grid is the min-max asymmetric per-channel grid shared with RTN (the paper fixes the step by "
    "minimizing ||W - Q(W)||_F), so RTN and AdaRound differ only in the rounding",
    "every Dense layer is reconstructed before its ReLU (pre-activation output; the paper's f_a is the layer's "
    "activation)",
    "the W4 'within 1pt of FP' part is asserted on the same DIGITS-MLP (the catalogue's scaled-down version of the "
    "paper's '<1% at 4 bits')",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.digits = ml_collections.ConfigDict(dict(epochs=40, batch_size=64, learning_rate=1e-3, widths=(256, 256),
                                            bits=(3, 4), calib=256, iters=1000, adaround_batch=32))
  c.char = ml_collections.ConfigDict(dict(enabled=False, num_chars=200_000, d_model=64, num_layers=2, num_heads=4,
                                          seq_len=32, steps=500, batch_size=16, learning_rate=3e-3, bits=(4, 3),
                                          group_size=32, calib_windows=16, eval_windows=128, iters=2000,
                                          adaround_batch=128))
  return c


def _digits(config, ctx):
  c = config.digits
  (x, y), val, test = digits_splits.fit_val_test()
  splits = {"val": val, "test": test}
  seeds = np.arange(config.seeds)
  fp_models = ptq_char.train_digits_mlps(x, y, seeds, widths=c.widths, learning_rate=c.learning_rate,
                                         epochs=c.epochs, batch_size=c.batch_size)
  calib = [x[:c.calib]]
  eval_graphdef = nnx.split(fp_models[0])[0]

  def quantized(method, bits, m, seed):
    if method == "fp":
      return m
    if method == "rtn":
      return quant.replace_kernels(m, {p: quant.fake_quantize_rtn(k, bits=bits)
                                       for p, k in ptq_char.kernels(m).items()})
    return quant.adaround_model(m, calib, bits=bits, iters=c.iters, batch_size=c.adaround_batch,
                                key=jax.random.key(100 + int(seed)))[0]

  def fit(arm, hparams, seeds):
    method, _, bits = arm.name.partition("_w")
    out = {"val": [], "test": []}
    for seed, m in zip(seeds, fp_models):
      state = nnx.split(quantized(method, int(bits or 32), m, seed))[1]
      for split in out:
        out[split].append(float(ptq_char.accuracy(eval_graphdef, state, *splits[split])))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp"] + [f"{m}_w{b}" for b in c.bits for m in ("rtn", "adaround")]
  comparison = protocol.compare([protocol.Arm(n) for n in names], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"accuracy": out["test"]})
  fp = comparison["fp"].mean("accuracy")
  low, high = min(c.bits), max(c.bits)
  ada_high = comparison[f"adaround_w{high}"].mean("accuracy")
  # the claim: at W3 AdaRound's drop <= 0.4 x RTN's drop, and W4 AdaRound within 1pt of full precision
  verdict = comparison.judge(
      lambda m, b: fp - m["accuracy"] <= 0.4 * (fp - b["accuracy"]) and fp - ada_high <= 0.01,
      method=f"adaround_w{low}", baseline=f"rtn_w{low}")
  for n in names:
    ctx.print(f"digits-mlp {n}: test acc {comparison[n].mean('accuracy'):.4f} +- {comparison[n].std('accuracy'):.4f}")
  return comparison, verdict


def _char(config, ctx):
  c = config.char
  ds, train_tokens, val_tokens = ptq_char.char_data(c.num_chars)
  seeds = np.arange(config.seeds)
  fp_models, _ = ptq_char.train_char_lms(ds.tokenizer.vocab_size, train_tokens, seeds, d_model=c.d_model,
                                         num_layers=c.num_layers, num_heads=c.num_heads, seq_len=c.seq_len,
                                         steps=c.steps, batch_size=c.batch_size, learning_rate=c.learning_rate)
  calib = [jnp.asarray(ptq_char.windows(train_tokens, c.calib_windows, c.seq_len)[:, :-1])]
  evals = {"val": ptq_char.windows(val_tokens, c.eval_windows, c.seq_len),
           "test": ptq_char.windows(ds.test, c.eval_windows, c.seq_len)}
  eval_graphdef = nnx.split(fp_models[0])[0]

  def quantized(method, bits, m, seed):
    if method == "fp":
      return m
    if method == "rtn":
      new = {p: quant.fake_quantize_rtn(k, bits=bits, group_size=c.group_size)
             for p, k in ptq_char.kernels(m, "blocks/").items()}
      return quant.replace_kernels(m, new)
    return quant.adaround_model(m, calib, bits=bits, group_size=c.group_size, iters=c.iters,
                                batch_size=c.adaround_batch, include=r"^blocks/",
                                key=jax.random.key(200 + int(seed)))[0]

  def fit(arm, hparams, seeds):
    method, _, bits = arm.name.partition("_w")
    out = {"val": [], "test": []}
    for seed, m in zip(seeds, fp_models):
      state = nnx.split(quantized(method, int(bits or 32), m, seed))[1]
      for split in out:
        out[split].append(float(ptq_char.perplexity(eval_graphdef, state, jnp.asarray(evals[split]))))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp"] + [f"{m}_w{b}" for b in c.bits for m in ("rtn", "adaround")]
  comparison = protocol.compare([protocol.Arm(n) for n in names], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"ppl": out["test"]}, maximize=False)
  for n in names:
    ctx.print(f"char-lm {n}: test ppl {comparison[n].mean('ppl'):.4f} +- {comparison[n].std('ppl'):.4f}")
  return comparison


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  digits_cmp, verdict = _digits(config, ctx)
  acc = {n: digits_cmp[n].mean("accuracy") for n in digits_cmp.arms}
  ctx.log(0, {f"digits/{n}/test_accuracy": a for n, a in acc.items()})
  results = {"digits": digits_cmp.to_json(), "protocol": {"digits": digits_cmp.to_json()}}
  bits = tuple(config.digits.bits)
  low, high = min(bits), max(bits)
  claim = {**verdict, "statement": CLAIM, "digits_accuracy": acc,
           "digits_accuracy_std": {n: digits_cmp[n].std("accuracy") for n in digits_cmp.arms},
           f"drop_rtn_w{low}": acc["fp"] - acc[f"rtn_w{low}"], f"drop_adaround_w{low}": acc["fp"] - acc[f"adaround_w{low}"],
           f"drop_rtn_w{high}": acc["fp"] - acc[f"rtn_w{high}"],
           f"drop_adaround_w{high}": acc["fp"] - acc[f"adaround_w{high}"]}
  if config.char.enabled:
    char_cmp = _char(config, ctx)
    results["char"] = char_cmp.to_json()
    results["protocol"]["char"] = char_cmp.to_json()
    claim["char_ppl"] = {n: char_cmp[n].mean("ppl") for n in char_cmp.arms}
    ctx.log(0, {f"char/{n}/test_ppl": v for n, v in claim["char_ppl"].items()})
    claim["char_ppl_std"] = {n: char_cmp[n].std("ppl") for n in char_cmp.arms}
  results["claim"] = claim
  ctx.print(json.dumps({k: v for k, v in claim.items() if k not in ("statement", "mean", "std")}, indent=1))
  return results
