"""The LR-annealing scaling law predicts an unseen schedule (Tissue et al., 2024, arXiv:2408.11029), catalogue [21].

Setting (the catalogue's): an MLP (16-128-128-1, ReLU) regresses a random one-hidden-layer tanh teacher
(``paperlab.data.teacher_student``: d_in 16, teacher width 32, label noise 0.1, 32768 training points), plain SGD
with batch 16, 3000 steps, peak LR 0.1, under three schedules: constant, cosine (to 1% of peak) and WSD (constant,
then a linear 20% cooldown to 1% of peak, ``paperlab.optim.wsd_schedule``). The loss curve is the held-out MSE
(1024 points) every 20 steps. ``L(s) = L0 + A S1**-alpha - C S2`` (lam 0.999) is fitted on the constant and cosine
curves of each seed only (``paperlab.scaling.fit_lr_annealing``) and predicts the whole WSD curve.

Protocol (:mod:`paperlab.runner.protocol`): arms ``annealing_law`` (the method) and ``forward_area_only`` (the same
law without the annealing term, ``L0 + A S1**-alpha``, fitted on the same curves: the baseline and control), one
point each, 3 seeds; the WSD curve is the test split, read once per arm. Claim on seed means: WSD final-loss
relative error < 3% and curve MAPE < 5%. The control (the forward-area-only law in the method's place) must fail.

Measured (seeds 0-2): WSD final-loss relative error 0.084 (per seed 0.099/0.086/0.065) > 0.03, WSD curve MAPE
0.0485 (0.049/0.048/0.049) < 0.05; forward-area-only control 0.092 and 0.052. Final held-out MSE: constant
0.0288, cosine 0.0323, WSD 0.0279 (seed means). Not reproduced: in this setting the cosine run ends *worse* than
the constant one (its early decay costs more progress than its annealing gains), so the fit on constant + cosine
puts C at ~0 and cannot foresee WSD's cooldown drop (measured 0.0306 -> 0.0279). Settings tried before this one,
all failing the 3% final-loss bound: label noise 0.3 with 4096 training points (the held-out loss of the constant
run rises: over-fitting, which the law has no term for; final error 0.041, MAPE 0.029), batch 4 at LR 0.05
(0.040, 0.048), LR 0.03 (C = 0 again); LR 0.2 or batch 4 at LR 0.1 diverge.

    paperlab run experiments/scaling/lr_annealing.py --config.num_steps=6000
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from paperlab import data, models, optim, papers, scaling, train
from paperlab.runner import protocol

PAPER_ID = 21
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.num_steps = 3000
  c.peak_lr = 0.1
  c.final_ratio = 0.01
  c.decay_fraction = 0.2
  c.batch_size = 16
  c.width = 128
  c.eval_every = 20
  c.n_train = 32768
  c.noise = 0.1
  c.lam = 0.999
  return c


def _schedules(config) -> dict:
  T, peak = config.num_steps, config.peak_lr
  t = jnp.arange(T)
  wsd = optim.wsd_schedule(peak, T, decay_fraction=config.decay_fraction, final_value_ratio=config.final_ratio)
  return {"constant": jnp.full((T,), peak, jnp.float32),
          "cosine": jax.vmap(optax.cosine_decay_schedule(peak, T, alpha=config.final_ratio))(t).astype(jnp.float32),
          "wsd": jax.vmap(wsd)(t).astype(jnp.float32)}


def _train_curves(config, seeds) -> dict:
  """Held-out MSE every ``eval_every`` steps, for every schedule and seed: name -> (num_seeds, num_evals)."""
  ds = data.teacher_student(n_train=config.n_train, n_test=1024, d_in=16, teacher_width=32, noise=config.noise,
                            seed=0)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  model_fn = lambda rngs: models.MLP(16, [config.width, config.width], 1, rngs=rngs)
  graphdef, init = train.make_init(model_fn, optax.identity())
  mse = lambda state, params, xb, yb: jnp.mean((train.predict(graphdef, state._replace(params=params), xb) - yb) ** 2)
  schedules = _schedules(config)
  k = config.eval_every

  @jax.jit
  @functools.partial(jax.vmap, in_axes=(0, None))  # seeds
  @functools.partial(jax.vmap, in_axes=(None, 0))  # schedules
  def run(key, lrs):
    state = init(key)
    data_key = jax.random.fold_in(key, 1)

    def step(state, i):
      idx = jax.random.randint(jax.random.fold_in(data_key, i), (config.batch_size,), 0, x.shape[0])
      grads = jax.grad(lambda p: mse(state, p, x[idx], y[idx]))(state.params)
      return state._replace(params=jax.tree.map(lambda p, g: p - lrs[i] * g, state.params, grads)), None

    def block(state, j):  # k steps, then the held-out loss
      state, _ = jax.lax.scan(step, state, j * k + jnp.arange(k))
      return state, mse(state, state.params, xt, yt)

    _, losses = jax.lax.scan(block, state, jnp.arange(config.num_steps // k))
    return losses

  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
  names = list(schedules)
  out = np.asarray(run(keys, jnp.stack([schedules[n] for n in names])), np.float64)  # (seeds, schedules, evals)
  return {n: out[:, i] for i, n in enumerate(names)}, {n: np.asarray(v, np.float64) for n, v in schedules.items()}


def _forward_area_only_fit(steps, lrs, losses, lam):
  """``L0 + A S1**-alpha`` (C = 0) fitted on the same points: ``fit_power_law`` on S1."""
  s1 = np.concatenate([np.asarray(scaling.lr_areas(jnp.asarray(lr, jnp.float32), lam)[0], np.float64)[s]
                       for s, lr in zip(steps, lrs)])
  return scaling.fit_power_law(s1, np.concatenate(losses))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  cache = {}
  eval_steps = np.arange(config.eval_every - 1, config.num_steps, config.eval_every)

  def fit(arm, hparams, seeds):
    del hparams
    key = tuple(int(s) for s in seeds)
    if key not in cache:
      cache[key] = _train_curves(config, seeds)
      curves, _ = cache[key]
      for i in range(0, len(eval_steps), 15):
        ctx.log(int(eval_steps[i]), {f"{n}/test_mse": float(c[:, i].mean()) for n, c in curves.items()})
    curves, lrs = cache[key]
    out = {"wsd_final_rel_err": [], "wsd_mape": [], "fit_mape": [], "params": []}
    for i in range(len(seeds)):
      fit_steps, fit_lrs = [eval_steps, eval_steps], [lrs["constant"], lrs["cosine"]]
      fit_losses = [curves["constant"][i], curves["cosine"][i]]
      if arm.name == "annealing_law":
        law = scaling.fit_lr_annealing(fit_steps, fit_lrs, fit_losses, lam=config.lam)
        pred = lambda lr, law=law: scaling.predict_curve(law, lr, eval_steps)
      else:
        law = _forward_area_only_fit(fit_steps, fit_lrs, fit_losses, config.lam)
        pred = lambda lr, law=law: np.asarray(scaling.power_law(
            np.asarray(scaling.lr_areas(jnp.asarray(lr, jnp.float32), config.lam)[0], np.float64)[eval_steps],
            law["a"], law["b"], law["c"]))
      wsd, p = curves["wsd"][i], pred(lrs["wsd"])
      out["wsd_final_rel_err"].append(abs(p[-1] - wsd[-1]) / wsd[-1])
      out["wsd_mape"].append(float(np.mean(np.abs(p - wsd) / wsd)))
      seen = np.concatenate(fit_losses)
      out["fit_mape"].append(float(np.mean(np.abs(np.concatenate([pred(l) for l in fit_lrs]) - seen) / seen)))
      out["params"].append(dict(law.params))
    return out

  comparison = protocol.compare(
      [protocol.Arm("annealing_law"), protocol.Arm("forward_area_only")], range(config.seeds), fit,
      validate=lambda out: -np.asarray(out["fit_mape"]),  # one point per arm: nothing to pick
      test=lambda out: {k: np.asarray(out[k]) for k in ("wsd_final_rel_err", "wsd_mape", "fit_mape")})
  verdict = comparison.judge(lambda m, b: m["wsd_final_rel_err"] < 0.03 and m["wsd_mape"] < 0.05,
                             method="annealing_law", baseline="forward_area_only")
  for name, arm in comparison.arms.items():
    ctx.print(f"{name}: WSD final rel. err {arm.mean('wsd_final_rel_err'):.4f}, "
              f"WSD MAPE {arm.mean('wsd_mape'):.4f}, fit MAPE {arm.mean('fit_mape'):.4f}")
  curves, _ = cache[tuple(range(config.seeds))]
  results = {name: {k: np.asarray(v).tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["protocol"] = comparison.to_json()
  results["final_test_mse"] = {n: c[:, -1].tolist() for n, c in curves.items()}
  results["claim"] = {**verdict, "statement": CLAIM,
                      "wsd_final_rel_err": comparison["annealing_law"].mean("wsd_final_rel_err"),
                      "wsd_mape": comparison["annealing_law"].mean("wsd_mape"),
                      "wsd_final_rel_err_per_seed": comparison["annealing_law"].test["wsd_final_rel_err"].tolist(),
                      "wsd_mape_per_seed": comparison["annealing_law"].test["wsd_mape"].tolist(),
                      "baseline_wsd_final_rel_err": comparison["forward_area_only"].mean("wsd_final_rel_err"),
                      "baseline_wsd_mape": comparison["forward_area_only"].mean("wsd_mape")}
  return results
