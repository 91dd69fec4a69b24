"""AWQ vs RTN vs GPTQ weight-only PTQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression
and Acceleration", arXiv:2306.00978), catalogue [243], on the catalogue's two substrates.

1. DIGITS-MLP-OUT: an MLP 64-256-256-10 (ReLU, Adam 1e-3, 40 epochs) on scikit-learn digits; 4 hidden units of
   layer 1 (seeded) get their incoming weights and bias multiplied by 30 and their outgoing weights divided by 30,
   which leaves the function unchanged (ReLU is positively homogeneous) and gives layer 2 LLM-like outlier input
   channels with small weights. Every Dense layer is quantized at W3 g32 (asymmetric, min-max grid) with RTN and
   AWQ (calibration: 256 training images); metric: test accuracy drop from full precision.
2. CHAR-LM: a 2-layer pre-LN character transformer (``paperlab.models.CharTransformer``) trained with Adam on the
   embedded grammar corpus (``paperlab.data.char_dataset``); the Dense layers of the blocks (qkv, attention out,
   fc1, fc2) are quantized at W4 g32 and W3 g32 with RTN, GPTQ (no act-order, true-sequential, percdamp 0.01) and
   AWQ (alpha grid of 20 on the layer output, clip search max_shrink 0.5 / 20 grid; query/key layers not clipped);
   embeddings and the LM head stay in full precision as in the official GPTQ and AWQ scripts. Calibration: 16
   training windows (1024 tokens); metric: perplexity on held-out windows (validation: a held-out tail of the
   training text; test: the test split).

Arms are compared through :mod:`paperlab.runner.protocol` (3 seeds, one point per arm: PTQ has nothing to tune
here, test read once per arm, claim judged on seed means with the control "RTN passed as AWQ"). The run also
reports the issue's criterion (at W3 GPTQ and AWQ each lose at most half of RTN's perplexity increase) and writes a
perplexity table (``ptq_table.md``) and a bar chart (``ptq_ppl.png``) to the run directory.

Measured at the default config (seeds 0-2, means; std in the record):

* DIGITS-MLP-OUT W3 g32 test accuracy: full precision 0.9733, RTN 0.9719, AWQ 0.9719: both lose 0.15pt (two
  test images), so "AWQ drop <= 0.5 x RTN drop" fails -- at this scale RTN barely hurts and the drop is noise.
* CHAR-LM test perplexity (full precision 2.339):

  | method | W4 g32 | W3 g32 |
  |---|---|---|
  | RTN | 2.384 | 2.536 |
  | GPTQ | 2.349 | 2.385 |
  | AWQ | 2.372 | 2.500 |

  AWQ < RTN holds at both widths, but AWQ (2.500) > GPTQ + 2% (2.433) at W3: the claim does not reproduce. The
  issue's criterion (each method loses at most half of RTN's increase at W3: RTN +0.197) holds for GPTQ (+0.047)
  and fails for AWQ (+0.162).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, papers, quant, train
from paperlab.runner import protocol

PAPER_ID = 243
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "CHAR-LM corpus: the embedded grammar corpus (paperlab.data, 200k characters) instead of ~300 KB of Python "
    "stdlib source, and a smaller model and budget so the whole run fits the CI budget: d_model 64, context 32, "
    "500 Adam steps at lr 3e-3, batch 16 (catalogue: d 128, context 64, 1500 steps)",
    "group size 32 at W4 and W3 (the catalogue's g32; the issue's g128 does not divide the model's width 64)",
    "AWQ searches the scale on each layer's own output (the official code's choice for out_proj/fc2) also for qkv "
    "and fc1, where the official code measures the attention block / layer after the LayerNorm; the scale is kept "
    "as an explicit per-input-channel factor (exact, equivalent to folding it into the previous op)",
    "AWQ uses the same min-max integer grid as RTN and GPTQ (zero inside the grid), not llm-awq's raw min/max grid",
    "DIGITS-MLP-OUT: digits split 75/25 with the validation set a 15% tail of the training split (catalogue "
    "70/15/15)",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.digits = ml_collections.ConfigDict(dict(epochs=40, batch_size=64, learning_rate=1e-3, widths=(256, 256),
                                            outlier_units=4, outlier_factor=30.0, bits=3, group_size=32,
                                            calib=256))
  c.char = ml_collections.ConfigDict(dict(num_chars=200_000, d_model=64, num_layers=2, num_heads=4, seq_len=32,
                                          steps=500, batch_size=16, learning_rate=3e-3, bits=(4, 3),
                                          group_size=32, calib_windows=16, eval_windows=128))
  return c


# ----------------------------------------------------------------------------------------------------------------
# The shared substrates (also used by adaround.py, fp6.py, lorc.py and qat.py, which load this file)


def digits_tail_split():
  """``((x, y), {"val": (x, y), "test": (x, y)})``: digits' train split minus a 15% validation tail (perm seed 0)."""
  ds = data.digits()
  n_val = int(0.15 * ds.x_train.shape[0])
  perm = np.random.default_rng(0).permutation(ds.x_train.shape[0])
  tr, va = perm[n_val:], perm[:n_val]
  x, y = jnp.asarray(ds.x_train[tr]), jnp.asarray(ds.y_train[tr])
  return (x, y), {"val": (jnp.asarray(ds.x_train[va]), jnp.asarray(ds.y_train[va])),
                  "test": (jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))}


