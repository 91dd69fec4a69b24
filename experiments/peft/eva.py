"""One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation (Paischer et al., 2024,
arXiv:2410.07170), catalogue [546]: EVA initializes LoRA's ``A`` with the top principal directions of each adapted
layer's inputs (``B = 0``) and redistributes the rank budget across layers by explained variance.

A digits MLP (64-128-128-10, ReLU) is pretrained on clean digits (Adam 1e-3, batch 64, 20 epochs; the shared splits
of ``paperlab.runner.digits_splits``, 70/15/15) and fine-tuned on *noisy digits*: every pixel (scaled to [0, 1]) gets
fixed Gaussian noise of std ``noise_std`` (drawn once per example from NumPy seed 546, independently for the fit,
validation and test splits), same labels. LoRA r = 4 on the 2 hidden kernels (hidden/0: 64 -> 128, hidden/1:
128 -> 128; head and biases frozen), alpha = 4, 50 Adam steps of batch 64, seeds 0-2, two arms with the same
learning-rate grid {1e-3, 3e-3, 1e-2} chosen on validation loss at step 50, the test split read once per arm:

* ``eva``: ``paperlab.peft.eva_init`` on the inputs of both layers (the noisy fit split through the pretrained
  model: 1257 rows; an exact PCA where peft runs incremental PCA until cosine >= tau = 0.99), rho = 2 (the paper's
  and peft's default), so the 8 ranks may move between the layers;
* ``lora``: random-A LoRA (peft's kaiming-uniform ``A``, ``B = 0``), rank 4 on each layer.

Claim (catalogue), judged on seed means: test cross-entropy at step 50 of EVA / of random-A LoRA < 0.9, and EVA's
rank allocation sums to L r = 8. Control: random-A LoRA in EVA's place (ratio 1).

Measured (seeds 0-2, noise_std 1.0): the pretrained model's noisy test loss 0.745; after 50 steps EVA 0.6933 (lr
1e-2) vs random-A LoRA 0.6914 (lr 3e-3): ratio 1.003, not < 0.9, so the claim does not reproduce (EVA's ranks sum
to 8 on every seed: 4/4, 3/5, 3/5). noise_std 0.5 was tried first (not recorded): there the pretrained model is
already at 0.244, both arms end near 0.252 and the ratio is 1.003 as well.
CI scale (CI_CONFIG): learning-rate grid {3e-3, 1e-2} (the points the two arms chose in the record; 2 lanes per
program instead of 3); at it: the record's numbers exactly, EVA 0.6933 vs random-A LoRA 0.6914, ratio 1.003 (not
reproduced), ranks 4/4, 3/5, 3/5 (seeds 0-2); 26 CPU-s in pytest at load ~20 (the full grid:
47 CPU-s at load ~40).
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

PAPER_ID = 546
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "EVA's PCA is exact (an SVD of all 1257 noisy fit-split inputs of each layer) instead of peft's incremental PCA "
    "over minibatches stopped at cosine similarity >= tau = 0.99; both estimate the same components",
    "'loss at step 50' is read as held-out (test split) cross-entropy after 50 steps, the learning rate of each arm "
    "chosen on validation cross-entropy at step 50 (the catalogue names neither split nor tuning)",
)
CI_CONFIG = {"learning_rates": (3e-3, 1e-2)}  # the test suite's scale (paperlab reproduce 546 --ci)
ARMS = ("eva", "lora")
INCLUDE = r"hidden/\d/kernel"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.widths = (128, 128)
  c.pretrain_epochs = 20
  c.steps = 50
  c.batch_size = 64
  c.rank = 4
  c.rho = 2.0
  c.noise_std = 1.0
  c.learning_rates = (1e-3, 3e-3, 1e-2)
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  (x, y), (xv, yv), (xt, yt) = digits_splits.fit_val_test()
  rng = np.random.default_rng(PAPER_ID)
  noisy = [a + jnp.asarray(config.noise_std * rng.standard_normal(a.shape), jnp.float32) for a in (x, xv, xt)]
  xn, xvn, xtn = noisy
  model_fn = lambda key: models.MLP(64, list(config.widths), 10, rngs=nnx.Rngs(key))  # noqa: E731
  graphdef = nnx.split(model_fn(0))[0]
  bs, alpha = config.batch_size, float(config.rank)

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

  def train(loss, theta, key, lr, xs, ys, n_steps):
    tx = optax.chain(optax.scale_by_adam(), optax.scale(-lr))

    def step(carry, idx):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p, xs[idx], ys[idx]), s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (theta, tx.init(theta)), batches(key, n_steps))[0][0]

  @jax.jit
  @jax.vmap
  def pretrain(key):
    params = nnx.to_pure_dict(nnx.split(model_fn(key))[1])
    return train(ce, params, key, 1e-3, x, y, config.pretrain_epochs * (x.shape[0] // bs))

  keys = jax.vmap(jax.random.key)(jnp.arange(config.seeds))
  base = pretrain(keys)
  per_seed = [jax.tree.map(lambda p, i=i: p[i], base) for i in range(config.seeds)]

  # EVA is host-side orchestration (per-layer SVDs, a rank redistribution that sets shapes): once per seed
  eva_adapters, eva_ranks = [], []
  for params in per_seed:
    h0 = xn
    h1 = jax.nn.relu(h0 @ params["hidden"][0]["kernel"] + params["hidden"][0]["bias"])
    ad, ranks = peft.eva_init({"hidden/0/kernel": h0, "hidden/1/kernel": h1}, params, r=config.rank,
                              rho=config.rho)
    eva_adapters.append(ad)
    eva_ranks.append(ranks)
  ctx.print(f"EVA ranks per seed: {eva_ranks}")
  base_loss = float(np.mean([ce(p, xtn, yt) for p in per_seed]))

  def adapt(params, adapters, key, lr):
    loss = lambda a, xs, ys: ce(peft.apply_adapters(params, a, alpha=alpha), xs, ys)  # noqa: E731
    adapters = train(loss, adapters, key, lr, xn, y, config.steps)
    merged = peft.apply_adapters(params, adapters, alpha=alpha)
    acc = lambda xs, ys: jnp.mean(jnp.argmax(logits(merged, xs), -1) == ys)  # noqa: E731
    return {"val_loss": ce(merged, xvn, yv), "test_loss": ce(merged, xtn, yt), "test_accuracy": acc(xtn, yt)}

  adapt_vmapped = jax.jit(jax.vmap(adapt))
  lora_adapt = jax.jit(jax.vmap(lambda params, key, lr: adapt(
      params, peft.lora_init(jax.random.fold_in(key, 1), params, include=INCLUDE, r=config.rank),
      jax.random.fold_in(key, 2), lr)))

  n_lr = len(config.learning_rates)
  lrs = jnp.asarray(config.learning_rates, jnp.float32)
  done = {}

  def run_grid(arm, seeds):
    """Every grid point of an arm at once: {lr index: {metric: (seeds,)}}."""
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
    if arm == "lora":  # (learning rates x seeds) lanes in one program
      tile = lambda t: jax.tree.map(lambda v: jnp.concatenate([v] * n_lr), t)  # noqa: E731
      out = jax.tree.map(np.asarray, lora_adapt(tile(base), tile(keys), jnp.repeat(lrs, len(seeds))))
      return [jax.tree.map(lambda v, i=i: v[i * len(seeds):(i + 1) * len(seeds)], out) for i in range(n_lr)]
    # EVA's rank redistribution can give the seeds different adapter shapes: one program per seed, lanes = lrs
    per = []
    for i in range(len(seeds)):
      rep = lambda t: jax.tree.map(lambda v: jnp.stack([v] * n_lr), t)  # noqa: E731
      per.append(jax.tree.map(np.asarray, adapt_vmapped(rep(per_seed[i]), rep(eva_adapters[i]),
                                                         rep(step_keys[i]), lrs)))
    return [jax.tree.map(lambda *v, j=j: np.stack([x[j] for x in v]), *per) for j in range(n_lr)]

  def fit(arm, hparams, seeds):
    if arm.name not in done:
      done[arm.name] = run_grid(arm.name, seeds)
    lr = hparams["learning_rate"]
    out = done[arm.name][list(config.learning_rates).index(lr)]
    ctx.log(0, {f"{arm.name}/lr{lr:g}/val_loss": float(out["val_loss"].mean())})
    return out

  grid = [{"learning_rate": lr} for lr in config.learning_rates]
  comparison = protocol.compare([protocol.Arm(a, grid) for a in ARMS], range(config.seeds), fit,
                                validate=lambda out: out["val_loss"], maximize=False,
                                test=lambda out: {k: out[k] for k in ("test_loss", "test_accuracy")})
  loss = {a: comparison[a].mean("test_loss") for a in ARMS}
  for a in ARMS:
    ctx.print(f"{a}: test loss at step {config.steps} {loss[a]:.4f} +- {comparison[a].std('test_loss'):.4f}, "
              f"acc {comparison[a].mean('test_accuracy'):.4f} (lr {comparison[a].chosen['learning_rate']:g})")
  ranks_ok = all(sum(r.values()) == config.rank * 2 for r in eva_ranks)
  verdict = comparison.judge(lambda m, b: bool(m["test_loss"] < 0.9 * b["test_loss"] and ranks_ok),
                             method="eva", baseline="lora")
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "statement": CLAIM, "test_loss": loss,
                      "loss_ratio": loss["eva"] / loss["lora"], "eva_ranks": eva_ranks,
                      "ranks_sum_to_budget": ranks_ok, "budget": config.rank * 2,
                      "pretrained_test_loss": base_loss,
                      "test_accuracy": {a: comparison[a].mean("test_accuracy") for a in ARMS}}
  ctx.print(f"ratio EVA / LoRA = {loss['eva'] / loss['lora']:.3f}; pretrained model's noisy test loss {base_loss:.3f}")
  return results
