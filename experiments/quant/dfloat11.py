"""DFloat11: lossless Huffman coding of bfloat16 exponents (Zhang et al., 2025, arXiv:2504.11651), catalogue [112].

Setting: DIGITS-MLP (64-256-256-10, ReLU, Adam 1e-3, 40 epochs, batch 64; seeds 0-2) trained in float32, cast to
bfloat16, then all parameter tensors concatenated and compressed with :func:`paperlab.quant.df11_encode` as one
stream with one canonical Huffman code for the model (as the official ``encode_weights`` does with ``torch.cat``
and split positions; 8-byte chunks with 5-bit gaps, 256-chunk blocks with their start index), decoded and split
back. Arms: ``df11``
(the compressed model) and ``bf16`` (the raw bfloat16 model: 16 bits per weight, its own round trip). The claim is
judged on seed means through :mod:`paperlab.runner.protocol`; its control (the raw bf16 model passed as the method)
fails the size part.

Metrics per seed: ``roundtrip_exact`` (every decoded bit equals the bf16 bit), ``max_logit_diff`` (test-set logits
of the decoded model vs the bf16 model), ``bits_per_weight`` (all stored bytes: sign/mantissa, exponent stream,
gaps, block starts, the 256-byte code-length table and the split positions), ``exponent_entropy`` (H of the exponents
of all weights, bits), ``size_ratio_without_codebook`` (stored bytes minus the code-length table, over bf16 bytes).
A first version with one code per tensor (six 256-byte tables) measured 10.897 bits/weight against the bound
10.889 and failed; the model-level code is the paper's method, not a change of the claim.

Measured (seeds 0-2, CPU): bit-exact round trip and identical test logits on every seed; H(exponent) 2.589 bits;
10.871 bits/weight (per seed 10.868/10.877/10.869) <= 8 + H + 0.3 = 10.889, of which ~0.22 are the 5-bit chunk
gaps and ~0.06 the Huffman redundancy; size 0.678 of bf16 without the code table; test accuracy 0.977.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, papers, quant, train
from paperlab.runner import protocol

PAPER_ID = 112
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "only the trained DIGITS-MLP is compressed; the CHAR-LM half of the claim is left out to keep the reproduction "
    "within the CI budget (training the 0.4M-parameter char LM for 1500 steps takes 60-90 s on CPU)",
    "the code-length table is counted in bits_per_weight and excluded from the size ratio, as the claim's 'plus "
    "the codebook' allows",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.epochs = 40
  c.batch_size = 64
  c.learning_rate = 1e-3
  c.widths = (256, 256)
  return c


def _bits(tree) -> list[np.ndarray]:
  return [np.asarray(a).view(np.uint16) for a in jax.tree.leaves(tree)]


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  ds = data.digits()
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  x_test = jnp.asarray(ds.x_test)
  steps = config.epochs * (x.shape[0] // config.batch_size)
  model_fn = lambda rngs: models.MLP(64, list(config.widths), ds.num_classes, rngs=rngs)
  tx = optax.adam(config.learning_rate)
  graphdef, init = train.make_init(model_fn, tx)
  step = train.make_train_step(graphdef, train.classification_loss, tx)

  @jax.jit
  @jax.vmap
  def trained(key):
    state, metrics = train.run_steps(step, init(key), (x, y), key, batch_size=config.batch_size, num_steps=steps)
    return state, metrics["loss"]

  def logits(state, params):
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, params), state.model_state)(x_test.astype(jnp.bfloat16))

  cache = {}

  def fit(arm, hparams, seeds):
    if "states" not in cache:
      cache["states"], losses = trained(jax.vmap(jax.random.key)(jnp.asarray(seeds)))
      losses = np.asarray(losses)
      for i in range(0, steps, max(1, steps // 10)):
        ctx.log(i, {"train_loss": float(losses[:, i].mean())})
    states = cache["states"]
    out = {k: [] for k in ("roundtrip_exact", "max_logit_diff", "bits_per_weight", "exponent_entropy",
                           "size_ratio_without_codebook", "test_accuracy")}
    for s in range(len(seeds)):
      state = jax.tree.map(lambda a: a[s], states)
      bf16 = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16), state.params)
      n = sum(a.size for a in jax.tree.leaves(bf16))
      bf16_bytes = 2 * n
      if arm.name == "df11":
        leaves, treedef = jax.tree.flatten(bf16)
        split = np.cumsum([a.size for a in leaves])[:-1]
        comp = quant.df11_encode(np.concatenate([a.reshape(-1) for a in leaves]))
        flat = np.split(quant.df11_decode(comp), split)
        back = jax.tree.unflatten(treedef, [f.reshape(a.shape) for f, a in zip(flat, leaves)])
        stored = comp.nbytes + 8 * split.size  # plus the split positions (int64)
        tables = comp.code_lengths.nbytes
      else:
        back = jax.tree.map(np.copy, bf16)
        stored, tables = bf16_bytes, 0
      exact = all(np.array_equal(a, b) for a, b in zip(_bits(bf16), _bits(back)))
      ref, got = logits(state, bf16), logits(state, back)
      out["roundtrip_exact"].append(float(exact))
      out["max_logit_diff"].append(float(jnp.max(jnp.abs(got.astype(jnp.float32) - ref.astype(jnp.float32)))))
      out["bits_per_weight"].append(8 * stored / n)
      out["exponent_entropy"].append(quant.exponent_entropy(bf16))
      out["size_ratio_without_codebook"].append((stored - tables) / bf16_bytes)
      out["test_accuracy"].append(float(jnp.mean(jnp.argmax(got, -1) == jnp.asarray(ds.y_test))))
    return {k: np.asarray(v) for k, v in out.items()}

  comparison = protocol.compare([protocol.Arm("bf16"), protocol.Arm("df11")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # nothing to tune: one point per arm
                                test=lambda out: out)

  def claim(m, b):
    return (m["roundtrip_exact"] == 1.0 and m["max_logit_diff"] == 0.0
            and m["bits_per_weight"] <= 8 + m["exponent_entropy"] + 0.3
            and m["size_ratio_without_codebook"] <= 0.75)

  verdict = comparison.judge(claim, method="df11", baseline="bf16")
  d = comparison["df11"]
  for name in ("bf16", "df11"):
    ctx.print(f"{name}: {comparison[name].mean('bits_per_weight'):.3f} bits/weight, size ratio "
              f"{comparison[name].mean('size_ratio_without_codebook'):.4f}, "
              f"exact {comparison[name].mean('roundtrip_exact')}")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "exponent_entropy": d.mean("exponent_entropy"),
                      "bits_per_weight": d.mean("bits_per_weight"),
                      "bits_bound": 8 + d.mean("exponent_entropy") + 0.3,
                      "size_ratio_without_codebook": d.mean("size_ratio_without_codebook"),
                      "max_logit_diff": d.mean("max_logit_diff"), "roundtrip_exact": d.mean("roundtrip_exact")}
  return results