def train_digits_mlps(x, y, seeds, *, widths, learning_rate: float, epochs: int, batch_size: int,
                      num_classes: int = 10) -> list:
  """The full-precision DIGITS-MLP ``64-widths-num_classes`` (ReLU, Adam) of each seed, trained vmapped over seeds."""
  tx = optax.adam(learning_rate)
  model_fn = lambda rngs: models.MLP(64, list(widths), num_classes, rngs=rngs)
  graphdef, init = train.make_init(model_fn, tx)
  step = train.make_train_step(graphdef, train.classification_loss, tx)
  steps = epochs * (x.shape[0] // batch_size)

  @jax.jit
  @jax.vmap
  def fit_seed(key):
    state, _ = train.run_steps(step, init(key), (x, y), key, batch_size=batch_size, num_steps=steps)
    return state

  states = fit_seed(jax.vmap(jax.random.key)(jnp.asarray(seeds)))
  return [nnx.merge(graphdef, *(jax.tree.map(lambda a, i=i: a[i], (states.params, states.model_state))))
          for i in range(len(seeds))]


def char_data(num_chars: int):
  """``(dataset, train_tokens, val_tokens)``: the grammar corpus with a 10% validation tail of its train split."""
  ds = data.char_dataset(num_chars=num_chars)
  n_val = len(ds.train) // 10
  return ds, ds.train[:-n_val], ds.train[-n_val:]


def char_model_fn(vocab_size: int, d_model: int, num_layers: int, num_heads: int, seq_len: int):
  """``rngs -> CharTransformer``: the 2-layer pre-LN character transformer of CHAR-LM."""
  return lambda rngs: models.CharTransformer(vocab_size, d_model, num_layers, num_heads, seq_len, rngs=rngs)


def lm_loss(model, batch, rng):
  """Next-token cross entropy of ``model`` on ``batch = (inputs, targets)``."""
  inputs, targets = batch
  return optax.softmax_cross_entropy_with_integer_labels(model(inputs), targets).mean()


def train_char_lms(vocab_size: int, train_tokens, seeds, *, d_model: int, num_layers: int, num_heads: int,
                   seq_len: int, steps: int, batch_size: int, learning_rate: float) -> tuple[list, np.ndarray]:
  """``(models, losses[seed, step])``: the full-precision CHAR-LM of each seed (Adam, vmapped over seeds)."""
  tx = optax.adam(learning_rate)
  graphdef, init = train.make_init(char_model_fn(vocab_size, d_model, num_layers, num_heads, seq_len), tx)
  step = train.make_train_step(graphdef, lm_loss, tx)
  tokens = jnp.asarray(train_tokens)

  @jax.jit
  @jax.vmap
  def fit_seed(key):
    def body(state, k):
      return step(state, data.sample_sequences(k, tokens, batch_size, seq_len), k)
    state, metrics = jax.lax.scan(body, init(key), jax.random.split(key, steps))
    return state, metrics["loss"]

  states, losses = fit_seed(jax.vmap(jax.random.key)(jnp.asarray(seeds)))
  fp = [nnx.merge(graphdef, *(jax.tree.map(lambda a, i=i: a[i], (states.params, states.model_state))))
        for i in range(len(seeds))]
  return fp, np.asarray(losses)


def windows(tokens: np.ndarray, count: int, length: int) -> np.ndarray:
  """``count`` evenly spaced windows of ``length + 1`` tokens."""
  starts = np.linspace(0, len(tokens) - length - 2, count).astype(np.int64)
  return np.stack([tokens[s:s + length + 1] for s in starts])


def kernels(model, prefix: str = "") -> dict:
  """``{path: kernel}`` of the model's Dense layers whose path starts with ``prefix``."""
  out = {}
  for p, m in nnx.iter_modules(model):
    path = "/".join(map(str, p))
    if isinstance(m, nnx.Linear) and path.startswith(prefix):
      out[path] = m.kernel[...]
  return out


@functools.partial(jax.jit, static_argnums=0)
def accuracy(graphdef, state, xs, ys):
  """Top-1 accuracy of ``nnx.merge(graphdef, state)`` on ``(xs, ys)``."""
  return jnp.mean(jnp.argmax(nnx.merge(graphdef, state)(xs), -1) == ys)


@functools.partial(jax.jit, static_argnums=0)
def perplexity(graphdef, state, wins):
  """Next-token perplexity of ``nnx.merge(graphdef, state)`` on windows ``wins`` of ``length + 1`` tokens."""
  logits = nnx.merge(graphdef, state)(wins[:, :-1])
  return jnp.exp(optax.softmax_cross_entropy_with_integer_labels(logits, wins[:, 1:]).mean())


def joint_verdict(first: dict, second: dict, names=("digits", "char")) -> dict:
  """The claim fields of a two-part claim: passed/holds need both parts, the control may pass in either."""
  return {"passed": bool(first["passed"] and second["passed"]),
          "holds": bool(first["holds"] and second["holds"]),
          "control_passes": bool(first["control_passes"] or second["control_passes"]),
          f"{names[0]}_passed": bool(first["passed"]), f"{names[1]}_passed": bool(second["passed"])}


# ----------------------------------------------------------------------------------------------------------------
# DIGITS-MLP-OUT


def _inject_outliers(model: models.MLP, key: jax.Array, units: int, factor: float) -> models.MLP:
  """Multiply ``units`` hidden units of layer 1 by ``factor`` and divide their outgoing weights: same function."""
  graphdef, state = nnx.split(model)
  flat = dict(nnx.to_flat_state(state))
  width = flat[("hidden", 0, "kernel")].get_value().shape[1]
  j = jax.random.choice(key, width, (units,), replace=False)
  scale = jnp.ones(width).at[j].set(factor)
  for k in (("hidden", 0, "kernel"), ("hidden", 0, "bias")):
    flat[k] = flat[k].replace(flat[k].get_value() * scale)
  k = ("hidden", 1, "kernel")
  flat[k] = flat[k].replace(flat[k].get_value() / scale[:, None])
  return nnx.merge(graphdef, nnx.from_flat_state(list(flat.items())))


def _digits(config, ctx):
  c = config.digits
  (x, y), splits = digits_tail_split()
  seeds = np.arange(config.seeds)
  fp_models = [_inject_outliers(m, jax.random.key(1000 + int(i)), c.outlier_units, c.outlier_factor)
               for i, m in zip(seeds, train_digits_mlps(x, y, seeds, widths=c.widths, learning_rate=c.learning_rate,
                                                         epochs=c.epochs, batch_size=c.batch_size))]
  calib = [x[:c.calib]]
  eval_graphdef = nnx.split(fp_models[0])[0]

  def quantized(arm, m):
    if arm == "fp":
      return m
    if arm == "rtn":
      new = {p: quant.fake_quantize_rtn(k, bits=c.bits, group_size=c.group_size) for p, k in kernels(m).items()}
      return quant.replace_kernels(m, new)
    return quant.awq_model(m, calib, bits=c.bits, group_size=c.group_size, no_clip=None)[0]

  def fit(arm, hparams, seeds):
    out = {"val": [], "test": []}
    for m in fp_models:
      state = nnx.split(quantized(arm.name, m))[1]
      for split in out:
        out[split].append(float(accuracy(eval_graphdef, state, *splits[split])))
    return {k: np.asarray(v) for k, v in out.items()}

  arms = [protocol.Arm(name) for name in ("fp", "rtn", "awq")]
  comparison = protocol.compare(arms, seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"accuracy": out["test"]})
  fp = comparison["fp"].mean("accuracy")
  verdict = comparison.judge(lambda m, b: fp - m["accuracy"] <= 0.5 * (fp - b["accuracy"]), method="awq",
                             baseline="rtn")
  for name in ("fp", "rtn", "awq"):
    ctx.print(f"digits-mlp-out W{c.bits} g{c.group_size} {name}: test acc {comparison[name].mean('accuracy'):.4f}")
  return comparison, verdict


