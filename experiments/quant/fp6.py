"""FP6-centric weight-only quantization (Wu et al., "ZeroQuant(4+2): Redefining LLMs Quantization with a New
FP6-Centric Strategy for Diverse Generative Tasks", arXiv:2312.08583), catalogue [599].

The paper's recipe: weights cast to FP6 E3M2 (1 sign, 3 exponent, 2 mantissa bits, bias 3, max 28, subnormals, no
Inf/NaN) with one coarse-grained scale per output channel, ``s = max|w| / 28``, and round-to-nearest; compared with
INT4 round-to-nearest per channel and fine-grained. Here it is :func:`paperlab.quant.quantize` with
``fmt="fp6_e3m2", axis=0`` (the reduction axis of a Flax kernel, so one scale per output column) and float16
scales (the paper's FP16 scale); INT4 RTN is :func:`paperlab.quant.fake_quantize_rtn` (asymmetric min-max grid,
per output channel or per group of 32 input rows).

Two substrates, each trained once per seed (seeds 0-2) and shared with the LoRC reproduction
(``experiments/quant/lorc.py``):

1. DIGITS-MLP: an MLP 64-256-256-10 (ReLU, Adam 1e-3, 30 epochs, batch 64) on scikit-learn digits (the training
   split minus a 15% validation tail); every Dense kernel is quantized; metric: test accuracy.
2. CHAR-LM: the char transformer of ``experiments/quant/ptq_char.py`` (2 pre-LN layers, d_model 64, context 32,
   300 Adam steps at 3e-3, batch 16) on the embedded grammar corpus; the Dense layers of the blocks (qkv, attention out, fc1,
   fc2) are quantized, embeddings and LM head stay in float (as the paper and the GPTQ/AWQ scripts do); metric:
   perplexity on 128 held-out windows of the test split (validation: the tail of the training text).

Arms: ``fp`` (full precision), ``fp6`` (E3M2 per channel), ``int4`` (INT4 RTN per channel), on CHAR-LM also
``int4_g32``. PTQ has nothing to tune,
so every arm is one grid point; the protocol reads the test split once per arm and judges the claim on seed means.
Control: INT4 per channel passed as FP6 must fail ("FP6 beats INT4 per channel" is strict).

Measured at the default config (seeds 0-2, means; per-seed values and std in the record):

* DIGITS-MLP test accuracy: full precision 0.9733, FP6 E3M2 0.9726 (drop 0.07pt), INT4 per channel 0.9719.
* CHAR-LM test perplexity: full precision 2.6273, FP6 E3M2 2.6535 (+0.996%), INT4 per channel 2.6937, INT4 g32
  2.6721.
* Stored bytes per parameter of the FP6 kernels (packed codes + float16 scales): 0.762 (DIGITS), 0.773 (CHAR).

Every part of the claim holds (reproduced), with thin margins: on DIGITS FP6 beats INT4 per channel by 0.07pt, a
third of one test image per seed, and the CHAR-LM rise of 0.996% sits at the 1% bound. Measured once beside them
(left out of the CI run), FP6 E2M3 (more mantissa, per channel) does better on these small, outlier-free models:
DIGITS 0.9733 (no drop), CHAR-LM 2.6317 (+0.17%).
CI scale (CI_CONFIG, shared by every experiment on these substrates so one trained copy serves them all): CHAR-LM
150 training steps, 64 evaluation windows; at it: DIGITS FP6 0.9726 vs INT4 0.9719 (fp 0.9733), CHAR-LM ppl fp
4.872, FP6 4.880 (+0.17%), INT4 4.928, INT4 g32 4.923: reproduced, as the record (seeds 0-2); 72 CPU-s measured
under load, with the substrates.
"""

from __future__ import annotations

import functools
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

ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # the shared substrates and metrics

