"""RSQ: rotate, scale tokens by importance, then GPTQ (Sung et al., "RSQ: Learning from Important Tokens Leads to
Better Quantized LLMs", arXiv:2503.01820), catalogue [74], on CHAR-LM. The GuidedQuant reproduction ([63],
``experiments/quant/guidedquant.py``) loads this file for the shared pieces.

Substrate: the char transformer of ``experiments/quant/ptq_char.py`` as trained by ``experiments/quant/fp6.py``
(2 pre-LN layers, d_model 64, 4 heads, context 32, 300 Adam steps at 3e-3, batch 16, seeds 0-2) on the embedded
grammar corpus; calibration: 16 training windows of 32 tokens; metric: perplexity on 128 held-out windows (validation:
a tail of the training text; test: the test split). The Dense layers of the blocks (qkv, attention out, fc1, fc2) are
quantized at W3 g32 (asymmetric min-max grid, percdamp 0.01, no act-order), layer by layer in forward order on the
partially quantized model; embeddings and head stay in float.

Arms (:func:`paperlab.quant.rsq_model`): ``gptq`` (r = 1, no rotation: GPTQ exactly), ``gptq_rot`` (a random
Hadamard rotation of every layer's inputs, r = 1), ``rsq`` (rotation + AttnCon token importance, ``r_min = 0.005``,
``r_max = 1`` as the released script; the importance of a block is computed once, from its full-precision attention
on the inputs of the partially quantized model, and used for the block's four layers, as the official code), and
``rtn`` (round-to-nearest, the control: RTN passed as RSQ must fail). One grid point per arm (nothing to tune); the
protocol reads the test split once per arm and judges the claim on seed means.

Measured at the default config (seeds 0-2, test perplexity means; per-seed values and std in the record):
full precision 2.6273, RTN 2.8622, GPTQ 2.6981, GPTQ + rotation 2.7191, RSQ 2.7448. Neither part holds: the
rotation costs GPTQ +0.78% (this small model has no outlier features for the rotation to spread, and rotating mixes
the g32 groups), and RSQ adds +0.94% over GPTQ + rotation (bound +0.5%): with 512 calibration tokens and
``r_min = 0.005`` the attention concentration (dominated by the first tokens of each causal window) leaves few
effective tokens in the Hessian. Not reproduced. Measured once beside it (not in the CI run), RSQ with ``r_min`` 0.1 /
0.3 gives 2.7438 / 2.7123 (validation 2.7774 / 2.7431, GPTQ + rotation 2.7598, GPTQ 2.7361): a gentler floor helps
RSQ over GPTQ + rotation but not over unrotated GPTQ. The exact equivalences (r = 1 is GPTQ bit for bit, the
weighted Hessian is X^T diag(r) X, the rotation is orthogonal and function-preserving) are the unit and parity tests.
CI scale (CI_CONFIG: fp6.py's shared substrates, CHAR-LM 150 training steps, 64 evaluation windows); at it the
claim holds, unlike the record: RSQ 4.9526 vs GPTQ + rotation 4.9768 (-0.49%), GPTQ 4.9804, RTN 5.2256, fp 4.8716
(seeds 0-2; the less trained model gains from the rotation); 32 CPU-s measured under load on top of the substrates,
86 CPU-s with them (pytest -n 0 under load).
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

fp6 = load_experiment(pathlib.Path(__file__).with_name("fp6.py"))  # the shared trained substrates
ptq_char = load_experiment(pathlib.Path(__file__).with_name("ptq_char.py"))  # windows, kernels, metrics

PAPER_ID = 74
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "CHAR-LM: the embedded grammar corpus (paperlab.data, 200k characters) and the small transformer of "
    "experiments/quant/fp6.py (d_model 64, context 32, 300 Adam steps at lr 3e-3, batch 16) so that the run fits "
    "the CI budget (catalogue: ~300 KB of Python source, d 128, context 64, 1500 steps)",
    "rotation: a random Hadamard matrix on each Dense layer's input features (quantize Q^T W under Q^T H Q, the "
    "online form QuaRot uses before down_proj), not one residual-stream rotation fused into the weights: the "
    "CharTransformer's LayerNorms subtract the mean, which does not commute with a rotation (the paper's LLaMA "
    "models use RMSNorm). For weight-only quantization both quantize a rotated kernel under the rotated Hessian",
    "AttnCon is computed from each block's full-precision attention (sum over heads and queries, min-max onto "
    "[0.005, 1] per sequence, as the released script) on 16 calibration windows of 32 tokens (paper: 256 x 4096)",
)
CI_CONFIG = dict(fp6.CI_CONFIG)  # the test suite's scale: the shared substrates' (paperlab reproduce 74 --ci)


def get_config() -> ml_collections.ConfigDict:
  c = fp6.get_config()
  del c.claim
  c.bits, c.group_size = 3, 32
  c.r_min, c.r_max = 0.005, 1.0
  c.claim = ml_collections.ConfigDict(dict(rsq_slack=0.005))
  return c


def substrate_config(config):
  """The part of the config the shared substrates are trained from (so fp6.py's in-process cache is hit)."""
  c = fp6.get_config()
  c.seeds = config.seeds
  for part in ("digits", "char"):
    for k in c[part]:
      c[part][k] = config[part][k]
  return c


def char_labels(config):
  """The next-token targets of the char calibration windows (the inputs are ``fp6.substrates``' ``calib``)."""
  c = config.char
  _, train_tokens, _ = ptq_char.char_data(c.num_chars)
  return [jnp.asarray(ptq_char.windows(train_tokens, c.calib_windows, c.seq_len)[:, 1:])]


def attention_probs(model, tokens: jax.Array, block: int) -> jax.Array:
  """Causal attention probabilities ``(batch, heads, q, k)`` of block ``block`` of a ``CharTransformer``."""
  x = model.embed(tokens) + model.pos[None, : tokens.shape[1]]
  for blk in model.blocks[:block]:
    x = blk(x)
  blk = model.blocks[block]
  attn = blk.attn
  b, t, d = x.shape
  qkv = attn.qkv(blk.ln1(x)).reshape(b, t, 3, attn.num_heads, attn.head_dim)
  q, k = qkv[:, :, 0], qkv[:, :, 1]
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(attn.head_dim))
  scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, jnp.finfo(scores.dtype).min)
  return jax.nn.softmax(scores, axis=-1)


