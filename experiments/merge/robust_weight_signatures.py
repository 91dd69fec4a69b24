"""Robust weight signatures: the first-layer part of a robust fine-tune's weight delta is a removable robustness
patch (Cai, Zhang and Wang, "Robust Weight Signatures: Gaining Robustness as Easy as Patching Weights?",
arXiv:2302.12480).

Per seed (vmapped): an MLP 64-128-128-10 is trained on clean standardized digits (the clean model ``theta_c``),
then fine-tuned from ``theta_c`` on Gaussian-noise-corrupted inputs ``x + sigma * N(0, I)`` with fresh noise per
batch (the robust model ``theta_r``). The signature is ``merge.weight_signature(theta_c, theta_r,
include="^hidden/0/")`` (first Dense layer, kernel and bias), stored with ``merge.quantize_delta`` at 8 bits, and
patched with ``merge.apply_task_vector(theta_c, rws, 1.0)``. Accuracies are on the test split, clean and with one
fixed draw of the same noise.

Claim (catalogue [3], tested as stated, no deviation): the first-layer patch recovers >= 70% of the full delta's
gain in noisy-test accuracy, ``(acc_n(patch) - acc_n(clean)) / (acc_n(robust) - acc_n(clean))`` (on seed means),
costs <= 3 points of clean-test accuracy against the clean model, and the first layer holds a larger fraction of
``||theta_r - theta_c||^2`` than its fraction of the parameters. The 8-bit signature (``merge.quantize_delta``) is
reported beside the float patch, and patch removal (``scale=-1``) restoring the clean model is checked. Control: a
patch that does nothing (the clean model itself) must fail the claim (it does: recovery 0).

Nine seeds, not three: the recovery is seed-sensitive and close to the 70% bar (an earlier record passed on seeds
0-2 alone, at 0.753, while seeds 3-5 gave 0.609 and 6-8 0.708), so the claim is judged on all nine.

Measured (sigma 1.0, seeds 0-8, ~28 s on one core): noisy-test gain of the full delta +6.8 points, of the
first-layer patch +4.6: recovery 0.684 (per seed 1.00/0.71/0.56/0.52/0.60/0.68/0.78/0.58/0.75, std 0.14), below the
0.70 bar; clean cost 0.00 points; first layer 43.6% of ||delta||^2 vs 31.9% of the parameters; the 8-bit patch
gives the same accuracies. Not reproduced, narrowly: the energy concentration and the free clean accuracy hold on
every seed, the 70% recovery only on four of nine.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, merge, models, papers, train

PAPER_ID = 3
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2, 3, 4, 5, 6, 7, 8)  # nine: the recovery is seed-sensitive (see the module docstring)
  c.widths = (128, 128)
  c.sigma = 1.0
  c.batch_size = 64
  c.clean_steps = 1000
  c.clean_lr = 1e-3
  c.robust_steps = 1000
  c.robust_lr = 1e-3
  c.include = "^hidden/0/"
  c.bits = 8
  c.min_recovery = 0.7
  c.max_clean_cost = 0.03
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  t0 = time.time()
  ds = data.digits(seed=0)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  xt_noisy = xt + config.sigma * jax.random.normal(jax.random.key(12345), xt.shape)
  sigma = float(config.sigma)
  widths = list(config.widths)
  model_fn = lambda r: models.MLP(64, widths, 10, rngs=r)

  def noisy_loss(model, batch, rng):
    bx, by = batch
    return train.classification_loss(model, (bx + sigma * jax.random.normal(rng, bx.shape), by), rng)

  clean_opt, robust_opt = optax.adam(config.clean_lr), optax.adam(config.robust_lr)
  graphdef, init = train.make_init(model_fn, clean_opt)
  clean_step = train.make_train_step(graphdef, train.classification_loss, clean_opt)
  robust_step = train.make_train_step(graphdef, noisy_loss, robust_opt)
  bs = config.batch_size

  def trial(key):
    k_init, k_clean, k_robust = jax.random.split(key, 3)
    state, clean_m = train.run_steps(clean_step, init(k_init), (x, y), k_clean, batch_size=bs,
                                     num_steps=config.clean_steps)
    rstate = train.TrainState(jnp.zeros((), state.step.dtype), state.params, state.model_state,
                              robust_opt.init(state.params))
    rstate, robust_m = train.run_steps(robust_step, rstate, (x, y), k_robust, batch_size=bs,
                                       num_steps=config.robust_steps)
    clean, robust = state.params, rstate.params
    full = merge.task_vector(clean, robust)
    rws = merge.weight_signature(clean, robust, include=config.include)
    rws_q = merge.dequantize_delta(merge.quantize_delta(rws, config.bits), like=rws)
    patched = merge.apply_task_vector(clean, rws_q, 1.0)
    removed = merge.apply_task_vector(patched, rws_q, -1.0)
    acc = lambda p, xs: train.evaluate(graphdef, state._replace(params=p), xs, yt)["accuracy"]
    nets = {"clean": clean, "robust": robust, "patch": patched,
            "patch_fp32": merge.apply_task_vector(clean, rws, 1.0)}
    accs = {f"{n}/{split}": acc(p, xs) for n, p in nets.items() for split, xs in (("clean", xt), ("noisy", xt_noisy))}
    energy, share = merge.delta_energy_share(full, include=config.include)
    removal_err = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in zip(jax.tree.leaves(removed),
                                                                          jax.tree.leaves(clean))]))
    return accs, energy, share, removal_err, clean_m["loss"], robust_m["loss"]

  keys = jnp.stack([jax.random.key(s) for s in config.seeds])
  accs, energy, share, removal_err, clean_loss, robust_loss = jax.jit(jax.vmap(trial))(keys)
  ctx.log_curve("clean_train_loss", np.asarray(clean_loss).mean(0), every=100)
  ctx.log_curve("robust_train_loss", np.asarray(robust_loss).mean(0), every=100)
  accs = {k: np.asarray(v) for k, v in accs.items()}
  gain_full = accs["robust/noisy"] - accs["clean/noisy"]
  gain = {n: accs[f"{n}/noisy"] - accs["clean/noisy"] for n in ("patch", "patch_fp32", "clean")}
  cost = {n: accs["clean/clean"] - accs[f"{n}/clean"] for n in gain}
  energy_m, share_m = float(np.mean(energy)), float(share[0])
  removal = float(np.max(removal_err))

  def verdict(name):  # on seed means: the patch's share of the full delta's noisy gain, its clean cost, the energy
    recovery = float(gain[name].mean() / gain_full.mean())
    return recovery, bool(recovery >= config.min_recovery and float(cost[name].mean()) <= config.max_clean_cost
                          and energy_m > share_m and gain_full.mean() > 0)

  recovery, holds = verdict("patch_fp32")  # the catalogue's first-layer patch
  recovery_8bit, holds_8bit = verdict("patch")
  _, control = verdict("clean")  # control: a patch that does nothing (the clean model) must fail
  clean_cost = float(cost["patch_fp32"].mean())
  mean = {k: float(v.mean()) for k, v in accs.items()}
  ctx.log(config.robust_steps, {**mean, "recovery": recovery, "clean_cost": clean_cost,
                                "first_layer_energy_share": energy_m, "first_layer_param_share": share_m})
  if not ctx.quiet:
    for k, v in mean.items():
      ctx.print(f"{k:>18s} {v:.4f}  per seed {np.round(accs[k], 4).tolist()}")
    ctx.print(f"recovery {recovery:.3f} (per seed {np.round(gain['patch_fp32'] / gain_full, 3).tolist()}), clean "
              f"cost {clean_cost * 100:.2f}pt, first-layer ||delta||^2 share {energy_m:.3f} vs param share "
              f"{share_m:.3f}")
  return {
      "claim": {"passed": bool(holds and not control), "holds": holds, "control_passes": control, "vacuous": control,
                "statement": CLAIM, "recovery": recovery, "min_recovery": config.min_recovery,
                "recovery_std_over_seeds": float(np.std(gain["patch_fp32"] / gain_full)),
                "clean_cost": clean_cost, "max_clean_cost": config.max_clean_cost,
                "first_layer_energy_share": energy_m, "first_layer_param_share": share_m,
                "noisy_gain_full": float(gain_full.mean()), "noisy_gain_patch": float(gain["patch_fp32"].mean()),
                "recovery_8bit": recovery_8bit, "holds_8bit": holds_8bit,
                "patch_removal_max_abs_error": removal},
      "accuracy": mean,
      "accuracy_per_seed": {k: v.tolist() for k, v in accs.items()},
      "recovery_per_seed": (gain["patch_fp32"] / gain_full).tolist(),
      "first_layer_energy_share_per_seed": np.asarray(energy).tolist(),
      "seconds": time.time() - t0,
  }
