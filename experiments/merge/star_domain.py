"""Starlight: a star model linearly connected (modulo permutation) to held-out solutions (Sonthalia et al., "Do
Deep Neural Network Solutions Form a Star Domain?", arXiv:2403.07968).

TWO-SEED-style (catalogue): per seed, eight MLPs 64 -> 256 -> 256 -> 10 are trained on digits for 20 epochs (Adam
1e-3, batch 128) from different inits: 5 sources and 3 held-out models. A star model starts from source 1 and is
trained for 3 epochs with the Starlight objective (``paperlab.merge.starlight_loss``): the loss at a random point of
the segment to a random source, each source aligned to the star by weight matching (re-matched every
``rematch_every`` steps). Then each held-out model is aligned to the star and to source 1, and the test-loss
barriers (``paperlab.merge.star_barriers``) are compared. Three seeds; the claim is judged on seed means with the
spread reported; control: an ordinary solution (source 1 itself) in the star's place must fail.

Claim (catalogue [99], tested as stated, no deviation): mean WM-aligned barrier(star, held-out) <= 0.5x mean
barrier(source_1, held-out), and star test acc >= mean source acc - 1 point.

Measured (seeds 0-2, ~58 s on one core; the star trains 3 epochs = 30 steps, re-matched every 10): mean barrier to
the held-out models star 0.044 +- 0.008 vs source 1 0.085 +- 0.006 (ratio 0.52; per seed 0.036/0.055/0.040 vs
0.080/0.094/0.082); star test accuracy 96.4% +- 0.2 vs mean source 97.7% +- 0.1 (-1.2 points). Not reproduced,
narrowly on both parts: at the catalogue's 3 star epochs the barrier halves only on seeds 0 and 2 and the star is
1.2 points below the sources. (The earlier record, 1 seed, width 128 and 400 star steps ~ 38 epochs, measured 0.0035
vs 0.033 at 97.3% vs 97.5%.)

CI scale (CI_CONFIG): width 64, models trained 5 epochs (star 3 epochs as in the defaults); at it: star barrier
0.386 +- 0.046 vs source 1 0.509 +- 0.029 (ratio 0.76, not <= 0.5), star acc 87.6% vs sources 84.0% (seeds 0-2):
not reproduced, as at full scale; control fails; ~22 CPU-s.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, merge, models, papers, train

PAPER_ID = 99
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()

# the test suite's scale (paperlab.runner.config.ci_config); the record is made at the defaults below
CI_CONFIG = {"width": 64, "epochs": 5}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.width = 256
  c.num_sources = 5
  c.num_held_out = 3
  c.epochs = 20
  c.star_epochs = 3
  c.rematch_every = 10
  c.batch_size = 128
  c.learning_rate = 1e-3
  c.star_learning_rate = 1e-3
  c.num_alphas = 11
  c.seeds = (0, 1, 2)
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits()
  opt = optax.adam(config.learning_rate)
  graphdef, init = train.make_init(lambda r: models.MLP(64, [config.width] * 2, 10, rngs=r), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  n_models = config.num_sources + config.num_held_out
  steps_per_epoch = len(ds.y_train) // config.batch_size
  keys = jnp.concatenate([jax.random.split(jax.random.key(s), n_models) for s in config.seeds])
  trainset = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  states, _ = jax.jit(jax.vmap(lambda s, k: train.run_steps(step, s, trainset, k, batch_size=config.batch_size,
                                                            num_steps=config.epochs * steps_per_epoch)))(
      jax.vmap(init)(keys), jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))

  apply = merge.model_apply(graphdef)
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  test_loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x_test), y_test).mean()
  test_acc = jax.jit(lambda p: (jnp.argmax(apply(p, x_test), -1) == y_test).mean())
  batch_loss = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(apply(p, b[0]), b[1]).mean()
  star_opt = optax.adam(config.star_learning_rate)
  star_steps = config.star_epochs * steps_per_epoch

  @jax.jit
  def star_phase(star, opt_state, stacked, key, n):
    def body(carry, s):
      p, o = carry
      k_b, k_s = jax.random.split(jax.random.fold_in(key, s))
      idx = jax.random.randint(k_b, (config.batch_size,), 0, trainset[0].shape[0])
      batch = (trainset[0][idx], trainset[1][idx])
      loss, g = jax.value_and_grad(merge.starlight_loss, argnums=1)(batch_loss, p, stacked, k_s, batch)
      u, o = star_opt.update(g, o, p)
      p = jax.tree.map(lambda new, old: jnp.where(s < n, new, old), optax.apply_updates(p, u), p)
      return (p, o), loss
    (p, o), losses = jax.lax.scan(body, (star, opt_state), jnp.arange(config.rematch_every))
    return p, o, losses

  alphas = jnp.linspace(0.0, 1.0, config.num_alphas)
  barriers = jax.jit(lambda c, ms: jax.vmap(lambda m: merge.interpolation_curve(test_loss, c, m, alphas)[1])(ms))
  stack = lambda ms: jax.tree.map(lambda *x: jnp.stack(x), *ms)
  per_seed = []
  for si, seed in enumerate(config.seeds):
    all_params = [jax.tree.map(lambda x, i=i: x[si * n_models + i], states.params) for i in range(n_models)]
    sources, held_out = all_params[:config.num_sources], all_params[config.num_sources:]
    spec = merge.mlp_spec(sources[0])
    align = lambda ref, models_: [merge.apply_permutation(spec, merge.weight_matching(seed, spec, ref, m), m)
                                  for m in models_]
    star, key = sources[0], jax.random.key(seed + 1000)
    opt_state = star_opt.init(star)
    for phase, start in enumerate(range(0, star_steps, config.rematch_every)):
      n = min(config.rematch_every, star_steps - start)
      star, opt_state, losses = star_phase(star, opt_state, stack(align(star, sources)),
                                           jax.random.fold_in(key, phase), n)
      ctx.log(start + config.rematch_every, {"seed": seed, "starlight_loss": losses.mean()})
    star_b = np.asarray(barriers(star, stack(align(star, held_out))))
    source_b = np.asarray(barriers(sources[0], stack(align(sources[0], held_out))))
    per_seed.append({"star_barrier": float(star_b.mean()), "source_barrier": float(source_b.mean()),
                     "star_acc": float(test_acc(star)), "source_acc": float(np.mean([test_acc(s) for s in sources])),
                     "source_1_acc": float(test_acc(sources[0]))})
  ps = {k: [p[k] for p in per_seed] for k in per_seed[0]}
  m = {k: float(np.mean(v)) for k, v in ps.items()}
  sd = {k: float(np.std(v)) for k, v in ps.items()}
  claim = lambda barrier, acc: bool(barrier <= 0.5 * m["source_barrier"] and acc >= m["source_acc"] - 0.01)
  holds = claim(m["star_barrier"], m["star_acc"])
  control = claim(m["source_barrier"], m["source_1_acc"])  # an ordinary solution (source 1) in the star's place
  if not ctx.quiet:
    for k in ps:
      ctx.print(f"{k:>16s} {m[k]:.4f} +- {sd[k]:.4f}  per seed {np.round(ps[k], 4).tolist()}")
  return {
      "claim": {"passed": holds and not control, "holds": holds, "control_passes": control, "vacuous": control,
                "statement": CLAIM, **m, "std_over_seeds": sd},
      "per_seed": ps,
      "seconds": time.time() - t0,
  }
