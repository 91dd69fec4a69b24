"""LeanQuant vs GPTQ vs round-to-nearest (Zhang & Shrivastava, "LeanQuant: Accurate and Scalable Large Language
Model Quantization with Loss-error-aware Grid", arXiv:2407.10032), catalogue [177], on DIGITS-MLP and CHAR-LM.

Both substrates are the trained models of ``experiments/quant/fp6.py`` (trained once, shared with the FP6, LoRC,
FlexRound and BiLLM reproductions): the DIGITS-MLP (64-256-256-10, ReLU, Adam 1e-3, 30 epochs; the digits training
split minus a 15% validation tail; all three Dense layers quantized, calibration 256 training images) and the
2-layer character transformer CHAR-LM of ``ptq_char.py`` (d_model 64, context 32, 300 Adam steps; block Dense
layers qkv / attention out / fc1 / fc2 quantized, embeddings and LM head in full precision as in the official
scripts; calibration 16 training windows; metric: perplexity on 128 test windows). Weights only, per output channel
("per-row", no groups), asymmetric:

* RTN (reported with ``--config.ptq.rtn_arms=True``, not in the CI run): the min-max grid, round to nearest;
* GPTQ (``paperlab.quant.gptq_layer``): the same grid, column loop with error feedback (percdamp 0.01, block 128,
  no act-order);
* LeanQuant-nu (``paperlab.quant.leanquant_layer``): per output channel a non-uniform grid of ``2^bits`` points
  fit by weighted k-means with weights ``diag(U)^-p`` (``U`` the upper Cholesky factor of the damped ``H^-1``,
  exponent ``p = 4``, 100 Lloyd steps), then the same GPTQ loop onto that grid.

Model-level runs are true-sequential (each layer's Hessian from the network whose earlier layers are already
quantized). The layer-wise GPTQ objective ``tr((W - W^)^T H (W - W^))`` is compared on the same problem for both
methods: every layer of the full-precision model with its full-precision Hessian ``H = 2 X^T X / n``.

Claim parts: (1) LeanQuant's layer objective <= GPTQ's on every layer (W3, both substrates, seed means); (2)
CHAR-LM W3 test perplexity < GPTQ's; (3) DIGITS-MLP W2 test accuracy >= GPTQ's + 2pt. The whole claim's control
replaces LeanQuant by GPTQ in every part.

Measured at the default config (seeds 0-2, means):

* DIGITS-MLP W2 test accuracy: full precision 0.9733; GPTQ 0.9696, LeanQuant 0.9667 (-0.30pt vs GPTQ; claim +2pt).
* CHAR-LM W3 test perplexity: full precision 2.627; GPTQ 2.735, LeanQuant 2.757 (claim: < GPTQ).
* Layer objective LeanQuant / GPTQ at W3 (full-precision Hessian): DIGITS hidden/0 0.853, hidden/1 0.945, head
  1.034; CHAR-LM block 0 qkv 1.050, out 0.922, fc1 1.026, fc2 0.881; block 1 qkv 0.962, out 0.921, fc1 0.929, fc2
  0.872: above GPTQ on 3 of 11 layers.

No part of the claim holds at p = 4: not reproduced. With ``--config.ptq.rtn_arms=True
--config.ptq.digits_bits='(3, 2)'`` (same seeds): DIGITS W3 RTN 0.9689, GPTQ 0.9733, LeanQuant 0.9733; W2 RTN
0.9622; CHAR-LM W3 RTN 2.944: both calibrated methods beat RTN.

Measured beside the run (same layers and Hessians, not part of the CI run), the exponent decides the objective
part: the mean ratio over the 11 layers is 0.83 at p = 0 (plain k-means, a non-uniform grid alone), 0.83 at p = 1,
0.86 at p = 2 and 0.95 at p = 4, and every layer is below GPTQ for p <= 2 (largest ratio 0.97 at p = 2). On these
small layers the d^-p weights of p = 4 concentrate the grid fit on a few input features, and the non-uniform grid
gains less than it loses elsewhere.
CI scale (CI_CONFIG: fp6.py's shared substrates, CHAR-LM 150 training steps, 64 evaluation windows); at it: layer
objective above GPTQ's on 3 of 11 layers (DIGITS head 1.03x, CHAR-LM qkv0 1.04x, fc1_0 1.04x), DIGITS W2 as in the
record, CHAR-LM W3 ppl LeanQuant 4.958 < GPTQ 5.027 (this part holds there): not reproduced, as the record (seeds
0-2); 32 CPU-s measured under load on top of the substrates.
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

PAPER_ID = 177
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "CHAR-LM: the embedded grammar corpus and the small model of ptq_char.py (d_model 64, 2 layers, context 32) "
    "trained for 300 Adam steps (lr 3e-3, batch 16) so the run fits the CI budget (catalogue: d 128, context 64, "
    "1500 steps)",
    "the layer-wise objective is compared on the full-precision model's layers with their full-precision Hessians "
    "(the same problem for both methods), not inside the true-sequential runs where each method's later layers see "
    "different inputs",
    "LeanQuant's grid fit runs a fixed 100 Lloyd steps with linspace(min, max) init (the official code: scikit-learn "
    "KMeans, tol 1e-6, empty-cluster relocation); the exponent p = 4 is not tuned",
    "DIGITS-MLP: all three Dense layers are quantized (the claim's W2 part included), calibration 256 training "
    "images",
)
CI_CONFIG = dict(fp6.CI_CONFIG)  # the test suite's scale: the shared substrates' (paperlab reproduce 177 --ci)


def get_config() -> ml_collections.ConfigDict:
  c = fp6.get_config()  # seeds, digits and char as fp6.py, so its trained substrates are shared
  del c.claim
  c.ptq = ml_collections.ConfigDict(dict(p=4.0, lloyd_iters=100, digits_bits=(2,), char_bits=(3,),
                                         objective_bits=3, rtn_arms=False))
  return c


def _solver(method: str, bits: int, config):
  """``solve(path, kernel, h) -> w_hat`` of ``method``; output channels are zero-padded (independent rows) so
  layers of equal input width share one compiled program, as :func:`paperlab.quant.gptq_model` does."""
  def solve(path, kernel, h):
    out = kernel.shape[1]
    padded = quant.pad_outputs(kernel)
    if method == "gptq":
      q = quant.gptq_layer(padded, h, bits=bits)
    else:
      q = quant.leanquant_layer(padded, h, bits=bits, p=config.ptq.p, iters=config.ptq.lloyd_iters)
    return q._replace(w_hat=q.w_hat[:, :out])
  return solve


def quantize_model(method: str, bits: int, model, calib, config, include: str | None = None):
  """The model with its selected Dense kernels quantized by ``method`` (``rtn | gptq | leanquant``)."""
  if method == "rtn":
    new = {p: quant.fake_quantize_rtn(k, bits=bits) for p, k in ptq_char.kernels(model).items()
           if include is None or p.startswith(include.strip("^"))}
    return quant.replace_kernels(model, new)
  return quant.sequential(model, calib, _solver(method, bits, config), statistic="hessian", include=include)[0]


def layer_objectives(model, calib, bits: int, config, include: str | None = None) -> dict:
  """``{method: {layer: tr(dW^T H dW)}}`` of GPTQ and LeanQuant on each full-precision layer and its Hessian."""
  hs = quant.capture_hessians(model, calib, include=include)
  ks = ptq_char.kernels(model)
  out = {"gptq": {}, "leanquant": {}}
  for method in out:
    solve = _solver(method, bits, config)
    for path, h in hs.items():
      d = ks[path] - solve(path, ks[path], h).w_hat
      out[method][path] = float(jnp.sum(d * (h @ d)))
  return out


def _substrate_arms(kind, fp_models, calib, evals, bits_list, config, include, metric):
  """Protocol comparison of fp / GPTQ / LeanQuant (and RTN with ``rtn_arms``) at each width in ``bits_list``."""
  graphdef = nnx.split(fp_models[0])[0]

  def evaluate(state, split):
    if kind == "digits":
      return float(ptq_char.accuracy(graphdef, state, *evals[split]))
    return float(ptq_char.perplexity(graphdef, state, jnp.asarray(evals[split])))

  def fit(arm, hparams, seeds):
    method, _, bits = arm.name.partition("_w")
    out = {"val": [], "test": []}
    for m in fp_models:
      q = m if method == "fp" else quantize_model(method, int(bits), m, calib, config, include)
      state = nnx.split(q)[1]
      for split in out:
        out[split].append(evaluate(state, split))
    return out

  methods = ("rtn", "gptq", "leanquant") if config.ptq.rtn_arms else ("gptq", "leanquant")
  names = ["fp"] + [f"{m}_w{b}" for b in bits_list for m in methods]
  return protocol.compare([protocol.Arm(n) for n in names], np.arange(config.seeds), fit,
                          validate=lambda out: out["val"], test=lambda out: {metric: out["test"]},
                          maximize=metric == "accuracy")


def _objective_arms(fp_models, calib, config, include):
  """Protocol comparison of the layer objectives of GPTQ and LeanQuant on the full-precision layers: test metrics
  ``obj:<layer>`` per seed (validation: their sum, which nothing is chosen on -- one point per arm)."""
  bits = config.ptq.objective_bits
  per_seed = [layer_objectives(m, calib, bits, config, include) for m in fp_models]

  def fit(arm, hparams, seeds):
    method = arm.name.partition("_w")[0]
    return {path: np.asarray([o[method][path] for o in per_seed]) for path in per_seed[0][method]}

  return protocol.compare([protocol.Arm(f"{m}_w{bits}") for m in ("gptq", "leanquant")], np.arange(config.seeds),
                          fit, validate=lambda out: sum(out.values()),
                          test=lambda out: {f"obj:{p}": v for p, v in out.items()}, maximize=False)


def _digits(config, ctx, sub):
  return (_substrate_arms("digits", sub["models"], sub["calib"], sub["splits"], tuple(config.ptq.digits_bits),
                          config, None, "accuracy"),
          _objective_arms(sub["models"], sub["calib"], config, None))


def _char(config, ctx, sub):
  ctx.log_curve("char/train_loss", sub["losses"].mean(0), every=max(1, config.char.steps // 10))
  return (_substrate_arms("char", sub["models"], sub["calib"], sub["splits"], tuple(config.ptq.char_bits), config,
                          r"^blocks/", "ppl"),
          _objective_arms(sub["models"], sub["calib"], config, r"^blocks/"))


def _objective_part(cmp, bits: int):
  """Part (1): LeanQuant's layer objective <= GPTQ's on every layer (seed means)."""
  layers = list(cmp[f"leanquant_w{bits}"].test)
  return cmp.judge(lambda m, b: all(m[k] <= b[k] for k in layers), method=f"leanquant_w{bits}",
                   baseline=f"gptq_w{bits}"), layers


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  digits_sub, char_sub = fp6.substrates(config)
  d_cmp, d_obj_cmp = _digits(config, ctx, digits_sub)
  ch_cmp, ch_obj_cmp = _char(config, ctx, char_sub)
  c = config.ptq
  low = min(c.digits_bits)
  (d_obj, d_layers), (c_obj, c_layers) = _objective_part(d_obj_cmp, c.objective_bits), _objective_part(
      ch_obj_cmp, c.objective_bits)
  c_ppl = ch_cmp.judge(lambda m, b: m["ppl"] < b["ppl"], method=f"leanquant_w{c.char_bits[0]}",
                       baseline=f"gptq_w{c.char_bits[0]}")
  d_w2 = d_cmp.judge(lambda m, b: m["accuracy"] >= b["accuracy"] + 0.02, method=f"leanquant_w{low}",
                     baseline=f"gptq_w{low}")
  parts = {"layer_objective_digits": d_obj, "layer_objective_char": c_obj, "char_ppl": c_ppl,
           f"digits_w{low}_acc": d_w2}
  holds = all(p["holds"] for p in parts.values())
  control = all(p["control_passes"] for p in parts.values())  # the whole claim with LeanQuant replaced by GPTQ

  acc = {n: d_cmp[n].mean("accuracy") for n in d_cmp.arms}
  ppl = {n: ch_cmp[n].mean("ppl") for n in ch_cmp.arms}
  ob = c.objective_bits
  ratios = {f"{name}/{k[4:]}": cmp[f"leanquant_w{ob}"].mean(k) / cmp[f"gptq_w{ob}"].mean(k)
            for name, cmp, layers in (("digits", d_obj_cmp, d_layers), ("char", ch_obj_cmp, c_layers))
            for k in layers}
  for n in acc:
    ctx.print(f"digits-mlp {n}: test acc {acc[n]:.4f} +- {d_cmp[n].std('accuracy'):.4f}")
  for n in ppl:
    ctx.print(f"char-lm {n}: test ppl {ppl[n]:.4f} +- {ch_cmp[n].std('ppl'):.4f}")
  for k, r in ratios.items():
    ctx.print(f"layer objective LeanQuant / GPTQ (W3, fp Hessian) {k}: {r:.3f}")
  ctx.log(0, {**{f"digits/{n}/test_accuracy": a for n, a in acc.items()},
              **{f"char/{n}/test_ppl": v for n, v in ppl.items()}})
  claim = {"statement": CLAIM, "passed": bool(holds and not control), "holds": bool(holds),
           "control_passes": bool(control), "vacuous": bool(control),
           **{f"{k}_holds": bool(p["holds"]) for k, p in parts.items()},
           "digits_accuracy": acc, "digits_accuracy_std": {n: d_cmp[n].std("accuracy") for n in acc},
           "char_ppl": ppl, "char_ppl_std": {n: ch_cmp[n].std("ppl") for n in ppl},
           "layer_objective_ratio_leanquant_over_gptq": ratios}
  ctx.print(json.dumps({k: v for k, v in claim.items() if k != "statement"}, indent=1))
  protocols = {"digits": d_cmp.to_json(), "char": ch_cmp.to_json(), "digits_objective": d_obj_cmp.to_json(),
               "char_objective": ch_obj_cmp.to_json()}
  results = {**protocols, "protocol": protocols, "claim": claim}
  return results
