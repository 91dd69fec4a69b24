"""Model soups on digits (Wortsman et al., arXiv:2203.05482), catalogue [61]: the greedy soup of fine-tunes of one
base is as accurate as the best single fine-tune in distribution and at least as accurate out of distribution, while
a soup of models from different random inits collapses.

DIGITS-SOUP (:mod:`paperlab.runner.digits_soup`): per seed, a base MLP (64-128-128-10) is pre-trained briefly on 30%
of the training split (validation carved out); 12 ingredients are fine-tuned from it on the full fit split over a
grid of learning rate, weight decay, label smoothing and Gaussian input-noise augmentation (12 of the 24 points, a
seeded draw; all seeds' ingredients in one vmapped program). The greedy soup (``paperlab.merge.greedy_soup``) adds
ingredients in order of validation accuracy while validation accuracy does not drop. OOD test: the test inputs
shifted by one pixel in a random direction plus Gaussian noise (sd 0.7). Compared through
:mod:`paperlab.runner.protocol` (arms without a grid, 3 seeds, test read once per arm, the claim judged on seed
means). The catalogue's control: 5 models trained with the same recipe from 5 different random inits; their uniform
soup must land >= 30 points below their mean accuracy. The claim's own control: a greedy soup that keeps one model
is the best ingredient and satisfies the catalogue's two inequalities by construction, so the tested claim also
asks the soup to keep >= 2 ingredients in every seed, and the best ingredient passed as the soup must fail it.
Also reported: the uniform soup of all 12, Model Stock of the two best ingredients (arXiv:2403.19522) and their plain
average.

Measured (seeds 0-2): greedy soup test 97.70% +- 0.42 vs best-on-val ingredient 97.93% +- 0.90 (within 0.5 points),
OOD 44.44% vs 43.19% (per seed 46.0/44.7/42.7 vs 41.8/45.1/42.7); the greedy soups keep 4, 3 and 3 ingredients;
the best ingredient passed as the soup fails the claim. Random-init control: 5 fine-tunes from different inits
average 96.76% test, their uniform soup 54.07% (gap 42.7 points; per seed 45.2/56.4/26.4). Uniform soup of all 12:
97.19% test, 46.30% OOD.

Re-run on the CI machine of 2026-12-05 (the record, experiments/records/61.json): the same code gives slightly other
float results there, and seed 2's greedy soup keeps a single ingredient (kept 4, 3, 1): greedy 97.85% test / 44.44%
OOD vs best ingredient 97.93% / 43.26%, random-init gap 42.6 points; the non-vacuity part fails, so not reproduced.
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import merge, papers
from paperlab.runner import protocol
from paperlab.runner.digits_soup import digits_soup

PAPER_ID = 61
CLAIM = (papers.get(PAPER_ID).claim + " Non-vacuity: the greedy soup keeps >= 2 ingredients in every seed (a "
         "one-ingredient soup is the best ingredient and passes the two inequalities by construction).")
DEVIATIONS = (
    "added to the claim: the greedy soup must keep >= 2 ingredients in every seed, because a greedy soup of one "
    "ingredient is the best-on-val ingredient itself and meets both inequalities by construction (issue 12: seed 1 "
    "of the earlier record showed it); this makes the claim stricter, not looser",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
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
  c.tolerance = 0.005
  c.num_random_inits = 5
  c.random_init_gap = 0.30
  return c


def _ood(x: np.ndarray, noise: float, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  img = x.reshape(-1, 8, 8)
  shifts = rng.choice([(-1, 0), (1, 0), (0, -1), (0, 1)], size=len(img))
  out = np.stack([np.roll(im, tuple(s), axis=(0, 1)) for im, s in zip(img, shifts)]).reshape(x.shape)
  return (out + noise * rng.standard_normal(out.shape)).astype(np.float32)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  soup = digits_soup(seed=0, val_fraction=config.val_fraction, width=config.width)
  (xv, yv), (xt, yt) = soup.val, soup.test
  xo = jnp.asarray(_ood(soup.x_test_raw, config.ood_noise, 0))
  seeds, k, r = list(range(config.seeds)), config.num_ingredients, config.num_random_inits
  n = len(seeds)
  key = jax.random.key(0)
  _, bases = soup.pretrain(key, n, fraction=config.base_fraction, steps=config.base_steps,
                           batch_size=config.batch_size)

  full = list(itertools.product(config.lrs, config.weight_decays, config.label_smoothings, config.input_noises))
  grids = [[full[i] for i in np.random.default_rng(s).permutation(len(full))[:k]] for s in seeds]
  finetune = lambda params, hp, key: merge.finetune_grid(
      soup.graphdef, params, soup.model_state, soup.fit, jnp.asarray(hp, jnp.float32),
      jax.random.split(key, len(hp)), num_steps=config.finetune_steps, batch_size=config.batch_size, params_axis=0)
  stacked = finetune(jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), bases), sum(grids, []),
                     jax.random.fold_in(key, 2))
  # The catalogue's control: the same recipe (pre-train, then fine-tune with the seed's first r grid points) from
  # r different random inits per seed.
  _, scratch_bases = soup.pretrain(jax.random.fold_in(key, 5), n * r, fraction=config.base_fraction,
                                   steps=config.base_steps, batch_size=config.batch_size)
  scratch = finetune(scratch_bases, [p for g in grids for p in g[:r]], jax.random.fold_in(key, 6))

  acc = soup.accuracy_fn()
  val = lambda p: float(acc(p, xv, yv))
  scores = lambda p: {"test": float(acc(p, xt, yt)), "ood": float(acc(p, xo, yt))}
  rows = {name: [] for name in ("base", "best_ingredient", "greedy_soup", "uniform_soup", "model_stock_top2",
                                "average_top2", "mean_ingredient", "random_init_mean_ingredient",
                                "random_init_uniform_soup")}
  selected = []
  for s in range(n):
    ingredients = [jax.tree.map(lambda a, i=s * k + i: a[i], stacked) for i in range(k)]
    base = jax.tree.map(lambda a, s=s: a[s], bases)
    order = list(np.argsort(-np.asarray([val(p) for p in ingredients]), kind="stable"))
    greedy, kept = merge.greedy_soup(ingredients, val)
    selected.append([int(i) for i in kept])
    two = [ingredients[int(order[0])], ingredients[int(order[1])]]
    for name, p in (("base", base), ("best_ingredient", ingredients[int(order[0])]), ("greedy_soup", greedy),
                    ("uniform_soup", merge.uniform_soup(ingredients)),
                    ("model_stock_top2", merge.model_stock(base, two)), ("average_top2", merge.uniform_average(two))):
      rows[name].append(scores(p))
    rows["mean_ingredient"].append({m: float(np.mean([scores(p)[m] for p in ingredients])) for m in ("test", "ood")})
    others = [jax.tree.map(lambda a, i=s * r + i: a[i], scratch) for i in range(r)]
    rows["random_init_mean_ingredient"].append(
        {m: float(np.mean([scores(p)[m] for p in others])) for m in ("test", "ood")})
    rows["random_init_uniform_soup"].append(scores(merge.uniform_soup(others)))
    ctx.log(s, {f"{name}/{m}": v[-1][m] for name, v in rows.items() for m in ("test", "ood")})
  per_seed = {name: {m: np.asarray([row[m] for row in v]) for m in ("test", "ood")} for name, v in rows.items()}
  # Whether a soup keeps >= 2 ingredients, per seed: its seed mean is 1 only if every seed's soup does (a mean
  # ingredient count could hide a seed whose soup is one model). The best ingredient is a soup of one.
  per_seed["greedy_soup"]["several_ingredients"] = np.asarray([float(len(kept) >= 2) for kept in selected])
  per_seed["best_ingredient"]["several_ingredients"] = np.zeros(n)

  comparison = protocol.compare([protocol.Arm("best_ingredient"), protocol.Arm("greedy_soup")], seeds,
                                lambda arm, hp, seeds: arm.name, validate=lambda name: np.zeros(n),
                                test=lambda name: per_seed[name])
  verdict = comparison.judge(
      lambda m, b: (m["test"] >= b["test"] - config.tolerance and m["ood"] >= b["ood"]
                    and m["several_ingredients"] == 1.0),
      method="greedy_soup", baseline="best_ingredient")
  gap = per_seed["random_init_mean_ingredient"]["test"] - per_seed["random_init_uniform_soup"]["test"]
  control_ok = bool(np.mean(gap) >= config.random_init_gap)
  if not ctx.quiet:
    for name, v in per_seed.items():
      ctx.print(f"{name:>28s}  test {v['test'].mean() * 100:5.1f} +- {v['test'].std() * 100:4.1f}  "
                f"ood {v['ood'].mean() * 100:5.1f} +- {v['ood'].std() * 100:4.1f}")
    ctx.print(f"greedy soup ingredients per seed: {selected}")
  g, b = comparison["greedy_soup"], comparison["best_ingredient"]
  results = {name: {m: a.tolist() for m, a in v.items()} for name, v in per_seed.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "passed": bool(verdict["passed"] and control_ok), "statement": CLAIM,
                      "greedy_test": g.mean("test"), "best_test": b.mean("test"), "greedy_ood": g.mean("ood"),
                      "best_ood": b.mean("ood"), "tolerance": config.tolerance,
                      "ingredients_kept": [len(kept) for kept in selected],
                      "random_init_gap": float(np.mean(gap)), "random_init_gap_per_seed": gap.tolist(),
                      "random_init_control_passed": control_ok}
  results.update(selected=selected, grids=grids, seconds=time.time() - t0)
  return results
