"""SWA (Izmailov et al., arXiv:1803.05407), catalogue [46]: averaging the SGD iterates of a constant high learning
rate tail beats the run's last iterate, matches an equal-budget step-decay run, sits in a flatter region, and with
BatchNorm needs its statistics recomputed.

The catalogue's setting on digits (validation split carved out of the training split, stratified):
- arms, compared through :mod:`paperlab.runner.protocol` (3 seeds, each arm's learning rate picked on validation
  from the same 3-point grid, the test split read once per arm, the claim judged on seed means):
  ``swa``: an MLP 64-128-128-10 trained by SGD (momentum 0.9) at a constant learning rate for ``epochs``; the last
  25% of the epochs are the SWA phase, an average (``paperlab.merge.swa_update``) of the iterate at every epoch end;
  ``step_decay``: the same network, steps and batches with the learning rate divided by 10 at 50% and again at 75%;
- flatness: the mean rise of the training loss along 10 random unit directions (global norm 1) at radius
  ``radius``, for the SWA average and for the step-decay solution (the same directions);
- the BatchNorm variant (the MLP with BatchNorm after each hidden layer), trained like the ``swa`` arm at its chosen
  learning rate: the average evaluated with its statistics recomputed (``paperlab.merge.bn_update``, one pass over
  the fit inputs) and with the last iterate's running statistics.
Claim: SWA test acc >= its last iterate + 1pt and >= step decay - 0.5pt, SWA's loss rise < step decay's, and with
BatchNorm acc(SWA + bn_update) >= acc(SWA without update) + 2pt. Control: the step-decay arm passed as the method
(its last iterate is itself) must fail.

Measured (seeds 0-2, 40 epochs; both arms pick lr 0.1 on validation): SWA 97.33% +- 0.79 test, its last iterate
97.33% (+0.0 points; per seed identical: 98.0/97.8/96.2), step decay 97.19% (SWA - step decay +0.15 >= -0.5: holds);
loss rise at r=2 3.4e-5 vs 4.9e-5 (holds, also at r=5: 3.4e-4 vs 4.9e-4 and r=10: 7.1e-3 vs 8.4e-3); BatchNorm
variant: SWA + bn_update 98.15% vs without the update 98.22% (-0.07 points, the catalogue asks +2). On clean digits
the MLP fits the training split within a few epochs, so the constant-LR tail barely moves and its average is its last
iterate: the catalogue's claim does not reproduce. The earlier record passed only with 20% label noise (not in the
catalogue), without the step-decay baseline and the flatness check, and with the BatchNorm threshold relaxed from +2
points to >= 0 (+1.0 measured there).

CI scale (CI_CONFIG): 12 epochs (SWA phase the last 3); at it: not reproduced either, SWA 96.81% vs its last
iterate 96.89% (-0.07 points), step decay 96.59% and flatness (loss rise 8.1e-5 vs 2.2e-4) hold, bn_update +0.00
points, seeds 0-2, ~76 CPU-s under heavy load (4 engineers on 2 cores; mostly compiling, 20 epochs: ~80).
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
from paperlab.runner import protocol

PAPER_ID = 46
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()

CI_CONFIG = {"epochs": 12}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.width = 128
  c.val_fraction = 0.2
  c.batch_size = 64
  c.epochs = 40
  c.swa_fraction = 0.25  # the catalogue's last 25% of epochs
  c.momentum = 0.9
  c.lrs = (0.02, 0.05, 0.1)  # each arm's tuning grid (the same budget)
  c.num_directions = 10
  c.radius = 2.0  # the claim's radius (the parameter vector's norm is ~20)
  c.reported_radii = (5.0, 10.0)  # reported beside it, not asserted
  c.margin_last = 0.01
  c.tolerance_step_decay = 0.005
  c.bn_gain = 0.02
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits(seed=0)
  tr, va = data.stratified_split(ds.y_train, config.val_fraction, 0)
  fit_data = (jnp.asarray(ds.x_train[tr]), jnp.asarray(ds.y_train[tr]))
  val_data = (jnp.asarray(ds.x_train[va]), jnp.asarray(ds.y_train[va]))
  test_data = (jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))
  per_epoch = fit_data[0].shape[0] // config.batch_size
  total = config.epochs * per_epoch
  swa_epochs = int(round(config.swa_fraction * config.epochs))
  start = total - swa_epochs * per_epoch
  nets = {norm: train.make_init(lambda r, norm=norm: models.MLP(64, [config.width] * 2, 10, norm=norm, rngs=r),
                                optax.sgd(0.1, momentum=config.momentum))
          for norm in (None, "batch")}
  batches = [fit_data[0][i:i + 256] for i in range(0, fit_data[0].shape[0], 256)]

  def trajectory(key, lr, *, decay: bool, norm):
    """The final iterate and the SWA average of one run (for ``decay`` the average is unused)."""
    graphdef, init = nets[norm]
    if decay:
      sched = optax.piecewise_constant_schedule(lr, {total // 2: 0.1, (3 * total) // 4: 0.1})
    else:
      sched = lambda step: lr
    opt = optax.sgd(sched, momentum=config.momentum)
    step = train.make_train_step(graphdef, train.classification_loss, opt)
    state = init(key)
    state = state._replace(opt_state=opt.init(state.params))
    data_key = jax.random.fold_in(key, 1)
    run = lambda s, n: train.run_steps(step, s, fit_data, data_key, batch_size=config.batch_size, num_steps=n)[0]
    state = run(state, start)

    def epoch(carry, _):
      state, avg = carry
      state = run(state, per_epoch)
      return (state, merge.swa_update(avg, state.params)), None

    (state, avg), _ = jax.lax.scan(epoch, (state, merge.swa_init(state.params)), None, length=swa_epochs)
    return state, avg.mean

  def accuracy(norm, params, model_state, xy):
    model = nnx.merge(nets[norm][0], params, model_state)
    model.eval()
    return jnp.mean(jnp.argmax(model(xy[0]), -1) == xy[1])

  radii = jnp.asarray((config.radius,) + tuple(config.reported_radii))

  def loss_rises(params, key):
    """Mean training-loss rise along ``num_directions`` random unit directions, at each radius in ``radii``."""
    graphdef = nets[None][0]
    loss = lambda p: train.classification_loss(nnx.merge(graphdef, p, {}), fit_data, key)[0]
    leaves, treedef = jax.tree.flatten(params)

    def direction(k):
      d = treedef.unflatten([jax.random.normal(kk, l.shape) for kk, l in zip(jax.random.split(k, len(leaves)), leaves)])
      return jax.tree.map(lambda a: a / optax.global_norm(d), d)

    directions = jax.vmap(direction)(jax.random.split(jax.random.key(1234), config.num_directions))
    moved = jax.vmap(lambda r: jnp.mean(jax.vmap(lambda d: loss(jax.tree.map(lambda p, u: p + r * u, params, d)))(
        directions)))(radii)
    rises = moved - loss(params)
    return {"loss_rise": rises[0], **{f"loss_rise_r{r:g}": rises[i + 1] for i, r in enumerate(config.reported_radii)}}

  @jax.jit
  @jax.vmap
  def swa_trial(key, lr):
    state, avg = trajectory(key, lr, decay=False, norm=None)
    return {"val": accuracy(None, avg, {}, val_data), "accuracy": accuracy(None, avg, {}, test_data),
            "last_iterate": accuracy(None, state.params, {}, test_data), **loss_rises(avg, key)}

  @jax.jit
  @jax.vmap
  def step_decay_trial(key, lr):
    state, _ = trajectory(key, lr, decay=True, norm=None)
    acc = accuracy(None, state.params, {}, test_data)
    return {"val": accuracy(None, state.params, {}, val_data), "accuracy": acc, "last_iterate": acc,
            **loss_rises(state.params, key)}

  trials = {"swa": swa_trial, "step_decay": step_decay_trial}

  def fit(arm, hp, seeds):
    out = trials[arm.name](jax.vmap(jax.random.key)(jnp.asarray(seeds)), jnp.full(len(seeds), hp["lr"]))
    out = jax.tree.map(np.asarray, out)
    ctx.log(int(hp["lr"] * 1000), {f"{arm.name}/lr{hp['lr']}/val": float(out["val"].mean())})
    return out

  grid = [{"lr": lr} for lr in config.lrs]
  comparison = protocol.compare([protocol.Arm("step_decay", grid), protocol.Arm("swa", grid)], range(config.seeds),
                                fit, validate=lambda out: out["val"],
                                test=lambda out: {k: v for k, v in out.items() if k != "val"})

  # The BatchNorm variant at the swa arm's chosen learning rate.
  lr_swa = comparison["swa"].chosen["lr"]

  @jax.jit
  @jax.vmap
  def bn_trial(key, lr):
    state, avg = trajectory(key, lr, decay=False, norm="batch")
    return avg, state.model_state, accuracy("batch", state.params, state.model_state, test_data)

  keys = jax.vmap(jax.random.key)(jnp.arange(config.seeds))
  avgs, stats, bn_last = bn_trial(keys, jnp.full(config.seeds, lr_swa))
  bn_rows = {"bn_last_iterate": np.asarray(bn_last), "bn_swa_no_update": [], "bn_swa_bn_update": []}
  for s in range(config.seeds):
    avg, st = (jax.tree.map(lambda a, s=s: a[s], t) for t in (avgs, stats))
    recomputed = merge.bn_update(nets["batch"][0], avg, st, batches)
    bn_rows["bn_swa_no_update"].append(float(accuracy("batch", avg, st, test_data)))
    bn_rows["bn_swa_bn_update"].append(float(accuracy("batch", avg, recomputed, test_data)))
  bn_rows = {k: np.asarray(v, float) for k, v in bn_rows.items()}
  bn_gain = bn_rows["bn_swa_bn_update"] - bn_rows["bn_swa_no_update"]

  def claim(m, b):
    return bool(m["accuracy"] >= m["last_iterate"] + config.margin_last
                and m["accuracy"] >= b["accuracy"] - config.tolerance_step_decay and m["loss_rise"] < b["loss_rise"])

  verdict = comparison.judge(claim, method="swa", baseline="step_decay")
  bn_ok = bool(bn_gain.mean() >= config.bn_gain)
  s, d = comparison["swa"], comparison["step_decay"]
  if not ctx.quiet:
    for name in ("swa", "step_decay"):
      a = comparison[name]
      ctx.print(f"{name:>10s} lr {a.chosen['lr']}: test {a.mean('accuracy'):.4f} +- {a.std('accuracy'):.4f}, last "
                f"iterate {a.mean('last_iterate'):.4f}, loss rise {a.mean('loss_rise'):.4f} (val {a.validation})")
    ctx.print("BN variant: " + ", ".join(f"{k} {v.mean():.4f}" for k, v in bn_rows.items()))
  results = {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()}
  results["batchnorm"] = {k: v.tolist() for k, v in bn_rows.items()}
  results["protocol"] = comparison.to_json()
  results["claim"] = {**verdict, "passed": bool(verdict["passed"] and bn_ok), "statement": CLAIM,
                      "swa": s.mean("accuracy"), "last_iterate": s.mean("last_iterate"),
                      "step_decay": d.mean("accuracy"), "loss_rise_swa": s.mean("loss_rise"),
                      "loss_rise_step_decay": d.mean("loss_rise"), "gain_over_last": s.mean("accuracy") -
                      s.mean("last_iterate"), "bn_gain": float(bn_gain.mean()), "bn_gain_per_seed": bn_gain.tolist(),
                      "bn_passed": bn_ok, "swa_step_decay_passed": verdict["passed"]}
  results["seconds"] = time.time() - t0
  return results
