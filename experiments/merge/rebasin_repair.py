"""REPAIR after weight matching: renormalising interpolated activations lowers the barrier (Qu & Horvath, "Rethinking
Model Re-Basin and the Linear Mode Connectivity", arXiv:2402.05966; Jordan et al., 2022).

TWO-SEED (catalogue), BN-free: two MLPs 64 -> 512 -> 512 -> 10 trained on digits for 20 epochs (Adam 1e-3, batch
128) from different random inits; three such pairs (model seeds 0/1, 2/3, 4/5; ``config.seeds`` numbers the pairs).
B is aligned to A by weight matching. Along the linear path, each interpolated model is evaluated as is and after
REPAIR in three modes (rescale and reshift together, rescale only, reshift only), statistics from the training
inputs; the test-loss barriers are compared, and the variance collapse of the plain midpoint is measured (std of
hidden pre-activations relative to the endpoints'). Pruning: model A with 80% of every kernel's entries removed by
magnitude, as is and renormalised (REPAIR toward A's own statistics, ``merge.repair(..., pa, pa, 0.0, ...)``).
The claim is judged on the means over pairs with the spread reported; control: every renormalisation replaced by
the identity (a repair that does nothing) must fail.

Claim (catalogue [331], tested as stated, no deviation): barrier(WM+REPAIR) <= barrier(WM); barrier(WM+rescale-only)
<= barrier(WM+reshift-only); midpoint hidden std < 0.7x the endpoints' before repair; acc(pruned+renormalize) >=
acc(pruned) + 5 points.

Measured (3 pairs, ~50 s on one core): test-loss barriers plain WM 0.063 +- 0.007, WM+REPAIR 0.019 +- 0.005, rescale
only 0.019 +- 0.005, reshift only 0.066 +- 0.007 (both orderings hold on every pair); midpoint hidden std ratio
0.725 +- 0.006 (0.722/0.733/0.720), NOT < 0.7; pruning 80%: 97.9% -> 93.5% +- 0.8, renormalised 94.9% +- 0.2, a
gain of 1.4 points, NOT >= 5. Not reproduced: the REPAIR orderings reproduce, the variance collapse is milder than
the 0.7 bar at H=512 (the earlier record, at 3 x 128 hidden units and one pair, measured 0.66 and dropped the pruning
part), and renormalising a pruned net gains 1.4 points, not 5.

CI scale (CI_CONFIG): H = 256, 10 epochs; at it: barriers plain WM 0.147, WM+REPAIR 0.050, rescale only 0.051,
reshift only 0.146 (both orderings hold), midpoint std ratio 0.738 (not < 0.7), pruning 80%: 90.1% -> renormalised
90.9% (+0.7, not +5) (pairs 0-2): not reproduced, as at full scale; control fails; ~71 CPU-s (measured under load).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, merge, models, papers, train

PAPER_ID = 331
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()

# the test suite's scale (paperlab.runner.config.ci_config); the record is made at the defaults below
CI_CONFIG = {"width": 256, "epochs": 10}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 512  # TWO-SEED: H = 512, 20 epochs
  c.depth = 2
  c.epochs = 20
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.seeds = (0, 1, 2)  # three independent pairs: pair s trains models from seeds 2s and 2s + 1
  c.num_alphas = 11
  c.collapse_ratio = 0.7
  c.prune_fraction = 0.8
  c.prune_gain = 0.05
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits()
  opt = optax.adam(config.learning_rate)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width] * config.depth, 10, rngs=r), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  steps = config.epochs * (len(ds.y_train) // config.batch_size)
  keys = jnp.stack([jax.random.key(m) for s in config.seeds for m in (2 * s, 2 * s + 1)])
  trainset = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  states, _ = jax.jit(jax.vmap(lambda s, k: train.run_steps(step, s, trainset, k, batch_size=config.batch_size,
                                                            num_steps=steps)))(
      jax.vmap(init)(keys), jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))
  apply = merge.model_apply(graphdef)
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  test_loss = jax.jit(lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x_test), y_test).mean())
  test_acc = jax.jit(lambda p: (jnp.argmax(apply(p, x_test), -1) == y_test).mean())
  capture = jax.jit(lambda p: merge.capture_layer_io(graphdef, p, trainset[0])[1])
  alphas = np.linspace(0.0, 1.0, config.num_alphas)
  hidden = [f"hidden/{i}" for i in range(config.depth)]
  prune = lambda p: jax.tree_util.tree_map_with_path(  # magnitude pruning of every kernel (biases kept)
      lambda path, x: merge.trim_to_density(x, 1.0 - config.prune_fraction)
      if getattr(path[-1], "key", None) == "kernel" else x, p)

  per_pair = []
  for pair in range(len(config.seeds)):
    pa = jax.tree.map(lambda x: x[2 * pair], states.params)
    pb = jax.tree.map(lambda x: x[2 * pair + 1], states.params)
    spec = merge.mlp_spec(pa)
    pb = merge.apply_permutation(spec, merge.weight_matching(config.seeds[pair], spec, pa, pb), pb)
    curves = {k: [] for k in ("plain", "both", "rescale", "reshift")}
    for a in alphas:
      merged = merge.interpolate(pa, pb, float(a))
      curves["plain"].append(float(test_loss(merged)))
      for mode in ("both", "rescale", "reshift"):
        curves[mode].append(float(test_loss(merge.repair(graphdef, merged, pa, pb, float(a), trainset[0],
                                                         mode=mode))))
    barriers = {k: float(merge.loss_barrier(jnp.asarray(v), jnp.asarray(alphas))) for k, v in curves.items()}
    for i, a in enumerate(alphas):
      ctx.log(i, {"pair": pair, "alpha": a, **{k: v[i] for k, v in curves.items()}})
    io = {k: capture(p) for k, p in (("a", pa), ("b", pb), ("mid", merge.interpolate(pa, pb, 0.5)))}
    std = {k: float(np.mean([io[k][h][1].std(0).mean() for h in hidden])) for k in io}
    pruned = prune(pa)
    renormalized = merge.repair(graphdef, pruned, pa, pa, 0.0, trainset[0])
    per_pair.append({**{f"barrier_{k}": v for k, v in barriers.items()},
                     "midpoint_std_ratio": std["mid"] / (0.5 * (std["a"] + std["b"])),
                     "acc_a": float(test_acc(pa)), "acc_pruned": float(test_acc(pruned)),
                     "acc_pruned_renormalized": float(test_acc(renormalized))})
  per_seed = {k: [p[k] for p in per_pair] for k in per_pair[0]}
  m = {k: float(np.mean(v)) for k, v in per_seed.items()}
  sd = {k: float(np.std(v)) for k, v in per_seed.items()}

  def claim(both, rescale, reshift, renormalized):
    return bool(both <= m["barrier_plain"] and rescale <= reshift and m["midpoint_std_ratio"] < config.collapse_ratio
                and renormalized >= m["acc_pruned"] + config.prune_gain)

  holds = claim(m["barrier_both"], m["barrier_rescale"], m["barrier_reshift"], m["acc_pruned_renormalized"])
  # control: a repair that does nothing (every renormalised model left as it was)
  control = claim(m["barrier_plain"], m["barrier_plain"], m["barrier_plain"], m["acc_pruned"])
  if not ctx.quiet:
    for k in per_seed:
      ctx.print(f"{k:>24s} {m[k]:.4f} +- {sd[k]:.4f}  per pair {np.round(per_seed[k], 4).tolist()}")
  return {
      "claim": {"passed": holds and not control, "holds": holds, "control_passes": control, "vacuous": control,
                "statement": CLAIM, **m, "std_over_pairs": sd,
                "repair_ok": bool(m["barrier_both"] <= m["barrier_plain"]),
                "rescale_ok": bool(m["barrier_rescale"] <= m["barrier_reshift"]),
                "collapse_ok": bool(m["midpoint_std_ratio"] < config.collapse_ratio),
                "prune_ok": bool(m["acc_pruned_renormalized"] >= m["acc_pruned"] + config.prune_gain)},
      "per_pair": per_seed,
      "seconds": time.time() - t0,
  }
