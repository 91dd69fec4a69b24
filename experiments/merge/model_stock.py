"""Model Stock: two fine-tunes and the pre-trained weights locate the centre of the fine-tuned weights better than
the average of the two (Jang et al., "Model Stock", arXiv:2403.19522).

DIGITS-SOUP base (an MLP 64-128-128-10 pre-trained briefly on 30% of the training split) fine-tuned 16 times with the
same hyperparameters and different seeds (data order, Gaussian input-noise augmentation); the "centre" is the mean
of all 16. For random pairs, ``paperlab.merge.model_stock(base, pair)`` (one ratio per layer) is compared with the
plain average of the pair: distance to the centre and test accuracy.

Calibration (seeds 0-2, means over 10 pairs per seed, ~26 CPU-seconds): Model Stock is closer to the centre in
30/30 pairs (mean ratio t = 0.94); mean test accuracy Model Stock 96.26, pair average 96.38, pair members 96.44,
16-model soup 96.44 (per seed, stock vs members: 96.40/96.49, 96.13/96.19, 96.24/96.64). So the geometric claim and
"within 1 point of the 16-soup" reproduce, but "at least the members' mean" does not (-0.18 points). The cause is
the premise, not the merge (which matches mergekit's ``model_stock``): the paper's accuracy gain comes from the
centre of the fine-tunes being more accurate than each fine-tune, and here even the 16-model soup is no more accurate
than its members (96.44 vs 96.44), so a point pulled toward the centre and slightly toward the weaker base (t < 1)
cannot beat them. With one seed (the earlier version) the miss was 0.09 points. The claim is the catalogue's line; its
control puts the pair's plain average in Model Stock's place and must fail (it is never closer than itself).

CI scale (CI_CONFIG): 8 fine-tunes of 100 steps (the centre is their mean); at it: not reproduced either, Model
Stock 94.33 < members 94.44 (pair average 94.63, 8-soup 94.59; closer in 30/30 pairs), seeds 0-2, ~54 CPU-s under
heavy load (4 engineers on 2 cores).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, merge, models, papers, train

PAPER_ID = 227
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()

CI_CONFIG = {"finetune_steps": 100, "num_finetunes": 8}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 128
  c.base_fraction = 0.3
  c.base_steps = 40
  c.finetune_steps = 300
  c.batch_size = 64
  c.lr = 1e-3
  c.input_noise = 1.0
  c.num_finetunes = 16
  c.num_pairs = 10
  c.min_closer = 8  # per 10 pairs
  c.seeds = (0, 1, 2)  # base init, fine-tuning seeds, pairs; the data split is digits(seed=0)
  return c


def _dist(a, b) -> float:
  return float(jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))))


def _one_seed(config: ml_collections.ConfigDict, seed: int, ctx) -> dict:
  ds = data.digits(seed=0)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  opt = optax.adam(config.lr)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width, config.width], 10, rngs=r), opt)
  key = jax.random.key(seed)
  n_base = int(config.base_fraction * x.shape[0])
  plain = train.make_train_step(graphdef, train.classification_loss, opt)
  base_state, _ = jax.jit(lambda s, k: train.run_steps(plain, s, (x[:n_base], y[:n_base]), k,
                                                       batch_size=config.batch_size, num_steps=config.base_steps))(
      jax.jit(init)(key), jax.random.fold_in(key, 1))

  def noisy_loss(model, batch, rng):
    bx, by = batch
    return train.classification_loss(model, (bx + config.input_noise * jax.random.normal(rng, bx.shape), by), rng)

  step = train.make_train_step(graphdef, noisy_loss, opt)
  fresh = base_state._replace(step=jnp.zeros((), jnp.int32), opt_state=opt.init(base_state.params))
  keys = jax.random.split(jax.random.fold_in(key, 2), config.num_finetunes)
  stacked = jax.jit(jax.vmap(lambda k: train.run_steps(step, fresh, (x, y), k, batch_size=config.batch_size,
                                                       num_steps=config.finetune_steps)[0].params))(keys)
  fts = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(config.num_finetunes)]
  center = merge.uniform_average(fts)

  @jax.jit
  def acc(params):
    model = nnx.merge(graphdef, params, base_state.model_state)
    model.eval()
    return jnp.mean(jnp.argmax(model(ds.x_test), -1) == ds.y_test)

  rng = np.random.default_rng(seed)
  closer, stock_accs, member_accs, avg_accs, ratios = 0, [], [], [], []
  for p in range(config.num_pairs):
    i, j = rng.choice(config.num_finetunes, 2, replace=False)
    pair = [fts[i], fts[j]]
    stock, t = merge.model_stock(base_state.params, pair, return_ratios=True)
    avg = merge.uniform_average(pair)
    d_stock, d_avg = _dist(stock, center), _dist(avg, center)
    closer += int(d_stock < d_avg)
    stock_accs.append(float(acc(stock)))
    avg_accs.append(float(acc(avg)))
    member_accs.append(float((acc(fts[i]) + acc(fts[j])) / 2))
    ratios.append([float(v) for v in jax.tree.leaves(t)])
    ctx.log(p, {f"seed{seed}/dist_stock": d_stock, f"seed{seed}/dist_average": d_avg,
                f"seed{seed}/acc_stock": stock_accs[-1], f"seed{seed}/acc_members": member_accs[-1]})
  return {"closer": closer, "closer_average": 0, "acc_stock": float(np.mean(stock_accs)),
          "acc_average": float(np.mean(avg_accs)), "acc_members": float(np.mean(member_accs)),
          "acc_center": float(acc(center)),
          "mean_ratio": float(np.mean(ratios))}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  per_seed = [_one_seed(config, int(seed), ctx) for seed in config.seeds]
  summary = {k: float(np.mean([r[k] for r in per_seed])) for k in per_seed[0]}
  summary["closer"] = int(sum(r["closer"] for r in per_seed))
  summary["closer_average"] = 0
  pairs = config.num_pairs * len(per_seed)
  if not ctx.quiet:
    ctx.print(f"model stock closer to the centre in {summary['closer']}/{pairs} pairs; test acc stock "
              f"{summary['acc_stock']:.4f}, pair average {summary['acc_average']:.4f}, members "
              f"{summary['acc_members']:.4f}, {config.num_finetunes}-soup {summary['acc_center']:.4f}; mean t "
              f"{summary['mean_ratio']:.3f} (means over seeds {list(config.seeds)})")
  def claim(closer_key: str, acc_key: str) -> bool:  # on all pairs of all seeds and the seed means
    return bool(summary[closer_key] * config.num_pairs >= config.min_closer * pairs
                and summary[acc_key] >= summary["acc_members"] and summary[acc_key] >= summary["acc_center"] - 0.01)

  holds = claim("closer", "acc_stock")
  # Control: the pair's plain average in Model Stock's place (never closer than itself) must fail.
  control_passes = claim("closer_average", "acc_average")
  return {"claim": {"passed": holds and not control_passes, "holds": holds, "control_passes": control_passes,
                    "statement": CLAIM, **summary},
          "per_seed": {k: [r[k] for r in per_seed] for k in per_seed[0]}, "seconds": time.time() - t0}