PAPER_ID = 599
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "CHAR-LM: the embedded grammar corpus (paperlab.data, 200k characters) and the small transformer of "
    "experiments/quant/ptq_char.py (d_model 64, context 32, 300 Adam steps at lr 3e-3, batch 16) so that the run "
    "fits the CI budget (catalogue: ~300 KB of Python source, d 128, context 64, 1500 steps)",
    "DIGITS-MLP: the digits training split minus a 15% validation tail (catalogue 70/15/15), 30 epochs",
    "the 4+2 bit-split storage layout of the paper's GPU kernel is not measured: FP6 codes are stored densely "
    "packed (4 codes in 3 bytes) by paperlab.quant.quantize, which gives the same 0.75 bytes per weight",
)
# the test suite's scale (paperlab reproduce 599 --ci); the other experiments on these substrates start from it
CI_CONFIG = {"char.steps": 150, "char.eval_windows": 64}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.digits = ml_collections.ConfigDict(dict(epochs=30, batch_size=64, learning_rate=1e-3, widths=(256, 256)))
  c.char = ml_collections.ConfigDict(dict(num_chars=200_000, d_model=64, num_layers=2, num_heads=4, seq_len=32,
                                          steps=300, batch_size=16, learning_rate=3e-3, calib_windows=16,
                                          eval_windows=128))
  c.claim = ml_collections.ConfigDict(dict(max_acc_drop=0.002, max_ppl_rise=0.01))
  return c


# ----------------------------------------------------------------------------------------------------------------
# the two substrates, trained once per (config, seeds) and shared with experiments/quant/lorc.py


def _key(config) -> str:
  return json.dumps({"seeds": int(config.seeds), "digits": config.digits.to_dict(), "char": config.char.to_dict()},
                    sort_keys=True, default=list)


@functools.lru_cache(maxsize=2)
def _digits_models(key: str) -> dict:
  cfg = json.loads(key)
  c = cfg["digits"]
  (x, y), splits = ptq_char.digits_tail_split()
  fp = ptq_char.train_digits_mlps(x, y, np.arange(cfg["seeds"]), widths=c["widths"], learning_rate=c["learning_rate"],
                                  epochs=c["epochs"], batch_size=c["batch_size"])
  return {"models": fp, "calib": [x[:256]], "splits": splits}


@functools.lru_cache(maxsize=2)
def _char_models(key: str) -> dict:
  cfg = json.loads(key)
  c = cfg["char"]
  ds, train_tokens, val_tokens = ptq_char.char_data(c["num_chars"])
  fp, losses = ptq_char.train_char_lms(ds.tokenizer.vocab_size, train_tokens, np.arange(cfg["seeds"]),
                                       d_model=c["d_model"], num_layers=c["num_layers"], num_heads=c["num_heads"],
                                       seq_len=c["seq_len"], steps=c["steps"], batch_size=c["batch_size"],
                                       learning_rate=c["learning_rate"])
  calib = ptq_char.windows(train_tokens, c["calib_windows"], c["seq_len"])
  return {"models": fp, "losses": losses, "calib": [jnp.asarray(calib[:, :-1])],
          "splits": {"val": jnp.asarray(ptq_char.windows(val_tokens, c["eval_windows"], c["seq_len"])),
                     "test": jnp.asarray(ptq_char.windows(ds.test, c["eval_windows"], c["seq_len"]))}}


def substrates(config) -> tuple[dict, dict]:
  """``(digits, char)``: the trained full-precision models per seed, calibration batches and eval splits."""
  key = _key(config)
  return _digits_models(key), _char_models(key)


def evaluate(kind: str, sub: dict, quantized_models) -> dict:
  """``{"val": per-seed, "test": per-seed}`` accuracy (digits) or perplexity (char) of the given models."""
  out = {"val": [], "test": []}
  for m in quantized_models:
    graphdef, state = nnx.split(m)
    for split in out:
      if kind == "digits":
        out[split].append(float(ptq_char.accuracy(graphdef, state, *sub["splits"][split])))
      else:
        out[split].append(float(ptq_char.perplexity(graphdef, state, sub["splits"][split])))
  return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------------
