"""Towards a Unified View of Parameter-Efficient Transfer Learning (He et al., 2022, arXiv:2110.04366), catalogue
[591], plus issue 17's LoRA acceptance criterion in the same setting.

(a) Identity (eq. 7): prefix tuning computed directly (``paperlab.peft.attention`` over the prefixes concatenated
to K and V) equals the gated form ``(1 - lambda) Attn(q, K, V) + lambda Attn(q, P_k, P_v)``
(``paperlab.peft.prefix_attention``, which returns ``(out, lambda)``) to 1e-6, checked here on the experiment's own
draws (NumPy seed 591: 4 heads, 16 queries, 24 keys, 30 prefixes (the paper's l = 30), d = 16, 8 draws at query
scales 0.5-4, geometric) in float64, and reported in float32 too. In float32 the two forms differ by more than 1e-6
once attention is peaked (1.4e-6 on these draws; 3.0e-6 on an earlier jax.random set of the same shapes, where both
forms deviated from a float64 reference by up to 3.2e-6 (direct) and 1.2e-6 (gated)): float32 rounding of the
softmax, not a difference between the forms. The unit property test (tests/properties/test_peft_unified.py) bounds
the float32 error by ``16 eps32 (1 + max |logit|) max |v|`` against torch's SDPA in float64 instead of a fixed 1e-6.
The MAM adapter (``paperlab.peft.mam``) is not trained here: the claim is about the identity and the FFN adapters.

(b) The shifted task: a digits MLP (64-128-128-10, ReLU) is pretrained on the ordinary labels (Adam 1e-3, batch
64, 20 epochs; the shared splits of ``paperlab.runner.digits_splits``, 70/15/15) and fine-tuned on a label-permuted
task -- the fixed seeded derangement ``label_derangement(10, 0)``, so every class moves and the pretrained model, which
predicts the original labels, scores near 0 on it -- for 300 Adam steps of batch 64, seeds 0-2, each arm's learning rate chosen on validation
from a 3-point grid (equal budget), the test split read once per arm:

* ``sequential``: Houlsby adapter on the "FFN" sub-layer ``h = relu(x W_1 + b_1)`` (the 128 x 128 hidden layer
  ``hidden/1``): ``h <- h + relu(h W_down) W_up``, r = 8 (2048 trained parameters);
* ``parallel``: the parallel adapter on the same sub-layer, fed its input: ``h <- h + relu(x W_down) W_up``, r = 8
  (2048 trained parameters, exactly the sequential one's count);
* ``lora``: LoRA r = 4 (alpha = r) on all three kernels (hidden/0, hidden/1, head): 2344 trained parameters,
  8.97% of the model's 26122;
* ``full``: full fine-tuning of all 26122 parameters;
* ``none``: the pretrained model untouched (the control arm of both claims).

Adapters: W_down kaiming-uniform (a = sqrt(5), as LoRA's A), W_up zero, so every arm starts at the base model.
Grids: adapters and LoRA {1e-3, 3e-3, 1e-2}, full fine-tuning {3e-4, 1e-3, 3e-3} (3 points each).

Claims, judged on seed means of test accuracy on the permuted labels:
catalogue: the identity holds to 1e-6 and acc(parallel) >= acc(sequential) - 1pt (control: ``none`` in the
parallel adapter's place must fail); issue 17: acc(LoRA) >= acc(full) - 2pt with trainable fraction < 10%
(control: ``none`` in LoRA's place must fail).

Measured (seeds 0-2, test accuracy on the permuted labels, mean +- std over seeds; record of commit a0af559):

* identity: max |direct - gated| 2.2e-15 in float64 (<= 1e-6: holds); 1.4e-6 in float32 (see above);
* sequential adapter 0.9591 +- 0.0030 (lr 1e-2, 2048 trained, 7.84%), parallel adapter 0.9554 +- 0.0030 (lr 1e-2,
  2048 trained, 7.84%): parallel - sequential = -0.37pt >= -1pt, the catalogue claim reproduces;
* full fine-tuning 0.9690 +- 0.0018 (lr 3e-3, 26122 trained, 100%), LoRA r=4 0.9579 +- 0.0076 (lr 1e-2, 2344
  trained, 8.97%): LoRA - full = -1.12pt >= -2pt with < 10% of the parameters, issue 17's criterion holds;
* untouched model 0.0025 +- 0.0018: both controls fail, as they must.

The earlier record (commit 33329ad) had parallel 0.9566 and LoRA 0.9603 with the same code for those arms; the
shift (0.1-0.2pt, under one test example per seed on average) came with other changes in the tree and was not
traced; both verdicts are unchanged. Every trained arm chose its grid's largest point (adapters and LoRA 1e-2, full
fine-tuning 3e-3); the grids were fixed before the run. Two wider grids were tried afterwards on the earlier code
(not recorded): adapters/LoRA {3e-3, 1e-2, 3e-2}: sequential 0.9591 (1e-2), parallel 0.9554 (3e-2), LoRA 0.9603
(1e-2); full fine-tuning {1e-3, 3e-3, 1e-2}: 0.9678 (1e-2). Both verdicts held (parallel - sequential -0.37pt,
LoRA - full -0.74pt).
CI scale (CI_CONFIG): learning-rate grids {3e-3, 1e-2} (adapters, LoRA) and {1e-3, 3e-3} (full), the 2 largest points
of each, which hold every arm's choice in the record (8 trained fits instead of 12); at it: the record's numbers
exactly, parallel 0.9554 vs sequential 0.9591 (-0.37pt), LoRA 0.9579 vs full 0.9690 (-1.12pt), untouched 0.0025:
both claims hold, as the record (seeds 0-2), 29 CPU-s in pytest at load ~10 (the full grids:
32 CPU-s in pytest at load ~40).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import models, papers, peft
from paperlab.runner import digits_splits, protocol

PAPER_ID = 591
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
ISSUE_17_CLAIM = ("LoRA on a shifted digits task comes within 2 points of full fine-tuning with < 10% of the "
                  "trainable parameters")
DEVIATIONS = (
    "identity (a) judged in float64 (jax.enable_x64): the catalogue names no dtype; in float32 the same draws differ "
    "by up to 1.4e-6 (recorded as identity_max_abs_error_float32), which is rounding (both forms are that far from "
    "a float64 reference). The float64 judgement was chosen after the float32 run had been seen",
    "model: a digits MLP (64-128-128-10) instead of the paper's transformers (BART / mBART / RoBERTa); its 'FFN' is "
    "the 128x128 hidden layer hidden/1 (an MLP has no attention, so the prefix-tuning part is checked only as the "
    "identity (a), on random draws)",
    "no residual connection around the sub-layer: the adapters add to the sub-layer's output h = relu(x W + b)",
    "adapter bottleneck r = 8 (not the paper's r = 512 for a 1024-wide FFN) and scale s = 1 for both adapters (the "
    "paper's plain sequential / parallel forms; its scaled PA with s = 4 only rescales W_up's effective step under "
    "Adam, which the learning-rate grid covers); adapters without biases",
    "data: digits with a fixed label derangement as the shifted task instead of the paper's XSum / WMT / MNLI / SST2",
    "budget: 300 Adam steps of batch 64, learning-rate grids of 3 points chosen on validation (adapters and LoRA "
    "{1e-3, 3e-3, 1e-2}, full fine-tuning {3e-4, 1e-3, 3e-3}) instead of the paper's schedules",
    "an extra pair of arms (LoRA r=4 on all kernels, full fine-tuning) and a second claim: issue 17's acceptance "
    "criterion, judged separately in results['issue_17']",
)
CI_CONFIG = {"learning_rates": (3e-3, 1e-2), "full_learning_rates": (1e-3, 3e-3)}  # paperlab reproduce 591 --ci
ARMS = ("sequential", "parallel", "lora", "full", "none")
FFN = 1  # index of the adapted hidden layer (128 -> 128)
LORA_INCLUDE = r"(hidden/\d|head)/kernel"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.pretrain_epochs = 20
  c.steps = 300
  c.batch_size = 64
  c.adapter_rank = 8
  c.lora_rank = 4
  c.learning_rates = (1e-3, 3e-3, 1e-2)
  c.full_learning_rates = (3e-4, 1e-3, 3e-3)
  c.identity_draws = 8
  return c


def identity_error(num_draws: int, dtype) -> float:
  """Max |direct - gated| of prefix attention over ``num_draws`` random draws in ``dtype`` (part (a))."""

  rng = np.random.default_rng(591)
  heads, n, m, l, d = 4, 16, 24, 30, 16
  scales = np.geomspace(0.5, 4.0, num_draws)[:, None, None, None]
  draws = [scales * rng.standard_normal((num_draws, heads, n, d))] + [
      rng.standard_normal((num_draws, heads, rows, d)) for rows in (m, m, l, l)]

  def err(q, k, v, pk, pv):
    direct = peft.attention(q, jnp.concatenate([pk, k], axis=-2), jnp.concatenate([pv, v], axis=-2))
    gated, _ = peft.prefix_attention(q, k, v, pk, pv)
    return jnp.max(jnp.abs(direct - gated))

  return float(jax.jit(err)(*(jnp.asarray(a, dtype) for a in draws)))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  with jax.enable_x64(True):  # the identity is exact; float64 makes a 1e-6 tolerance test it, not float32 rounding
    max_err = identity_error(config.identity_draws, jnp.float64)
  max_err32 = identity_error(config.identity_draws, jnp.float32)
  ctx.print(f"identity: max |prefix_attention - gated form| = {max_err:.2e} (float64), {max_err32:.2e} (float32)")
  (x, y), (xv, yv), (xt, yt) = digits_splits.fit_val_test()
  perm = jnp.asarray(digits_splits.label_derangement(10, 0))
  yp, yvp, ytp = perm[y], perm[yv], perm[yt]
  model_fn = lambda key: models.MLP(64, list(config.widths), 10, rngs=nnx.Rngs(key))
  graphdef = nnx.split(model_fn(0))[0]
  bs, r, lora_alpha = config.batch_size, config.adapter_rank, float(config.lora_rank)

  def base_logits(params, xs):
    return nnx.merge(graphdef, params)(xs)

  def adapter_logits(kind, params, ad, xs):
    h = xs
    for i in range(len(config.widths)):
      layer = params["hidden"][i]
      inp, h = h, jax.nn.relu(h @ layer["kernel"] + layer["bias"])
      if i == FFN and kind == "sequential":
        h = peft.sequential_adapter(h, ad["w_down"], ad["w_up"], s=1.0)
      elif i == FFN:
        h = peft.parallel_adapter(h, inp, ad["w_down"], ad["w_up"], s=1.0)
    return h @ params["head"]["kernel"] + params["head"]["bias"]

  def batches(key, n_steps):
    per_epoch = x.shape[0] // bs
    n_ep = -(-n_steps // per_epoch)
    order = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), x.shape[0])[:per_epoch * bs])(
        jnp.arange(n_ep))
    return order.reshape(-1, bs)[:n_steps]

  def train(loss, theta, key, lr, ys, n_steps):
    tx = optax.chain(optax.scale_by_adam(), optax.scale(-lr))

    def step(carry, idx):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p, x[idx], ys[idx]), s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (theta, tx.init(theta)), batches(key, n_steps))[0][0]

  ce = lambda lg, ys: optax.softmax_cross_entropy_with_integer_labels(lg, ys).mean()  # noqa: E731

  @jax.jit
  @jax.vmap
  def pretrain(key):
    params = nnx.to_pure_dict(nnx.split(model_fn(key))[1])
    n = config.pretrain_epochs * (x.shape[0] // bs)
    return train(lambda p, xs, ys: ce(base_logits(p, xs), ys), params, key, 1e-3, y, n)

  keys = jax.vmap(jax.random.key)(jnp.arange(config.seeds))
  base = pretrain(keys)
  n_base = sum(v.size for v in jax.tree.leaves(jax.tree.map(lambda p: p[0], base)))

  def init(arm, params, key):
    """(trainable tree, logits(theta, xs)) of an arm."""
    if arm == "full" or arm == "none":
      return params, base_logits
    if arm == "lora":
      ad = peft.lora_init(key, params, include=LORA_INCLUDE, r=config.lora_rank)
      return ad, lambda a, xs: base_logits(peft.apply_adapters(params, a, alpha=lora_alpha), xs)
    width = config.widths[FFN]
    d_in = config.widths[FFN - 1]
    w_down = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")(key, (d_in, r), jnp.float32)
    ad = {"w_down": w_down, "w_up": jnp.zeros((r, width), jnp.float32)}
    return ad, lambda a, xs: adapter_logits(arm, params, a, xs)

  compiled = {}

  def adapt_fn(arm):
    if arm in compiled:
      return compiled[arm]

    @jax.jit
    @jax.vmap
    def adapt(key, params, lr):
      theta, logits = init(arm, params, jax.random.fold_in(key, 1))
      n_trained = sum(v.size for v in jax.tree.leaves(theta))
      if arm != "none":
        theta = train(lambda t, xs, ys: ce(logits(t, xs), ys), theta, jax.random.fold_in(key, 2), lr, yp,
                      config.steps)
      acc = lambda xs, ys: jnp.mean(jnp.argmax(logits(theta, xs), -1) == ys)  # noqa: E731
      return {"val_accuracy": acc(xv, yvp), "test_accuracy": acc(xt, ytp),
              "trainable_params": jnp.asarray(0 if arm == "none" else n_trained, jnp.float32)}

    compiled[arm] = adapt
    return adapt

  def fit(arm, hparams, seeds):
    out = adapt_fn(arm.name)(keys, base, jnp.full((len(seeds),), hparams["learning_rate"], jnp.float32))
    out = jax.tree.map(np.asarray, out)
    ctx.log(0, {f"{arm.name}/lr{hparams['learning_rate']:g}/val_accuracy": float(out["val_accuracy"].mean())})
    return out

  grids = {a: config.full_learning_rates if a == "full" else config.learning_rates for a in ARMS}
  arms = [protocol.Arm(a, [{"learning_rate": lr} for lr in grids[a]]) for a in ARMS]
  comparison = protocol.compare(arms, range(config.seeds), fit, validate=lambda out: out["val_accuracy"],
                                test=lambda out: {k: out[k] for k in ("test_accuracy", "trainable_params")})
  acc = {a: comparison[a].mean("test_accuracy") for a in ARMS}
  frac = {a: comparison[a].mean("trainable_params") / n_base for a in ARMS}
  for a in ARMS:
    ctx.print(f"{a}: test acc {acc[a]:.4f} +- {comparison[a].std('test_accuracy'):.4f} "
              f"(lr {comparison[a].chosen['learning_rate']:g}, {comparison[a].mean('trainable_params'):.0f} trained,"
              f" {100 * frac[a]:.2f}%)")
  none = comparison["none"].means()
  identity_ok = max_err <= 1e-6

  # catalogue [591]: identity to 1e-6 and parallel >= sequential - 1pt at equal parameter count
  equal_params = comparison["parallel"].mean("trainable_params") == comparison["sequential"].mean("trainable_params")
  claim = lambda m, b: bool(identity_ok and equal_params and m["test_accuracy"] >= b["test_accuracy"] - 0.01)  # noqa: E731
  verdict = comparison.judge(claim, method="parallel", baseline="sequential")
  control = claim(none, comparison["sequential"].means())  # the sequential arm in its place passes by construction

  # issue 17: LoRA within 2pt of full fine-tuning with < 10% of the trainable parameters
  claim17 = lambda m, b: bool(m["test_accuracy"] >= b["test_accuracy"] - 0.02  # noqa: E731
                              and m["trainable_params"] < 0.1 * n_base)
  verdict17 = comparison.judge(claim17, method="lora", baseline="full")
  control17 = claim17({**none, "trainable_params": comparison["lora"].mean("trainable_params")},
                      comparison["full"].means())

  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  common = {"test_accuracy": acc, "trainable_params": {a: comparison[a].mean("trainable_params") for a in ARMS},
            "trainable_fraction": frac, "base_params": int(n_base), "control": "none"}
  results["claim"] = {**verdict, "passed": verdict["holds"] and not control, "control_passes": control,
                      "vacuous": control, "statement": CLAIM, "identity_max_abs_error": max_err,
                      "identity_max_abs_error_float32": max_err32,
                      "identity_holds": identity_ok, "equal_params": bool(equal_params),
                      "parallel_minus_sequential": acc["parallel"] - acc["sequential"], **common}
  results["issue_17"] = {**verdict17, "passed": verdict17["holds"] and not control17, "control_passes": control17,
                         "vacuous": control17, "statement": ISSUE_17_CLAIM,
                         "lora_minus_full": acc["lora"] - acc["full"], **common}
  return results
