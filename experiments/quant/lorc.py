"""LoRC, low-rank compensation of the weight quantization error (Yao et al., "ZeroQuant-V2: Exploring Post-training
Quantization in LLMs from Comprehensive Study to Low Rank Compensation", arXiv:2303.08302), catalogue [572].

LoRC adds to a quantized kernel ``W_hat`` the best rank-``m`` approximation ``U V^T`` of its error ``W - W_hat``
(:func:`paperlab.quant.lorc`, factors ``U_m S_m^(1/2)`` and ``V_m S_m^(1/2)`` of the SVD, rank 8, float32 factors),
on top of any quantizer: here round-to-nearest (:func:`paperlab.quant.quantize_rtn`, asymmetric min-max grid) and
GPTQ (:func:`paperlab.quant.gptq_model`, true-sequential, no act-order, percdamp 0.01).

Substrates: the DIGITS-MLP and CHAR-LM of ``experiments/quant/fp6.py`` (the same trained models, seeds 0-2).

1. DIGITS-MLP, the catalogue's claim: every Dense kernel at W3 g32 (RTN or GPTQ, calibration: 256 training
   images); LoRC rank 8 on the two hidden-layer kernels (64x256 and 256x256). The 256x10 head is quantized but not
   compensated: rank 8 of a 10-column matrix would cost 83% of its size. The parameter overhead is the factors'
   parameter count over that of the quantized kernels. Metric: test accuracy.
2. CHAR-LM, the issue's criterion "LoRC lowers W4 perplexity": the Dense layers of the blocks at W4 g32 with RTN,
   LoRC rank 8 on each of them. Metric: test perplexity.

Arms: ``fp``, ``rtn``, ``rtn_lorc``, ``gptq``, ``gptq_lorc`` on DIGITS, ``fp``, ``rtn``, ``rtn_lorc`` on CHAR-LM;
one grid point each (nothing to tune), test read once per arm, claims on seed means. Controls: RTN passed as
RTN+LoRC must fail both claims.

Measured at the default config (seeds 0-2, means; per-seed values and std in the record):

* DIGITS-MLP W3 g32 test accuracy: full precision 0.9733, RTN 0.9711, RTN+LoRC 0.9711 (closes 0% of the 0.22pt
  gap; overhead 7.9% of the quantized parameters), GPTQ 0.9719, GPTQ+LoRC 0.9719. W3 g32 RTN costs this MLP one
  test image per seed, and LoRC does not win it back: the catalogue's claim does not reproduce.
* CHAR-LM W4 g32 test perplexity (full precision 2.6273): RTN 2.6721, RTN+LoRC 2.6601 (27% of RTN's rise
  removed; overhead 16.7% of the quantized parameters, rank 8 of 64-wide layers): the issue's criterion holds.
  (GPTQ arms on CHAR-LM, measured once and left out of the CI run: GPTQ 2.6508, GPTQ+LoRC 2.6468.)
CI scale (CI_CONFIG: fp6.py's, CHAR-LM 150 training steps and 64 evaluation windows); at it: DIGITS W3 g32 RTN =
RTN+LoRC 0.9711 (gap closed 0%, not reproduced, as the record), CHAR-LM W4 RTN 4.923 -> RTN+LoRC 4.906 (seeds
0-2); 27 CPU-s measured under load on top of training the substrates (shared in-process with fp6.py's test).
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import papers, quant
from paperlab.runner import protocol
from paperlab.runner.config import load_experiment

fp6 = load_experiment(pathlib.Path(__file__).with_name("fp6.py"))  # the shared trained substrates
ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # Dense-kernel walk, verdict fields

PAPER_ID = 572
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "LoRC compensates the two hidden-layer kernels of the DIGITS-MLP, not its 256x10 head (rank 8 of a 10-column "
    "matrix is 83% of its size; with it the overhead would be 10.4%); the overhead is counted over the quantized "
    "kernels' parameters",
    "the issue's CHAR-LM criterion (LoRC lowers the W4 g32 RTN perplexity) is judged beside the catalogue's claim, "
    "on the small char transformer of experiments/quant/fp6.py (d_model 64, 300 steps), and must hold too",
    "DIGITS-MLP: the digits training split minus a 15% validation tail (catalogue 70/15/15)",
)
CI_CONFIG = dict(fp6.CI_CONFIG)  # the test suite's scale: the shared substrates' (paperlab reproduce 572 --ci)


def get_config() -> ml_collections.ConfigDict:
  c = fp6.get_config()
  del c.claim
  c.rank = 8
  c.digits.bits, c.digits.group_size = 3, 32
  c.char.bits, c.char.group_size = 4, 32
  c.claim = ml_collections.ConfigDict(dict(min_gap_closed=0.3, max_overhead=0.1))
  return c


def _substrate_config(config):
  """The part of the config the shared substrates are trained from (so fp6.py's cache is hit)."""
  c = fp6.get_config()
  c.seeds = config.seeds
  for part in ("digits", "char"):
    for k in c[part]:
      c[part][k] = config[part][k]
  return c


def _compare(kind: str, sub: dict, bits: int, group_size: int, rank: int, prefix: str, lorc_on, names):
  overhead, gptq_cache = {}, {}

  def fit(arm, hparams, seeds):
    if arm.name == "fp":
      return fp6.evaluate(kind, sub, sub["models"])
    base = arm.name.split("_")[0]
    qmodels, extra, count = [], 0, 0
    for i, m in enumerate(sub["models"]):
      ks = ptq_char.kernels(m, prefix)
      if base == "rtn":
        w_hat = {p: quant.fake_quantize_rtn(k, bits=bits, group_size=group_size) for p, k in ks.items()}
      else:
        if i not in gptq_cache:  # shared by the gptq and gptq_lorc arms
          gptq_cache[i] = quant.gptq_model(m, sub["calib"], bits=bits, group_size=group_size,
                                           include=f"^{prefix}" if prefix else None)[1]
        w_hat = {p: gptq_cache[i][p].w_hat for p in ks}
      if arm.name.endswith("_lorc"):
        for p in ks:
          if lorc_on(p, ks[p]):
            u, v = quant.lorc(ks[p], w_hat[p], rank=rank)
            w_hat[p] = quant.apply_lorc(w_hat[p], (u, v))
            extra += u.size + v.size
      count += sum(k.size for k in ks.values())
      qmodels.append(quant.replace_kernels(m, w_hat))
    overhead[arm.name] = extra / count
    out = fp6.evaluate(kind, sub, qmodels)
    out["overhead"] = np.full(len(seeds), extra / count)
    return out

  metric = "accuracy" if kind == "digits" else "ppl"
  test = lambda out: {metric: out["test"], "overhead": out.get("overhead", np.zeros(len(out["test"])))}
  return protocol.compare([protocol.Arm(n) for n in names], range(len(sub["models"])), fit,
                          validate=lambda out: out["val"], test=test, maximize=kind == "digits")


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  digits, char = fp6.substrates(_substrate_config(config))
  ctx.log_curve("char/train_loss", char["losses"].mean(0), every=max(1, config.char.steps // 10))
  cl = config.claim
  head = lambda p, k: min(k.shape) > 2 * config.rank  # not the 10-class head
  d_cmp = _compare("digits", digits, config.digits.bits, config.digits.group_size, config.rank, "", head,
                   ["fp", "rtn", "rtn_lorc", "gptq", "gptq_lorc"])
  acc = {n: d_cmp[n].mean("accuracy") for n in d_cmp.arms}
  d_verdict = d_cmp.judge(
      lambda m, b: (m["accuracy"] - b["accuracy"] >= cl.min_gap_closed * (acc["fp"] - b["accuracy"])
                    and m["overhead"] < cl.max_overhead and acc["gptq_lorc"] >= acc["gptq"]),
      method="rtn_lorc", baseline="rtn")
  c_cmp = _compare("char", char, config.char.bits, config.char.group_size, config.rank, "blocks/",
                   lambda p, k: True, ["fp", "rtn", "rtn_lorc"])
  ppl = {n: c_cmp[n].mean("ppl") for n in c_cmp.arms}
  c_verdict = c_cmp.judge(lambda m, b: m["ppl"] < b["ppl"], method="rtn_lorc", baseline="rtn")
  for n in d_cmp.arms:
    ctx.print(f"digits-mlp W{config.digits.bits} g{config.digits.group_size} {n}: test acc {acc[n]:.4f} "
              f"+- {d_cmp[n].std('accuracy'):.4f}")
  for n in c_cmp.arms:
    ctx.print(f"char-lm W{config.char.bits} g{config.char.group_size} {n}: test ppl {ppl[n]:.4f} "
              f"+- {c_cmp[n].std('ppl'):.4f}")
  gap = acc["fp"] - acc["rtn"]
  results = {"protocol": {"digits": d_cmp.to_json(), "char": c_cmp.to_json()}}
  results["claim"] = {
      "statement": CLAIM,
      **ptq_char.joint_verdict(d_verdict, c_verdict),
      "digits_accuracy": acc,
      "digits_gap_closed": (acc["rtn_lorc"] - acc["rtn"]) / gap if gap > 0 else float("nan"),
      "digits_overhead": d_cmp["rtn_lorc"].mean("overhead"),
      "char_ppl": ppl, "char_ppl_std": {n: c_cmp[n].std("ppl") for n in c_cmp.arms},
      "char_overhead": c_cmp["rtn_lorc"].mean("overhead"),
  }
  ctx.print(json.dumps({k: v for k, v in results["claim"].items() if k != "statement"}, indent=1))
  return results