def attncon_weights(calib_tokens: jax.Array, r_min: float, r_max: float):
  """``token_weights`` for :func:`paperlab.quant.rsq_model`: AttnCon of the block a layer belongs to, computed when
  the block's first layer (qkv, still in full precision) is reached and reused for the block's other layers."""
  cache = {}

  def weights(path, current):
    block = int(path.split("/")[1])
    if block not in cache:
      cache[block] = quant.token_importance(attention_probs(current, calib_tokens, block), r_min=r_min, r_max=r_max)
    return cache[block]
  return weights


def char_arm_models(arm: str, sub: dict, config, seed_index: int):
  """The quantized CHAR-LM of one seed for arms ``rtn``, ``gptq``, ``gptq_rot``, ``rsq``."""
  m = sub["models"][seed_index]
  kw = dict(bits=config.bits, group_size=config.group_size, include=r"^blocks/")
  if arm == "rtn":
    new = {p: quant.fake_quantize_rtn(k, bits=config.bits, group_size=config.group_size)
           for p, k in ptq_char.kernels(m, "blocks/").items()}
    return quant.replace_kernels(m, new)
  if arm == "gptq":
    return quant.rsq_model(m, sub["calib"], **kw)[0]
  key = jax.random.key(1000 + seed_index)
  weights = attncon_weights(sub["calib"][0], config.r_min, config.r_max) if arm == "rsq" else None
  return quant.rsq_model(m, sub["calib"], token_weights=weights, rotate=True, key=key, **kw)[0]


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  _, char = fp6.substrates(substrate_config(config))
  ctx.log_curve("char/train_loss", char["losses"].mean(0), every=max(1, config.char.steps // 10))

  def fit(arm, hparams, seeds):
    qmodels = char["models"] if arm.name == "fp" else [char_arm_models(arm.name, char, config, i)
                                                       for i in range(len(char["models"]))]
    return fp6.evaluate("char", char, qmodels)

  names = ["fp", "rtn", "gptq", "gptq_rot", "rsq"]
  cmp = protocol.compare([protocol.Arm(n) for n in names], range(len(char["models"])), fit,
                         validate=lambda out: out["val"], test=lambda out: {"ppl": out["test"]}, maximize=False)
  ppl = {n: cmp[n].mean("ppl") for n in names}
  slack = config.claim.rsq_slack
  # the control is RTN passed as RSQ: it must fail "<= GPTQ+rotation + 0.5%"
  verdict = cmp.judge(lambda m, b: m["ppl"] <= (1 + slack) * ppl["gptq_rot"] and ppl["gptq_rot"] <= ppl["gptq"],
                      method="rsq", baseline="rtn")
  for n in names:
    ctx.print(f"char-lm W{config.bits} g{config.group_size} {n}: test ppl {ppl[n]:.4f} +- {cmp[n].std('ppl'):.4f}")
  results = {"protocol": {"char": cmp.to_json()}}
  results["claim"] = {
      "statement": CLAIM,
      "passed": verdict["passed"], "holds": verdict["holds"], "control_passes": verdict["control_passes"],
      "char_ppl": ppl, "char_ppl_std": {n: cmp[n].std("ppl") for n in names},
      "rsq_vs_gptq_rot": ppl["rsq"] / ppl["gptq_rot"] - 1.0,
      "gptq_rot_vs_gptq": ppl["gptq_rot"] / ppl["gptq"] - 1.0,
  }
  ctx.print(json.dumps({k: v for k, v in results["claim"].items() if k != "statement"}, indent=1))
  return results
