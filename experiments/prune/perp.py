"""PERP: parameter-efficient retraining after pruning (Zimmer et al., 2023, arXiv:2312.15230), catalogue [16].

DIGITS-MLP with LayerNorm (64-256-256-10, LayerNorm after each hidden Dense, ReLU; Adam 1e-3, batch 64, 40 epochs,
split 70/15/15) is pruned one-shot to 80% sparsity by global magnitude over all kernels, then:

* ``no_retrain``: evaluated as pruned;
* ``full_retrain``: every weight retrained (Adam, pruned weights held at zero by ``keep_pruned_zero``);
* ``perp``: only the biases, LayerNorm scales/shifts and MaskLoRA adapters (``W_eff = M * (W + s A^T B^T)``, rank 2,
  on every kernel, head included) are retrained, 4.24% of the parameters; the merged kernels keep the mask's zeros.

Both retraining arms run 5 epochs with the same learning-rate grid {1e-4, 1e-3, 1e-2} chosen on validation (the
no-retrain arm gets the same three-point grid, which it ignores), on the same seeds (0-2).

Claim (catalogue): PERP recovers >= 80% of the accuracy gap that full retraining recovers,
``acc(perp) - acc(none) >= 0.8 (acc(full) - acc(none))``, and ``acc(perp) > acc(none) + 5pt`` (test accuracy, mean
of 3 seeds), with <= 5% of the parameters trainable. Control: PERP replaced by no retraining.

Measured (seeds 0-2, test accuracy): no retraining 0.9566 +- 0.0063, full retraining 0.9678 +- 0.0046 (lr 1e-3),
PERP 0.9703 +- 0.0030 (lr 1e-2), all at 80.00% sparsity with 4.24% of the parameters trainable in PERP. PERP
recovers 122% of full retraining's gain, but 80% magnitude pruning costs this MLP only ~1pt, so PERP > no-retrain +
5pt cannot hold (+1.4pt): the claim does not reproduce as stated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import models, papers, peft, prune
from paperlab.runner import digits_splits, protocol

PAPER_ID = 16
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "PERP's MaskLoRA has rank 2 (catalogue: r=4) and the head is adapted through MaskLoRA instead of being "
    "retrained in full: on this 86k-parameter MLP, biases + LayerNorm + the full head + rank-4 MaskLoRA on every "
    "kernel are 9.5% of the parameters (rank 4 without the full head 6.9%), beyond the claim's own <= 5% bound; "
    "biases + LayerNorm + rank-2 MaskLoRA on every kernel are 4.24%",
    "retraining length (5 epochs) and the learning-rate grid {1e-4, 1e-3, 1e-2} are not given by the catalogue; "
    "both retraining arms get the same grid, chosen on validation",
)
ARMS = ("no_retrain", "full_retrain", "perp")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (256, 256)
  c.pretrain_epochs = 40
  c.retrain_epochs = 5
  c.batch_size = 64
  c.sparsity = 0.8
  c.rank = 2
  c.learning_rates = (1e-4, 1e-3, 1e-2)
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  (x, y), (xv, yv), (xt, yt) = digits_splits.fit_val_test()
  model_fn = lambda key: models.MLP(64, list(config.widths), 10, norm="layer", rngs=nnx.Rngs(key))
  graphdef = nnx.split(model_fn(0))[0]
  bs, per_epoch = config.batch_size, x.shape[0] // config.batch_size
  alpha = float(config.rank)

  def logits(params, xs):
    return nnx.merge(graphdef, params)(xs)

  def ce(params, xs, ys):
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, xs), ys).mean()

  def accuracy(params, xs, ys):
    return jnp.mean(jnp.argmax(logits(params, xs), -1) == ys)

  def batches(key, epochs):
    order = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), x.shape[0])[:per_epoch * bs])(
        jnp.arange(epochs))
    return order.reshape(-1, bs)

  def train(loss, tree, tx, key, epochs):
    def step(carry, idx):
      t, s = carry
      u, s = tx.update(jax.grad(loss)(t, x[idx], y[idx]), s, t)
      return (optax.apply_updates(t, u), s), None

    return jax.lax.scan(step, (tree, tx.init(tree)), batches(key, epochs))[0][0]

  @jax.jit
  @jax.vmap
  def pretrain_and_prune(key):
    params = nnx.to_pure_dict(nnx.split(model_fn(key))[1])
    params = train(ce, params, optax.adam(1e-3), key, config.pretrain_epochs)
    masks = prune.magnitude_masks(params, config.sparsity, scope="global")
    return prune.apply_masks(params, masks), masks

  keys = jax.vmap(jax.random.key)(jnp.arange(config.seeds))
  pruned, masks = pretrain_and_prune(keys)
  trainable = prune.perp_trainable(jax.tree.map(lambda p: p[0], pruned))
  shapes_adapters = prune.mask_lora_init(jax.random.key(0), jax.tree.map(lambda p: p[0], pruned),
                                         include="kernel", r=config.rank)
  fraction = prune.trainable_fraction(jax.tree.map(lambda p: p[0], pruned), trainable, shapes_adapters)

  def perp_params(tree, m):
    return prune.merge_mask_lora(tree["params"], m, tree["adapters"], alpha)

  @jax.jit
  @jax.vmap
  def retrain(key, params, m, lr):
    key = jax.random.fold_in(key, 1)
    adam = optax.chain(optax.scale_by_adam(), optax.scale(-lr))
    full = train(ce, params, optax.chain(adam, prune.keep_pruned_zero(m)), key, config.retrain_epochs)
    tree = {"params": params, "adapters": prune.mask_lora_init(key, params, include="kernel", r=config.rank)}
    tx = peft.train_only(adam, r"^params/.*(bias|scale)$|^adapters/")
    tree = train(lambda t, xs, ys: ce(perp_params(t, m), xs, ys), tree, tx, key, config.retrain_epochs)
    out = {}
    for name, p in (("full_retrain", full), ("perp", perp_params(tree, m)), ("no_retrain", params)):
      out[name] = {"val_accuracy": accuracy(p, xv, yv), "test_accuracy": accuracy(p, xt, yt),
                   "sparsity": prune.sparsity(jax.tree.map(lambda w: w != 0, p), prune.prunable(p))}
    return out

  cache = {}

  def fit(arm, hparams, seeds):
    lr = hparams["learning_rate"]
    if lr not in cache:
      cache[lr] = jax.tree.map(np.asarray, retrain(keys, pruned, masks, jnp.full((len(seeds),), lr)))
    out = cache[lr][arm.name]
    ctx.log(0, {f"{arm.name}/lr{lr:g}/val_accuracy": float(out["val_accuracy"].mean())})
    return out

  grid = [{"learning_rate": lr} for lr in config.learning_rates]
  comparison = protocol.compare([protocol.Arm(a, grid) for a in ARMS], range(config.seeds), fit,
                                validate=lambda out: out["val_accuracy"],
                                test=lambda out: {k: out[k] for k in ("test_accuracy", "sparsity")})
  acc = {a: comparison[a].mean("test_accuracy") for a in ARMS}
  for a in ARMS:
    ctx.print(f"{a}: test acc {acc[a]:.4f} +- {comparison[a].std('test_accuracy'):.4f} "
              f"(lr {comparison[a].chosen['learning_rate']:g}), sparsity {comparison[a].mean('sparsity'):.4f}")
  full_gain = acc["full_retrain"] - acc["no_retrain"]
  verdict = comparison.judge(
      lambda m, b: (m["test_accuracy"] - b["test_accuracy"] >= 0.8 * full_gain
                    and m["test_accuracy"] > b["test_accuracy"] + 0.05 and fraction <= 0.05),
      method="perp", baseline="no_retrain")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "test_accuracy": acc, "trainable_fraction": fraction,
                      "recovered_fraction": (acc["perp"] - acc["no_retrain"]) / full_gain if full_gain else None,
                      "perp_minus_no_retrain": acc["perp"] - acc["no_retrain"],
                      "sparsity": {a: comparison[a].mean("sparsity") for a in ARMS}}
  return results
