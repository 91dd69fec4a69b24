"""Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning (Zhang et al., 2023, arXiv:2303.10512), catalogue
[403]: AdaLoRA's SVD-form adapters ``W0 + P Lambda Q`` whose rank budget moves, by sensitivity x uncertainty
importance, to the layers that need it.

A digits MLP (64-128-128-10, ReLU) is pretrained on the ordinary labels (Adam 1e-3, batch 64, 20 epochs; the shared
splits of ``paperlab.runner.digits_splits``, 70/15/15) and adapted to the label-permuted task (the fixed derangement
``label_derangement(10, 0)``). A relabelling is a permutation of the head's output columns, so only one of the 3
adapted layers (hidden/0, hidden/1, head) needs changing: the head. 400 Adam steps of batch 64, seeds 0-2, both arms
with the same learning-rate grid {1e-3, 3e-3, 1e-2} chosen on validation accuracy, the test split read once per arm:

* ``adalora``: ``paperlab.peft.adalora_init`` with r = 8 per layer (24 triplets; peft's init: E = 0, P, Q ~
  N(0, 0.02^2)), alpha = 8 (scale 1), the orthogonality penalty with the paper's weight 0.1, importance smoothing
  beta1 = beta2 = 0.85 (``adalora_update_importance`` after each optimizer step, as peft's ``update_and_allocate``),
  budget 24 -> 12 on the cubic schedule ``adalora_budget`` (tinit 50, tfinal 100, deltaT 10, T 400), masking with
  ``adalora_mask_to_budget``;
* ``lora``: uniform LoRA r = 4 on each of the 3 layers (12 ranks in total, alpha = 4, scale 1).

Claim (catalogue), judged on seed means: the final allocation gives the head >= 50% of the 12 ranks, and
acc(AdaLoRA) >= acc(uniform LoRA) - 1pt. Control: uniform LoRA in AdaLoRA's place (head share 1/3).

Measured (seeds 0-2): AdaLoRA 0.9467 +- 0.0076 (lr 3e-3), final ranks head 5 / hidden/0 0 / hidden/1 7 (head share
0.417 < 0.5); uniform LoRA 0.9628 +- 0.0080 (lr 1e-2): AdaLoRA - LoRA = -1.6pt < -1pt. Neither part holds: the claim
does not reproduce (the budget leaves hidden/0, which needs no change, but goes to hidden/1 more than to the head).
CI scale (CI_CONFIG): learning-rate grid {3e-3, 1e-2} (the points the two arms chose in the record; 6 lanes instead of
9); at it: the record's numbers exactly, AdaLoRA 0.9467 with ranks head 5 / hidden/0 0 / hidden/1 7 (share 0.417),
uniform LoRA 0.9628 (-1.6pt): not reproduced (seeds 0-2); 20 CPU-s in pytest at load ~15, after
[470] in the same run (shared compilation cache); 50 CPU-s alone under load ~60. (Pruning
every 50 steps instead of 10 was tried: there the claim holds, share 0.639 and -0.99pt, so that scale was not used.)
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

PAPER_ID = 403
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "initial rank 8 per layer (24 -> 12 ranks) instead of peft's default init_r = 12: the 10-output head admits at "
    "most rank 10; tinit = 50, tfinal = 100, deltaT = 10 chosen for the 400 steps (the catalogue sets none)",
    "orthogonality penalty in peft's form (mean of Frobenius norms, not squared) with the paper's weight 0.1",
)
CI_CONFIG = {"learning_rates": (3e-3, 1e-2)}  # the test suite's scale (paperlab reproduce 403 --ci)
ARMS = ("adalora", "lora")
INCLUDE = r"(hidden/\d|head)/kernel"
HEAD = "head/kernel"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.pretrain_epochs = 20
  c.steps = 400
  c.batch_size = 64
  c.init_rank = 8
  c.target_budget = 12
  c.tinit, c.tfinal, c.delta_t = 50, 100, 10
  c.orth_reg_weight = 0.1
  c.learning_rates = (1e-3, 3e-3, 1e-2)
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  (x, y), (xv, yv), (xt, yt) = digits_splits.fit_val_test()
  perm = jnp.asarray(digits_splits.label_derangement(10, 0))
  yp, yvp, ytp = perm[y], perm[yv], perm[yt]
  model_fn = lambda key: models.MLP(64, list(config.widths), 10, rngs=nnx.Rngs(key))  # noqa: E731
  graphdef = nnx.split(model_fn(0))[0]
  bs, n_layers = config.batch_size, len(config.widths) + 1
  lora_rank = config.target_budget // n_layers

  def logits(params, xs):
    return nnx.merge(graphdef, params)(xs)

  def ce(params, xs, ys):
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, xs), ys).mean()

  def batches(key, n_steps):
    per_epoch = x.shape[0] // bs
    n_ep = -(-n_steps // per_epoch)
    order = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), x.shape[0])[:per_epoch * bs])(
        jnp.arange(n_ep))
    return order.reshape(-1, bs)[:n_steps]

  @jax.jit
  @jax.vmap
  def pretrain(key):
    params = nnx.to_pure_dict(nnx.split(model_fn(key))[1])
    tx = optax.adam(1e-3)

    def step(carry, idx):
      p, s = carry
      u, s = tx.update(jax.grad(ce)(p, x[idx], y[idx]), s, p)
      return (optax.apply_updates(p, u), s), None

    n = config.pretrain_epochs * (x.shape[0] // bs)
    return jax.lax.scan(step, (params, tx.init(params)), batches(key, n))[0][0]

  keys = jax.vmap(jax.random.key)(jnp.arange(config.seeds))
  base = pretrain(keys)
  order = jax.vmap(lambda k: batches(jax.random.fold_in(k, 2), config.steps))(keys)  # (seeds, steps, bs)

  def evaluate(merged):
    acc = lambda xs, ys: jnp.mean(jnp.argmax(logits(merged, xs), -1) == ys)  # noqa: E731
    return {"val_accuracy": acc(xv, yvp), "test_accuracy": acc(xt, ytp)}

  # uniform LoRA: one scanned, vmapped program
  @jax.jit
  @jax.vmap
  def lora_arm(params, key, idxs, lr):
    ad = peft.lora_init(jax.random.fold_in(key, 1), params, include=INCLUDE, r=lora_rank)
    tx = optax.chain(optax.scale_by_adam(), optax.scale(-lr))
    loss = lambda a, xs, ys: ce(peft.apply_adapters(params, a, alpha=float(lora_rank)), xs, ys)  # noqa: E731

    def step(carry, idx):
      a, s = carry
      u, s = tx.update(jax.grad(loss)(a, x[idx], yp[idx]), s, a)
      return (optax.apply_updates(a, u), s), None

    ad = jax.lax.scan(step, (ad, tx.init(ad)), idxs)[0][0]
    ranks = {p: jnp.asarray(lora_rank, jnp.float32) for p in ad}
    return {**evaluate(peft.apply_adapters(params, ad, alpha=float(lora_rank))), "ranks": ranks}

  # AdaLoRA: peft decides on the host at each step whether and to what budget to mask (adalora_budget); that
  # schedule is fixed in advance, so it is precomputed and the masking (static budgets) runs as lax.switch branches
  # inside one scanned program
  alpha, init_budget = float(config.init_rank), config.init_rank * n_layers
  schedule = [peft.adalora_budget(t, init_budget=init_budget, target_budget=config.target_budget,
                                  tinit=config.tinit, tfinal=config.tfinal, total_step=config.steps,
                                  delta_t=config.delta_t) for t in range(1, config.steps + 1)]
  budgets = sorted({b for b, now in schedule if now}, reverse=True)
  branch = jnp.asarray([budgets.index(b) + 1 if now else 0 for b, now in schedule], jnp.int32)

  def ada_loss(a, params, xs, ys):
    return (ce(peft.apply_adapters(params, a, alpha=alpha), xs, ys)
            + config.orth_reg_weight * peft.adalora_orth_reg(a))

  @jax.jit
  @jax.vmap
  def adalora_arm(params, key, idxs, lr):
    ad = peft.adalora_init(jax.random.fold_in(key, 1), params, include=INCLUDE, r=config.init_rank)
    tx = optax.chain(optax.scale_by_adam(), optax.scale(-lr))
    keep0 = {p: jnp.ones((config.init_rank,), bool) for p in ad}
    masks = [lambda imp, a, keep: (a, keep)] + [
        (lambda imp, a, keep, b=b: peft.adalora_mask_to_budget(imp, a, b)) for b in budgets]

    def step(carry, inp):
      a, s, imp, keep = carry
      idx, br = inp
      g = jax.grad(ada_loss)(a, params, x[idx], yp[idx])
      u, s = tx.update(g, s, a)
      a = optax.apply_updates(a, u)
      imp = peft.adalora_update_importance(imp, a, g)  # after the optimizer step, as peft's update_and_allocate
      a, keep = jax.lax.switch(br, masks, imp, a, keep)
      return (a, s, imp, keep), None

    carry = (ad, tx.init(ad), peft.adalora_importance_init(ad), keep0)
    ad, _, _, keep = jax.lax.scan(step, carry, (idxs, branch))[0]
    out = evaluate(peft.apply_adapters(params, ad, alpha=alpha))
    return {**out, "ranks": {p: jnp.sum(k).astype(jnp.float32) for p, k in keep.items()}}

  runs = {a: {"lora": lora_arm, "adalora": adalora_arm}[a] for a in ARMS}
  done = {}

  def fit(arm, hparams, seeds):
    if arm.name not in done:  # the whole grid as one program: (learning rates x seeds) lanes
      lrs = jnp.repeat(jnp.asarray(config.learning_rates, jnp.float32), len(seeds))
      tile = lambda t: jax.tree.map(lambda v: jnp.concatenate([v] * len(config.learning_rates)), t)  # noqa: E731
      out = jax.tree.map(np.asarray, runs[arm.name](tile(base), tile(keys), tile(order), lrs))
      done[arm.name] = [jax.tree.map(lambda v, i=i: v[i * len(seeds):(i + 1) * len(seeds)], out)
                        for i in range(len(config.learning_rates))]
    lr = hparams["learning_rate"]
    out = done[arm.name][list(config.learning_rates).index(lr)]
    ctx.log(0, {f"{arm.name}/lr{lr:g}/val_accuracy": float(out["val_accuracy"].mean())})
    return out

  def test(out):
    total = sum(out["ranks"].values())
    return {"test_accuracy": out["test_accuracy"], "head_share": out["ranks"][HEAD] / total, "total_rank": total,
            **{f"rank/{p}": v for p, v in out["ranks"].items()}}

  grid = [{"learning_rate": lr} for lr in config.learning_rates]
  comparison = protocol.compare([protocol.Arm(a, grid) for a in ARMS], range(config.seeds), fit,
                                validate=lambda out: out["val_accuracy"], test=test)
  means = {a: comparison[a].means() for a in ARMS}
  for a in ARMS:
    ctx.print(f"{a}: test acc {means[a]['test_accuracy']:.4f} +- {comparison[a].std('test_accuracy'):.4f} "
              f"(lr {comparison[a].chosen['learning_rate']:g}), head share {means[a]['head_share']:.3f}, ranks "
              f"{ {k: round(v, 2) for k, v in means[a].items() if k.startswith('rank/')} }")
  claim = lambda m, b: bool(m["head_share"] >= 0.5 and m["test_accuracy"] >= b["test_accuracy"] - 0.01)  # noqa: E731
  verdict = comparison.judge(claim, method="adalora", baseline="lora")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM,
                      "test_accuracy": {a: means[a]["test_accuracy"] for a in ARMS},
                      "head_share": {a: means[a]["head_share"] for a in ARMS},
                      "total_rank": {a: means[a]["total_rank"] for a in ARMS},
                      "adalora_minus_lora": means["adalora"]["test_accuracy"] - means["lora"]["test_accuracy"]}
  return results
