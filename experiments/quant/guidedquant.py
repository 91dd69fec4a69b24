"""GuidedQuant: GPTQ with end-loss-guided, channel-grouped Hessians (Kim et al., "GuidedQuant: Large Language Model
Quantization via Exploiting End Loss Guidance", arXiv:2505.07004), catalogue [63].

:func:`paperlab.quant.guidedquant_model`: one backward pass of the full-precision model on the calibration data gives
each Dense layer's saliency (squared end-loss gradient w.r.t. the layer's outputs, averaged over ``G`` contiguous
output-channel groups); each group of output channels is then quantized by GPTQ with its own saliency-weighted
Hessian, layer by layer in forward order on the partially quantized model. Baseline: plain GPTQ
(:func:`paperlab.quant.gptq_model`, same grid, percdamp 0.01, no act-order, true-sequential).

Substrates: the trained models of ``experiments/quant/fp6.py`` (seeds 0-2; shared with ``guided_rsq.py``):

1. DIGITS-MLP 64-256-256-10 (ReLU, Adam, 30 epochs): every Dense kernel at W2 and W3 per output channel ("per
   row"), ``G = 2`` (the 10-wide head allows 1, 2, 5 or 10); calibration: 256 training images and their labels
   (cross entropy); metrics: test cross entropy and accuracy.
2. CHAR-LM (2 pre-LN layers, d_model 64, context 32, 300 steps): the blocks' Dense layers at W3 per output channel,
   ``G = 4``; calibration: 16 windows of 32 tokens with their next-token targets; metric: test perplexity.

One grid point per arm (nothing to tune); test read once per arm; claims on seed means. Control: GPTQ passed as
GuidedQuant must fail (the claim is strict: lower cross entropy).

Measured at the default config (seeds 0-2, means; per-seed values and std in ``experiments/records/63.json``):

* DIGITS-MLP test cross entropy / accuracy: full precision 0.1032 / 0.9733; W2 GPTQ 0.1148 / 0.9696, GuidedQuant
  0.1330 / 0.9659; W3 GPTQ 0.1074 / 0.9733, GuidedQuant 0.1062 / 0.9689. At W2 GuidedQuant is worse on both; at W3
  its cross entropy is lower but it loses 0.44pt of accuracy. The trained MLP fits its 256 calibration images
  almost perfectly, so the squared end-loss gradients concentrate on a handful of uncertain images and the guided
  Hessians rest on few effective samples (the guided layer objective on the calibration data is lower, as the unit
  test checks, but it generalizes worse).
* CHAR-LM W3 per-row test perplexity: full precision 2.6273, GPTQ 2.7349, GuidedQuant 2.7313: this part holds.

The DIGITS parts fail: not reproduced.
CI scale (CI_CONFIG: fp6.py's shared substrates, CHAR-LM 150 training steps, 64 evaluation windows); at it: the
DIGITS parts as in the record (the DIGITS substrate is unchanged), CHAR-LM W3 ppl GPTQ 5.0272 -> GuidedQuant 4.9894
(holds): not reproduced, as the record (seeds 0-2); 97 CPU-s measured under load on top of the substrates.
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
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

guided_rsq = load_experiment(pathlib.Path(__file__).with_name("guided_rsq.py"))  # substrates, labels
fp6, ptq_char = guided_rsq.fp6, guided_rsq.ptq_char

PAPER_ID = 63
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "CHAR-LM: the embedded grammar corpus (paperlab.data, 200k characters) and the small transformer of "
    "experiments/quant/fp6.py (d_model 64, context 32, 300 Adam steps at lr 3e-3, batch 16) so that the run fits "
    "the CI budget (catalogue: ~300 KB of Python source, d 128, context 64, 1500 steps); CHAR-LM W3 per output "
    "channel like the DIGITS part",
    "DIGITS-MLP: the digits training split minus a 15% validation tail (catalogue 70/15/15), 30 epochs; G = 2 "
    "channel groups (the 10-class head's width must be divisible by G)",
    "GuidedQuant with GPTQ as the layer-wise quantizer (one of the paper's back ends); the paper's LNQ non-uniform "
    "quantizer is not implemented",
)
CI_CONFIG = dict(fp6.CI_CONFIG)  # the test suite's scale: the shared substrates' (paperlab reproduce 63 --ci)


def get_config() -> ml_collections.ConfigDict:
  c = fp6.get_config()
  del c.claim
  c.digits_bits = (2, 3)
  c.char_bits = 3
  c.digits_groups, c.char_groups = 2, 4
  return c


@functools.partial(jax.jit, static_argnums=0)
def _digits_metrics(graphdef, state, xs, ys):
  logits = nnx.merge(graphdef, state)(xs)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
  return ce, jnp.mean(jnp.argmax(logits, -1) == ys)


def _digits(config, sub):
  (x, y), _ = ptq_char.digits_tail_split()
  calib, labels = [x[:256]], [y[:256]]  # fp6's digits calibration batch, with its labels
  graphdef = nnx.split(sub["models"][0])[0]

  def quantized(arm, m):
    method, _, bits = arm.partition("_w")
    if method == "gptq":
      return quant.gptq_model(m, calib, bits=int(bits))[0]
    return quant.guidedquant_model(m, calib, labels, n_groups=config.digits_groups, bits=int(bits))[0]

  def fit(arm, hparams, seeds):
    out = {k: [] for k in ("val_ce", "ce", "accuracy")}
    for m in sub["models"]:
      q = m if arm.name == "fp" else quantized(arm.name, m)
      state = nnx.split(q)[1]
      out["val_ce"].append(float(_digits_metrics(graphdef, state, *sub["splits"]["val"])[0]))
      ce, acc = _digits_metrics(graphdef, state, *sub["splits"]["test"])
      out["ce"].append(float(ce))
      out["accuracy"].append(float(acc))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp"] + [f"{m}_w{b}" for b in config.digits_bits for m in ("gptq", "guided")]
  return protocol.compare([protocol.Arm(n) for n in names], range(len(sub["models"])), fit,
                          validate=lambda out: out["val_ce"],
                          test=lambda out: {"ce": out["ce"], "accuracy": out["accuracy"]}, maximize=False)


def _char(config, sub):
  labels = guided_rsq.char_labels(config)
  bits = config.char_bits

  def fit(arm, hparams, seeds):
    if arm.name == "fp":
      return fp6.evaluate("char", sub, sub["models"])
    if arm.name.startswith("gptq"):
      qs = [quant.gptq_model(m, sub["calib"], bits=bits, include=r"^blocks/")[0] for m in sub["models"]]
    else:
      qs = [quant.guidedquant_model(m, sub["calib"], labels, n_groups=config.char_groups, bits=bits,
                                    include=r"^blocks/")[0] for m in sub["models"]]
    return fp6.evaluate("char", sub, qs)

  names = ["fp", f"gptq_w{bits}", f"guided_w{bits}"]
  return protocol.compare([protocol.Arm(n) for n in names], range(len(sub["models"])), fit,
                          validate=lambda out: out["val"], test=lambda out: {"ppl": out["test"]}, maximize=False)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  digits, char = fp6.substrates(guided_rsq.substrate_config(config))
  ctx.log_curve("char/train_loss", char["losses"].mean(0), every=max(1, config.char.steps // 10))
  d_cmp, c_cmp = _digits(config, digits), _char(config, char)
  d_mean = {n: d_cmp[n].means() for n in d_cmp.arms}
  parts = {}
  for b in config.digits_bits:
    parts[f"digits_w{b}"] = d_cmp.judge(lambda m, g: m["ce"] < g["ce"] and m["accuracy"] >= g["accuracy"],
                                        method=f"guided_w{b}", baseline=f"gptq_w{b}")
  cb = config.char_bits
  parts[f"char_w{cb}"] = c_cmp.judge(lambda m, g: m["ppl"] <= g["ppl"], method=f"guided_w{cb}",
                                     baseline=f"gptq_w{cb}")
  for n in d_cmp.arms:
    ctx.print(f"digits-mlp {n}: test ce {d_mean[n]['ce']:.4f}, acc {d_mean[n]['accuracy']:.4f}")
  c_ppl = {n: c_cmp[n].mean("ppl") for n in c_cmp.arms}
  for n in c_cmp.arms:
    ctx.print(f"char-lm {n}: test ppl {c_ppl[n]:.4f} +- {c_cmp[n].std('ppl'):.4f}")
  # the CHAR-LM part "<=" is satisfied by its own control (GPTQ <= GPTQ): the control is judged on the DIGITS parts
  results = {"protocol": {"digits": d_cmp.to_json(), "char": c_cmp.to_json()}}
  results["claim"] = {
      "statement": CLAIM,
      "passed": bool(all(p["holds"] for p in parts.values())
                     and not any(p["control_passes"] for k, p in parts.items() if k.startswith("digits"))),
      "holds": bool(all(p["holds"] for p in parts.values())),
      "control_passes": bool(any(p["control_passes"] for k, p in parts.items() if k.startswith("digits"))),
      **{f"{k}_holds": bool(p["holds"]) for k, p in parts.items()},
      "digits_ce": {n: d_mean[n]["ce"] for n in d_mean}, "digits_accuracy": {n: d_mean[n]["accuracy"] for n in d_mean},
      "char_ppl": c_ppl, "char_ppl_std": {n: c_cmp[n].std("ppl") for n in c_cmp.arms},
  }
  ctx.print(json.dumps({k: v for k, v in results["claim"].items() if k != "statement"}, indent=1))
  return results
