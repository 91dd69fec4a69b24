"""Diverse Weight Averaging (DiWA; Ramé et al., arXiv:2205.09739) on digits: averaging fine-tunes launched from
one shared linear-probed init with random hyperparameters is more robust out of distribution than the individual
runs, than averaging checkpoints along one run, and than averaging runs from different random inits.

DIGITS-SOUP with an LP-init: a base MLP (64-128-128-10) is pre-trained briefly on 30% of the training split
(validation carved out); its head is re-initialized and linear-probed on the full split with the backbone frozen
(``optax.multi_transform``). From this LP-init, M = 8 runs are fine-tuned (``paperlab.merge.finetune_grid``) with
random learning rate (log-uniform), weight decay, label smoothing and Gaussian input-noise augmentation, and their
own data order; DiWA is their uniform mean (``paperlab.merge.diwa``). Controls: the average of 5 evenly spaced
checkpoints of each run, and DiWA over M runs with the same hyperparameters started from different random inits
(no shared pre-training). OOD test: the test digits shifted by one pixel in a random direction plus Gaussian noise.
The protocol is repeated for ``num_seeds`` seeds (all runs vmapped together) and accuracies are averaged.
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

PAPER_ID = 205
CLAIM = ("On shifted, noisy digits, DiWA of 8 random-hyperparameter fine-tunes from a shared LP-init beats the mean "
         "individual run by >= 1 point and the checkpoint average of a run, and beats DiWA over different random "
         "inits by >= 20 points.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 128
  c.val_fraction = 0.2
  c.base_fraction = 0.3
  c.base_steps = 40
  c.probe_steps = 200
  c.probe_learning_rate = 1e-2
  c.finetune_steps = 300
  c.num_checkpoints = 5
  c.batch_size = 64
  c.num_runs = 8
  c.num_seeds = 2
  c.lr_range = (3e-4, 3e-3)
  c.weight_decays = (0.0, 1e-4)
  c.max_label_smoothing = 0.1
  c.max_input_noise = 1.0
  c.ood_noise = 0.7
  c.individual_margin = 0.01
  c.random_init_margin = 0.2
  c.seed = 0
  return c


def shifted_noisy(x: np.ndarray, noise: float, seed: int) -> np.ndarray:
  """Each 8x8 image rolled by one pixel up, down, left or right (at random), plus N(0, noise^2)."""
  rng = np.random.default_rng(seed)
  img = x.reshape(-1, 8, 8)
  rolled = np.stack([np.roll(img, 1, 1), np.roll(img, -1, 1), np.roll(img, 1, 2), np.roll(img, -1, 2)])
  pick = rng.integers(0, 4, len(img))
  out = rolled[pick, np.arange(len(img))].reshape(x.shape)
  return (out + noise * rng.standard_normal(out.shape)).astype(np.float32)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits(seed=config.seed)
  tr, va = data.stratified_split(ds.y_train, config.val_fraction, config.seed)
  x, y = jnp.asarray(ds.x_train[tr]), jnp.asarray(ds.y_train[tr])
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  xo = jnp.asarray(shifted_noisy(ds.x_test, config.ood_noise, config.seed))
  n, m = config.num_seeds, config.num_runs
  key = jax.random.key(config.seed)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width, config.width], 10, rngs=r),
                                   optax.identity())
  fresh = jax.vmap(init)(jax.random.split(key, n))
  model_state = jax.tree.map(lambda a: a[0], fresh.model_state)
  n_base = int(config.base_fraction * x.shape[0])
  bases = merge.finetune_grid(graphdef, fresh.params, model_state, (x[:n_base], y[:n_base]),
                              jnp.asarray([[1e-3, 0.0, 0.0, 0.0]] * n), jax.random.split(jax.random.fold_in(key, 1), n),
                              num_steps=config.base_steps, batch_size=config.batch_size, params_axis=0)

  # Linear probe: a fresh head on the frozen pre-trained backbone.
  probe = optax.multi_transform({"head": optax.adam(config.probe_learning_rate), "body": optax.set_to_zero()},
                                lambda p: {k: ("head" if k == "head" else "body") for k in p})
  probe_step = train.make_train_step(graphdef, train.classification_loss, probe)

  def linear_probe(base, head, k):
    params = {**base, "head": head}
    state = train.TrainState(jnp.zeros((), jnp.int32), params, model_state, probe.init(params))
    return train.run_steps(probe_step, state, (x, y), k, batch_size=config.batch_size,
                           num_steps=config.probe_steps)[0].params

  lp_inits = jax.jit(jax.vmap(linear_probe))(
      bases, jax.vmap(lambda p: p["head"])(jax.vmap(init)(jax.random.split(jax.random.fold_in(key, 2), n)).params),
      jax.random.split(jax.random.fold_in(key, 3), n))

  rng = np.random.default_rng(config.seed)
  lo, hi = np.log(config.lr_range[0]), np.log(config.lr_range[1])
  hp = np.stack([np.exp(rng.uniform(lo, hi, n * m)), rng.choice(config.weight_decays, n * m),
                 rng.uniform(0, config.max_label_smoothing, n * m), rng.uniform(0, config.max_input_noise, n * m)], 1)
  rows_init = jax.tree.map(lambda a: jnp.repeat(a, m, axis=0), lp_inits)  # row s * m + i starts from seed s
  ckpts = merge.finetune_grid(graphdef, rows_init, model_state, (x, y), hp,
                              jax.random.split(jax.random.fold_in(key, 4), n * m), num_steps=config.finetune_steps,
                              batch_size=config.batch_size, num_checkpoints=config.num_checkpoints, params_axis=0)
  scratch = jax.vmap(init)(jax.random.split(jax.random.fold_in(key, 5), n * m)).params
  scattered = merge.finetune_grid(graphdef, scratch, model_state, (x, y), hp,
                                  jax.random.split(jax.random.fold_in(key, 4), n * m),
                                  num_steps=config.finetune_steps, batch_size=config.batch_size, params_axis=0)

  @jax.jit
  def accuracies(params):  # (test, ood) of one model
    model = nnx.merge(graphdef, params, model_state)
    return jnp.stack([jnp.mean(jnp.argmax(model(a), -1) == yt) for a in (xt, xo)])

  batched = jax.jit(jax.vmap(accuracies))
  final = jax.tree.map(lambda a: a[:, -1], ckpts)
  individual = np.asarray(batched(final)).reshape(n, m, 2)
  ckpt_avg = np.asarray(batched(jax.tree.map(lambda a: a.mean(1), ckpts))).reshape(n, m, 2)
  per_seed = lambda t: jax.tree.map(lambda a: a.reshape((n, m) + a.shape[1:]), t)
  diwa = [merge.diwa([jax.tree.map(lambda a, s=s, i=i: a[s, i], per_seed(final)) for i in range(m)])
          for s in range(n)]
  diwa_rand = [merge.diwa([jax.tree.map(lambda a, s=s, i=i: a[s, i], per_seed(scattered)) for i in range(m)])
               for s in range(n)]
  rows = {
      "lp_init": np.asarray(batched(lp_inits)).mean(0),
      "individual_mean": individual.mean((0, 1)),
      "individual_best": individual.max(1).mean(0),
      "checkpoint_average_mean": ckpt_avg.mean((0, 1)),
      "checkpoint_average_best": ckpt_avg.max(1).mean(0),
      "diwa": np.mean([np.asarray(accuracies(p)) for p in diwa], 0),
      "diwa_random_inits": np.mean([np.asarray(accuracies(p)) for p in diwa_rand], 0),
      "random_init_individual_mean": np.asarray(batched(scattered)).mean(0),
  }
  rows = {k: {"test": float(v[0]), "ood": float(v[1])} for k, v in rows.items()}
  for i, (name, r) in enumerate(rows.items()):
    ctx.log(i, {f"{name}/{k}": v for k, v in r.items()})
  if not ctx.quiet:
    for name, r in rows.items():
      ctx.print(f"{name:>28s}  test {r['test'] * 100:5.1f}  ood {r['ood'] * 100:5.1f}")
  d = rows["diwa"]["ood"]
  checks = {"beats_individuals": d >= rows["individual_mean"]["ood"] + config.individual_margin,
            "beats_checkpoint_average": d >= rows["checkpoint_average_mean"]["ood"],
            "beats_random_inits": d >= rows["diwa_random_inits"]["ood"] + config.random_init_margin}
  return {"claim": {"passed": all(checks.values()), "statement": CLAIM, **checks, "diwa_ood": d,
                    "individual_mean_ood": rows["individual_mean"]["ood"],
                    "checkpoint_average_ood": rows["checkpoint_average_mean"]["ood"],
                    "diwa_random_inits_ood": rows["diwa_random_inits"]["ood"]},
          "table": rows, "hyperparameters": hp.tolist(), "seconds": time.time() - t0}