# FP6 vs INT4


def _quantize_kernel(arm: str, k: jax.Array) -> tuple[jax.Array, int]:
  """The dequantized kernel of ``arm`` and its stored bytes."""
  if arm in ("fp6", "fp6_e2m3"):
    qa = quant.quantize(k, "fp6_e3m2" if arm == "fp6" else "fp6_e2m3", axis=0, scale_dtype=jnp.float16)
    return qa.dequantize(jnp.float32), qa.nbytes
  group = 32 if arm == "int4_g32" else None
  n_scales = k.shape[1] * (k.shape[0] // (group or k.shape[0]))
  return quant.fake_quantize_rtn(k, bits=4, group_size=group), k.size // 2 + 3 * n_scales  # bf16 scale, u8 zero


def _compare(kind: str, sub: dict, names: list[str], prefix: str):
  bytes_per_param = {}

  def fit(arm, hparams, seeds):
    if arm.name == "fp":
      qmodels = sub["models"]
    else:
      qmodels, stored, count = [], 0, 0
      for m in sub["models"]:
        new = {}
        for p, k in ptq_char.kernels(m, prefix).items():
          new[p], nbytes = _quantize_kernel(arm.name, k)
          stored, count = stored + nbytes, count + k.size
        qmodels.append(quant.replace_kernels(m, new))
      bytes_per_param[arm.name] = stored / count
    return evaluate(kind, sub, qmodels)

  metric = "accuracy" if kind == "digits" else "ppl"
  comparison = protocol.compare([protocol.Arm(n) for n in names], range(len(sub["models"])), fit,
                                validate=lambda out: out["val"], test=lambda out: {metric: out["test"]},
                                maximize=kind == "digits")
  return comparison, bytes_per_param


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  digits, char = substrates(config)
  ctx.log_curve("char/train_loss", char["losses"].mean(0), every=max(1, config.char.steps // 10))
  cl = config.claim
  d_cmp, d_bytes = _compare("digits", digits, ["fp", "fp6", "int4"], "")
  acc = {n: d_cmp[n].mean("accuracy") for n in d_cmp.arms}
  d_verdict = d_cmp.judge(lambda m, b: acc["fp"] - m["accuracy"] <= cl.max_acc_drop and m["accuracy"] > b["accuracy"],
                          method="fp6", baseline="int4")
  c_cmp, c_bytes = _compare("char", char, ["fp", "fp6", "int4", "int4_g32"], "blocks/")
  ppl = {n: c_cmp[n].mean("ppl") for n in c_cmp.arms}
  c_verdict = c_cmp.judge(lambda m, b: (m["ppl"] <= (1 + cl.max_ppl_rise) * ppl["fp"] and m["ppl"] < b["ppl"]
                                        and m["ppl"] < ppl["int4_g32"]), method="fp6", baseline="int4")
  for n in d_cmp.arms:
    ctx.print(f"digits-mlp {n}: test acc {acc[n]:.4f} +- {d_cmp[n].std('accuracy'):.4f}")
  for n in c_cmp.arms:
    ctx.print(f"char-lm {n}: test ppl {ppl[n]:.4f} +- {c_cmp[n].std('ppl'):.4f}")
  results = {"protocol": {"digits": d_cmp.to_json(), "char": c_cmp.to_json()}}
  results["claim"] = {
      "statement": CLAIM,
      **ptq_char.joint_verdict(d_verdict, c_verdict),
      "digits_accuracy": acc, "digits_acc_drop_fp6": acc["fp"] - acc["fp6"],
      "char_ppl": ppl, "char_ppl_rise_fp6": ppl["fp6"] / ppl["fp"] - 1.0,
      "char_ppl_std": {n: c_cmp[n].std("ppl") for n in c_cmp.arms},
      "bytes_per_param": {"digits": d_bytes, "char": c_bytes},
  }
  ctx.print(json.dumps({k: v for k, v in results["claim"].items() if k != "statement"}, indent=1))
  return results
