"""Backward-compatible weight interpolation (BCWI; Schumann et al., arXiv:2301.10546) on digits: interpolating
between an old model and its update on more data cuts the update's negative flips without costing accuracy.

Setup: the old model (MLP 64-128-128-10) is trained from scratch on 30% of the training split (validation carved
out) for a few steps; the new model is fine-tuned from it on the full split for more steps
(``paperlab.merge.finetune_grid``, seeds vmapped). BCWI deploys ``paperlab.merge.interpolate(old, new, alpha)``.
Negative flips (``paperlab.merge.negative_flip_rate``: correct under the old model, wrong under the deployed one)
and accuracy are measured on the test split for alpha in {0, 0.1, ..., 1} and averaged over seeds; the alpha a
practitioner would pick on validation (``paperlab.merge.bcwi_select``, the most backward-compatible alpha within
0.5 points of the new model's validation accuracy) is reported too.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, merge, models, train

PAPER_ID = 387
CLAIM = ("On digits, some interpolation weight alpha in [0.3, 0.9] between the old model and its update halves the "
         "update's negative flip rate (NFR <= 0.5 x NFR(new)) while losing at most 0.5 points of test accuracy.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 128
  c.val_fraction = 0.2
  c.old_fraction = 0.3
  c.old_steps = 60
  c.new_steps = 300
  c.learning_rate = 1e-3
  c.batch_size = 64
  c.num_seeds = 3
  c.alphas = tuple(round(0.1 * i, 1) for i in range(11))
  c.claim_alpha_range = (0.3, 0.9)
  c.nfr_ratio = 0.5
  c.tolerance = 0.005
  c.seed = 0
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits(seed=config.seed)
  tr, va = data.stratified_split(ds.y_train, config.val_fraction, config.seed)
  x, y = jnp.asarray(ds.x_train[tr]), jnp.asarray(ds.y_train[tr])
  xv, yv = jnp.asarray(ds.x_train[va]), jnp.asarray(ds.y_train[va])
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  n = config.num_seeds
  key = jax.random.key(config.seed)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width, config.width], 10, rngs=r),
                                   optax.identity())
  starts = jax.vmap(init)(jax.random.split(key, n))
  model_state = jax.tree.map(lambda a: a[0], starts.model_state)
  hp = jnp.asarray([[config.learning_rate, 0.0, 0.0, 0.0]] * n)
  n_old = int(config.old_fraction * x.shape[0])
  olds = merge.finetune_grid(graphdef, starts.params, model_state, (x[:n_old], y[:n_old]), hp,
                             jax.random.split(jax.random.fold_in(key, 1), n), num_steps=config.old_steps,
                             batch_size=config.batch_size, params_axis=0)
  news = merge.finetune_grid(graphdef, olds, model_state, (x, y), hp, jax.random.split(jax.random.fold_in(key, 2), n),
                             num_steps=config.new_steps, batch_size=config.batch_size, params_axis=0)

  @jax.jit
  def predict(params, xs):
    return jnp.argmax(nnx.merge(graphdef, params, model_state)(xs), -1)

  alphas = [float(a) for a in config.alphas]
  acc = np.zeros((n, len(alphas)))
  nfr = np.zeros((n, len(alphas)))
  picked = []
  for s in range(n):
    old, new = (jax.tree.map(lambda a, s=s: a[s], t) for t in (olds, news))
    p_old, pv_old = predict(old, xt), predict(old, xv)
    for j, a in enumerate(alphas):
      p = predict(merge.interpolate(old, new, a), xt)
      acc[s, j] = float(jnp.mean(p == yt))
      nfr[s, j] = float(merge.negative_flip_rate(p_old, p, yt))
    new_val = float(jnp.mean(predict(new, xv) == yv))

    def score(params):  # validation: fewest negative flips among alphas within the tolerance of the new model
      pv = predict(params, xv)
      ok = float(jnp.mean(pv == yv)) >= new_val - config.tolerance
      return (1.0 if ok else 0.0) - float(merge.negative_flip_rate(pv_old, pv, yv))

    picked.append(merge.bcwi_select(old, new, alphas, score)[1])
  acc_m, nfr_m = acc.mean(0), nfr.mean(0)
  for j, a in enumerate(alphas):
    ctx.log(j, {"alpha": a, "test_accuracy": acc_m[j], "negative_flip_rate": nfr_m[j]})
  if not ctx.quiet:
    for j, a in enumerate(alphas):
      ctx.print(f"alpha {a:.1f}  test {acc_m[j] * 100:5.1f}  NFR {nfr_m[j] * 100:5.2f}")
    ctx.print(f"alpha picked on validation per seed: {picked}")
  i_new = alphas.index(1.0)
  lo, hi = config.claim_alpha_range
  good = [a for j, a in enumerate(alphas) if lo <= a <= hi and nfr_m[j] <= config.nfr_ratio * nfr_m[i_new]
          and acc_m[j] >= acc_m[i_new] - config.tolerance]
  cand = [j for j, a in enumerate(alphas) if lo <= a <= hi]
  best = min(cand, key=lambda j: (acc_m[j] < acc_m[i_new] - config.tolerance, nfr_m[j]))
  return {"claim": {"passed": bool(good), "statement": CLAIM, "alphas_passing": good,
                    "nfr_new": float(nfr_m[i_new]), "acc_new": float(acc_m[i_new]), "acc_old": float(acc_m[0]),
                    "best_alpha": alphas[best], "nfr_best": float(nfr_m[best]), "acc_best": float(acc_m[best])},
          "alphas": alphas, "test_accuracy": acc_m.tolist(), "negative_flip_rate": nfr_m.tolist(),
          "alpha_picked_on_validation": picked, "seconds": time.time() - t0}
