"""HyperSparse: Adaptive Regularized Training with the HyperSparse penalty (Glandorf et al., 2023, arXiv:2308.07163),
catalogue [96].

DIGITS-MLP (64-64-64-10, ReLU) pre-trained densely for ``warmup_epochs`` (the "pre-trained" model; the official
code's warm-up), then pruned to 98% of its kernels by global magnitude through three arms with the same total number
of epochs (warm-up + ``art_epochs`` + ``finetune_epochs``), the same seeds (0-2), the same optimizer (the official
SGD, momentum 0.9, lr 0.1, weight decay 1e-4, batch 64) and a two-point grid each, chosen on validation accuracy
through :mod:`paperlab.runner.protocol`:

* ``art_hs``: :func:`paperlab.prune.art_train` with the HyperSparse penalty, ``lambda_e = lam0 eta^e``, the
  official stop rule (buffer-mean pruned train accuracy above the dense one) capped at ``art_epochs``, then
  magnitude pruning and fine-tuning; grid ``lam0`` in {1e-4, 1e-3};
* ``art_l1``: the same loop with the L1 penalty (the paper's L1 baseline), same grid;
* ``gmp``: gradual magnitude pruning (Zhu & Gupta's cubic schedule, one mask update per epoch) over the same
  ``art_epochs`` (grid: pruning over all of them or the first half), then the same fine-tuning.

Claim (catalogue): acc(art_hs) >= acc(gmp) + 1pt and acc(art_hs) >= acc(art_l1) (test accuracy, mean of 3 seeds).
Controls: art_hs replaced by gmp, and by art_l1.

Measured (seeds 0-2, test accuracy, 269 test images, every arm at 98.0% sparsity): art_hs 0.9207 (lam0 1e-3; the
stop rule never held within the 20-epoch cap), art_l1 0.9157 (lam0 1e-3, 20 epochs), gmp 0.9170 (pruning over all 20
epochs). art_hs beats L1-ART (+0.50pt) but art_hs - gmp = +0.37pt misses the +1pt margin: the claim does not
reproduce at this scale. (With 128-wide hidden layers, 40 CPU-s: art_hs 0.9504, art_l1 0.9554, gmp 0.9467.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import models, papers, prune
from paperlab.runner import digits_splits, protocol

PAPER_ID = 96
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "ART is capped at art_epochs=20 epochs (the official loop runs until its stop rule holds, without a cap); the "
    "GMP baseline gets the same total epochs as ART's cap, so ART never trains longer than GMP",
    "lam0 is tuned on validation over {1e-4, 1e-3} with eta=1.1 instead of the official lambda_init=5e-6, eta=1.05: "
    "at 20 ART epochs on digits the official schedule (5e-6 * 1.05^20 = 1.3e-5) barely moves the weights",
    "warm-up (dense pre-training) of 15 epochs and fine-tuning of 15 epochs instead of 60 + 160 (CIFAR ResNets); "
    "the learning rate is constant (the official steps it down at fine-tuning epochs 80 and 120)",
    "the data are the embedded scikit-learn digits and a 64-64-64-10 MLP instead of CIFAR-10/100 and "
    "ResNet-32/VGG",
)
ARMS = ("art_hs", "art_l1", "gmp")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (64, 64)  # 128-wide layers cost 40 CPU-s at CI scale
  c.batch_size = 64
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.prune_rate = 0.98
  c.warmup_epochs = 15
  c.art_epochs = 20
  c.finetune_epochs = 15
  c.eta = 1.1
  c.lam0_grid = (1e-4, 1e-3)
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  (x, y), (xv, yv), (xt, yt) = digits_splits.fit_val_test()
  model_fn = lambda key: models.MLP(64, list(config.widths), 10, rngs=nnx.Rngs(key))
  graphdef = nnx.split(model_fn(0))[0]
  tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                   optax.sgd(config.learning_rate, momentum=config.momentum))  # torch SGD(weight_decay=...)
  per_epoch = x.shape[0] // config.batch_size

  def loss_fn(params, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, params)(xb), yb).mean()

  def accuracy(params, xs, ys):
    return jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(xs), -1) == ys)

  def init(key):
    return nnx.to_pure_dict(nnx.split(model_fn(key))[1])

  @functools.partial(jax.jit, static_argnames="regularizer")
  @functools.partial(jax.vmap, in_axes=(0, None, None))
  def art(key, lam0, regularizer):
    out = prune.art_train(key, init(key), (x, y), loss_fn=loss_fn, accuracy_fn=accuracy, optimizer=tx,
                          prune_rate=config.prune_rate, batch_size=config.batch_size,
                          warmup_epochs=config.warmup_epochs, max_art_epochs=config.art_epochs,
                          finetune_epochs=config.finetune_epochs, lam0=lam0, eta=config.eta,
                          regularizer=regularizer)
    return _metrics(out.params, out.masks, {"art_epochs": out.art_epochs, "terminated": out.terminated})

  def _metrics(params, masks, extra):
    sel = prune.prunable(params)
    return {"val_accuracy": accuracy(params, xv, yv), "test_accuracy": accuracy(params, xt, yt),
            "sparsity": prune.sparsity(masks, sel), **extra}

  gmp_tx = optax.chain(tx, prune.keep_pruned_zero())

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))
  def gmp(key, prune_epochs):
    params = init(key)
    opt = gmp_tx.init(params)
    total = config.warmup_epochs + config.art_epochs + config.finetune_epochs
    ones = jax.tree.map(lambda w: jnp.ones(w.shape, bool), params)

    def epoch(carry, e):
      params, opt, masks = carry
      order = jax.random.permutation(jax.random.fold_in(key, e), x.shape[0])[:per_epoch * config.batch_size]

      def step(c, idx):
        p, o = c
        g = jax.grad(loss_fn)(p, x[idx], y[idx])
        u, o = gmp_tx.update(g, o, p, masks=masks)
        return (optax.apply_updates(p, u), o), None

      (params, opt), _ = jax.lax.scan(step, (params, opt), order.reshape(per_epoch, config.batch_size))
      t = e + 1 - config.warmup_epochs  # mask updates at the end of ART-phase epochs 1..prune_epochs
      s = config.prune_rate * (1.0 - (1.0 - jnp.clip(t / prune_epochs, 0.0, 1.0)) ** 3)  # Zhu & Gupta, s_i = 0
      masks = jax.lax.cond(t >= 1, lambda p: prune.magnitude_masks(p, s), lambda p: masks, params)
      return (prune.apply_masks(params, masks), opt, masks), None

    (params, _, masks), _ = jax.lax.scan(epoch, (params, opt, ones), jnp.arange(total))
    return _metrics(params, masks, {"art_epochs": jnp.asarray(config.art_epochs), "terminated": jnp.asarray(False)})

  def fit(arm, hparams, seeds):
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    if arm.name == "gmp":
      out = gmp(keys, jnp.float32(hparams["prune_epochs"]))
    else:
      out = art(keys, jnp.float32(hparams["lam0"]), "hypersparse" if arm.name == "art_hs" else "l1")
    out = jax.tree.map(np.asarray, out)
    ctx.log(0, {f"{arm.name}/{k}={v}/test_accuracy": float(out["test_accuracy"].mean()) for k, v in hparams.items()})
    return out

  grid = [{"lam0": float(v)} for v in config.lam0_grid]
  arms = [protocol.Arm("art_hs", grid), protocol.Arm("art_l1", grid),
          protocol.Arm("gmp", [{"prune_epochs": config.art_epochs}, {"prune_epochs": max(config.art_epochs // 2, 1)}])]
  metrics = ("test_accuracy", "sparsity", "art_epochs", "terminated")
  comparison = protocol.compare(arms, range(config.seeds), fit, validate=lambda out: out["val_accuracy"],
                                test=lambda out: {k: out[k].astype(np.float64) for k in metrics})
  acc = {a: comparison[a].mean("test_accuracy") for a in ARMS}
  for a in ARMS:
    ctx.print(f"{a}: test acc {acc[a]:.4f} +- {comparison[a].std('test_accuracy'):.4f}, sparsity "
              f"{comparison[a].mean('sparsity'):.4f}, ART epochs {comparison[a].mean('art_epochs'):.1f}")
  # one judgement for both parts, so that its control (art_hs replaced by gmp) must fail the +1pt part
  claim = comparison.judge(lambda m, b: m["test_accuracy"] >= b["test_accuracy"] + 0.01
                           and m["test_accuracy"] >= acc["art_l1"], method="art_hs", baseline="gmp")
  vs_l1 = comparison.judge(lambda m, b: m["test_accuracy"] >= b["test_accuracy"], method="art_hs",
                           baseline="art_l1")  # reported; its control (L1 vs L1) passes by construction
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**claim, "statement": CLAIM, "vs_l1": vs_l1,
                      "hs_minus_gmp": acc["art_hs"] - acc["gmp"], "hs_minus_l1": acc["art_hs"] - acc["art_l1"],
                      "test_accuracy": acc, "sparsity": {a: comparison[a].mean("sparsity") for a in ARMS},
                      "art_epochs": {a: comparison[a].mean("art_epochs") for a in ARMS},
                      "chosen": {a: comparison[a].chosen for a in ARMS}}
  return results
