"""Model soups on digits (Wortsman et al., arXiv:2203.05482): the greedy soup of fine-tunes of one base is as
accurate as the best single fine-tune in distribution and more robust out of distribution.

DIGITS-SOUP: a base MLP (64-128-128-10) is pre-trained briefly on 30% of the training split; 12 ingredients are
fine-tuned from it on the full training split (validation carved out) over a grid of learning rate, weight decay,
label smoothing and Gaussian input-noise augmentation (vmapped, one XLA program). The greedy soup
(``paperlab.merge.greedy_soup``) adds ingredients by validation accuracy. OOD test: the test inputs shifted by one
pixel in a random direction plus Gaussian noise. Also reported: the uniform soup, Model Stock of the two best
ingredients (arXiv:2403.19522) and their plain average.
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, merge, models, train

PAPER_ID = 61
CLAIM = ("The greedy soup of 12 digits fine-tunes is within 0.5 points of the best-on-validation ingredient's test "
         "accuracy and at least as accurate as it out of distribution.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 128
  c.val_fraction = 0.2
  c.base_fraction = 0.3
  c.base_steps = 40
  c.finetune_steps = 300
  c.batch_size = 64
  c.lrs = (3e-4, 1e-3, 3e-3)
  c.weight_decays = (0.0, 1e-4)
  c.label_smoothings = (0.0, 0.1)
  c.input_noises = (0.0, 1.0)
  c.num_ingredients = 12
  c.ood_noise = 0.7
  c.seed = 0
  c.tolerance = 0.005
  return c


def _ood(x: np.ndarray, noise: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  img = x.reshape(-1, 8, 8)
  shifts = rng.choice([(-1, 0), (1, 0), (0, -1), (0, 1)], size=len(img))
  out = np.stack([np.roll(im, tuple(s), axis=(0, 1)) for im, s in zip(img, shifts)]).reshape(x.shape)
  return (out + noise * rng.standard_normal(out.shape)).astype(np.float32)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits(seed=config.seed)
  tr, va = data.stratified_split(ds.y_train, config.val_fraction, config.seed)
  x, y = jnp.asarray(ds.x_train[tr]), jnp.asarray(ds.y_train[tr])
  xv, yv = jnp.asarray(ds.x_train[va]), jnp.asarray(ds.y_train[va])
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  xo = jnp.asarray(_ood(ds.x_test, config.ood_noise, config.seed))

  base_opt = optax.adam(1e-3)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width, config.width], 10, rngs=r), base_opt)
  key = jax.random.key(config.seed)
  n_base = int(config.base_fraction * x.shape[0])
  base_step = train.make_train_step(graphdef, train.classification_loss, base_opt)
  base_state, _ = jax.jit(lambda s, k: train.run_steps(base_step, s, (x[:n_base], y[:n_base]), k,
                                                       batch_size=config.batch_size, num_steps=config.base_steps))(
      jax.jit(init)(key), jax.random.fold_in(key, 1))

  grid = list(itertools.product(config.lrs, config.weight_decays, config.label_smoothings, config.input_noises))
  grid = [grid[i] for i in np.random.default_rng(config.seed).permutation(len(grid))[:config.num_ingredients]]
  hp = jnp.asarray(grid, jnp.float32)

  keys = jax.random.split(jax.random.fold_in(key, 2), len(grid))
  stacked = merge.finetune_grid(graphdef, base_state.params, base_state.model_state, (x, y), hp, keys,
                                num_steps=config.finetune_steps, batch_size=config.batch_size)
  ingredients = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(len(grid))]

  @jax.jit
  def acc(params, xs, ys):
    model = nnx.merge(graphdef, params, base_state.model_state)
    model.eval()
    return jnp.mean(jnp.argmax(model(xs), -1) == ys)

  val = lambda p: float(acc(p, xv, yv))
  test = lambda p: float(acc(p, xt, yt))
  ood = lambda p: float(acc(p, xo, yt))

  val_scores = [val(p) for p in ingredients]
  order = list(np.argsort(-np.asarray(val_scores), kind="stable"))
  best = int(order[0])
  soup, selected = merge.greedy_soup(ingredients, val)
  uniform = merge.uniform_soup(ingredients)
  two = [ingredients[int(order[0])], ingredients[int(order[1])]]
  stock = merge.model_stock(base_state.params, two)
  table = {
      "base": base_state.params, "best_ingredient": ingredients[best], "greedy_soup": soup, "uniform_soup": uniform,
      "model_stock_top2": stock, "average_top2": merge.uniform_average(two),
  }
  rows = {k: {"val": val(p), "test": test(p), "ood": ood(p)} for k, p in table.items()}
  rows["mean_ingredient"] = {m: float(np.mean([f(p) for p in ingredients])) for m, f in
                             (("val", val), ("test", test), ("ood", ood))}
  for i, (name, r) in enumerate(rows.items()):
    ctx.log(i, {f"{name}/{m}": v for m, v in r.items()})
  if not ctx.quiet:
    for name, r in rows.items():
      ctx.print(f"{name:>18s}  val {r['val'] * 100:5.1f}  test {r['test'] * 100:5.1f}  ood {r['ood'] * 100:5.1f}")
    ctx.print(f"greedy soup ingredients: {selected} (hyperparameters {[grid[i] for i in selected]})")

  g, b = rows["greedy_soup"], rows["best_ingredient"]
  passed = bool(g["test"] >= b["test"] - config.tolerance and g["ood"] >= b["ood"])
  return {"claim": {"passed": passed, "statement": CLAIM, "greedy_test": g["test"], "best_test": b["test"],
                    "greedy_ood": g["ood"], "best_ood": b["ood"], "tolerance": config.tolerance},
          "table": rows, "selected": [int(i) for i in selected], "grid": grid, "seconds": time.time() - t0}