# ----------------------------------------------------------------------------------------------------------------
# CHAR-LM


def _char(config, ctx):
  c = config.char
  ds, train_tokens, val_tokens = char_data(c.num_chars)
  seeds = np.arange(config.seeds)
  fp_models, losses = train_char_lms(ds.tokenizer.vocab_size, train_tokens, seeds, d_model=c.d_model,
                                     num_layers=c.num_layers, num_heads=c.num_heads, seq_len=c.seq_len,
                                     steps=c.steps, batch_size=c.batch_size, learning_rate=c.learning_rate)
  ctx.log_curve("char/train_loss", losses.mean(0), every=max(1, c.steps // 10))
  calib_w = windows(train_tokens, c.calib_windows, c.seq_len)
  calib = [jnp.asarray(calib_w[:, :-1])]
  evals = {"val": windows(val_tokens, c.eval_windows, c.seq_len),
           "test": windows(ds.test, c.eval_windows, c.seq_len)}
  eval_graphdef = nnx.split(fp_models[0])[0]

  include = r"^blocks/"

  def quantized(method, bits, m):
    if method == "fp":
      return m
    if method == "rtn":
      new = {p: quant.fake_quantize_rtn(k, bits=bits, group_size=c.group_size)
             for p, k in kernels(m, "blocks/").items()}
      return quant.replace_kernels(m, new)
    if method == "gptq":
      return quant.gptq_model(m, calib, bits=bits, group_size=c.group_size, include=include)[0]
    return quant.awq_model(m, calib, bits=bits, group_size=c.group_size, include=include)[0]

  def fit(arm, hparams, seeds):
    method, _, bits = arm.name.partition("_w")
    out = {"val": [], "test": []}
    for m in fp_models:
      state = nnx.split(quantized(method, int(bits or 16), m))[1]
      for split in out:
        out[split].append(float(perplexity(eval_graphdef, state, jnp.asarray(evals[split]))))
    return {k: np.asarray(v) for k, v in out.items()}

  names = ["fp"] + [f"{m}_w{b}" for b in c.bits for m in ("rtn", "gptq", "awq")]
  comparison = protocol.compare([protocol.Arm(n) for n in names], seeds, fit, validate=lambda out: out["val"],
                                test=lambda out: {"ppl": out["test"]}, maximize=False)
  low = min(c.bits)
  gptq_ppl = comparison[f"gptq_w{low}"].mean("ppl")
  verdict = comparison.judge(lambda m, b: m["ppl"] < b["ppl"] and m["ppl"] <= 1.02 * gptq_ppl,
                             method=f"awq_w{low}", baseline=f"rtn_w{low}")
  for n in names:
    ctx.print(f"char-lm {n}: test ppl {comparison[n].mean('ppl'):.4f} +- {comparison[n].std('ppl'):.4f}")
  return comparison, verdict


def _write_table(ctx, comparison, bits, group_size) -> str:
  fp = comparison["fp"]
  lines = [f"| method | " + " | ".join(f"W{b} g{group_size} ppl" for b in bits) + " |",
           "|---|" + "---|" * len(bits),
           f"| full precision | " + " | ".join(f"{fp.mean('ppl'):.4f} +- {fp.std('ppl'):.4f}" for _ in bits) + " |"]
  for m in ("rtn", "gptq", "awq"):
    cells = [f"{comparison[f'{m}_w{b}'].mean('ppl'):.4f} +- {comparison[f'{m}_w{b}'].std('ppl'):.4f}" for b in bits]
    lines.append(f"| {m.upper()} | " + " | ".join(cells) + " |")
  table = "\n".join(lines) + "\n"
  (ctx.workdir / "ptq_table.md").write_text(table)
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    fig, ax = plt.subplots(figsize=(5, 3.2))
    width = 0.25
    for i, m in enumerate(("rtn", "gptq", "awq")):
      means = [comparison[f"{m}_w{b}"].mean("ppl") for b in bits]
      stds = [comparison[f"{m}_w{b}"].std("ppl") for b in bits]
      ax.bar(np.arange(len(bits)) + (i - 1) * width, means, width, yerr=stds, label=m.upper())
    ax.axhline(fp.mean("ppl"), color="k", ls="--", lw=1, label="full precision")
    ax.set_xticks(np.arange(len(bits)), [f"W{b} g{group_size}" for b in bits])
    ax.set_ylabel("test perplexity")
    ax.set_ylim(bottom=0.95 * fp.mean("ppl"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ctx.workdir / "ptq_ppl.png", dpi=120)
    plt.close(fig)
  except ImportError:  # matplotlib is optional: the markdown table is always written
    pass
  return table


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  digits_cmp, digits_verdict = _digits(config, ctx)
  char_cmp, char_verdict = _char(config, ctx)
  bits = tuple(config.char.bits)
  table = _write_table(ctx, char_cmp, bits, config.char.group_size)
  ctx.print(table)
  low = min(bits)
  fp = char_cmp["fp"].mean("ppl")
  rise = {m: char_cmp[f"{m}_w{low}"].mean("ppl") - fp for m in ("rtn", "gptq", "awq")}
  issue_half = bool(rise["gptq"] <= 0.5 * rise["rtn"] and rise["awq"] <= 0.5 * rise["rtn"])
  digits_acc = {n: digits_cmp[n].mean("accuracy") for n in ("fp", "rtn", "awq")}
  results = {"digits": digits_cmp.to_json(), "char": char_cmp.to_json(), "table": table,
             "protocol": {"digits": digits_cmp.to_json(), "char": char_cmp.to_json()}}
  results["claim"] = {
      "statement": CLAIM,
      **joint_verdict(digits_verdict, char_verdict),
      "digits_accuracy": digits_acc,
      "digits_drop_rtn": digits_acc["fp"] - digits_acc["rtn"], "digits_drop_awq": digits_acc["fp"] - digits_acc["awq"],
      "char_ppl": {n: char_cmp[n].mean("ppl") for n in char_cmp.arms},
      "char_ppl_std": {n: char_cmp[n].std("ppl") for n in char_cmp.arms},
      f"char_ppl_increase_w{low}": rise,
      "issue_half_of_rtn_increase_at_w3": issue_half,
  }
  ctx.print(json.dumps({k: v for k, v in results["claim"].items() if k != "statement"}, indent=1))
  return results
