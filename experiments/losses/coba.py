"""CoBa: convergence balancer for multi-task training (Gong et al., EMNLP 2024, arXiv:2410.06741),
catalogue [118].

Three regression tasks share a tanh trunk. After ``drift_step`` the *training* targets of task 2 drift away from the
truth (a per-example offset growing linearly in time), so its clean validation loss starts to rise: the divergence
CoBa is built to catch. Every step CoBa sees the three validation losses and returns the task weights for the next
step; the baseline uses equal weights 1/K. Seeds are vmapped.

    paperlab run experiments/losses/coba.py --config.num_steps=3000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import losses

PAPER_ID = 118
CLAIM = ("When one of three tasks starts to diverge (its training targets drift after step 500), CoBa's weight on it "
         "falls below 1/K within 200 steps (mean weight over the rest of the run <= 0.8/K), and the worst task's "
         "final validation loss is <= equal weighting's.")

K = 3


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.dim = 8
  c.width = 16
  c.n_train = 2048
  c.n_val = 512
  c.noise = 0.1
  c.num_steps = 1000
  c.drift_step = 500
  c.drift_rate = 1e-2  # offset per step, times a fixed N(0, 1) direction per example
  c.batch_size = 128
  c.learning_rate = 3e-3
  c.warmup_steps = 100
  c.history_length = 200
  c.tau = 5.0
  c.detect_within = 200
  return c


def _data(config, key):
  kw, kx, kv, kn, kz = jax.random.split(key, 5)
  w = jax.random.normal(kw, (config.dim, K)) / jnp.sqrt(config.dim)

  def targets(x, k):
    return jnp.tanh(x @ w) * 2.0 + config.noise * jax.random.normal(k, (x.shape[0], K))

  x = jax.random.normal(kx, (config.n_train, config.dim))
  xv = jax.random.normal(kv, (config.n_val, config.dim))
  return x, targets(x, kn), xv, targets(xv, jax.random.fold_in(kn, 1)), jax.random.normal(kz, (config.n_train,))


def _init(key, config):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (config.dim, config.width)) / jnp.sqrt(config.dim), "b1": jnp.zeros(config.width),
          "w2": jax.random.normal(k2, (config.width, K)) / jnp.sqrt(config.width), "b2": jnp.zeros(K)}


def _task_losses(p, x, y):
  pred = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
  return jnp.mean((pred - y) ** 2, axis=0)  # [K]


def _train(config, key, use_coba: bool):
  x, y, xv, yv, drift_dir = _data(config, jax.random.fold_in(key, 7))
  params = _init(key, config)
  opt = optax.adam(config.learning_rate)
  balancer = losses.coba(K, warmup_steps=config.warmup_steps, history_length=config.history_length, tau=config.tau)

  def step(carry, t):
    p, s, bal, w = carry
    idx = jax.random.randint(jax.random.fold_in(key, t), (config.batch_size,), 0, x.shape[0])
    offset = config.drift_rate * jnp.maximum(t - config.drift_step, 0) * drift_dir[idx]
    yb = y[idx].at[:, 2].add(offset)
    g = jax.grad(lambda p: losses.weighted_sum(_task_losses(p, x[idx], yb), w))(p)
    u, s = opt.update(g, s, p)
    p = optax.apply_updates(p, u)
    val = _task_losses(p, xv, yv)
    new_w, bal = balancer.update(val, bal)
    w = new_w if use_coba else w
    return (p, s, bal, w), (val, w)

  carry = (params, opt.init(params), balancer.init(), jnp.full((K,), 1.0 / K))
  _, (val, weights) = jax.lax.scan(step, carry, jnp.arange(config.num_steps))
  return val, weights


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  keys = jax.random.split(jax.random.key(0), config.seeds)
  out = {}
  for name, use_coba in (("equal", False), ("coba", True)):
    val, weights = jax.jit(jax.vmap(lambda k: _train(config, k, use_coba)))(keys)
    out[name] = (np.asarray(val), np.asarray(weights))
    v, w = out[name][0].mean(0), out[name][1].mean(0)
    for s in range(0, config.num_steps, max(1, config.num_steps // 20)):
      ctx.log(s, {f"{name}/val_loss": v[s].tolist(), f"{name}/weights": w[s].tolist()})

  w_drift = out["coba"][1][:, :, 2]  # [seeds, steps]
  pre = float(w_drift[:, config.drift_step - config.detect_within:config.drift_step].mean())
  post = float(w_drift[:, config.drift_step + config.detect_within:].mean())
  tail = slice(config.num_steps - 50, config.num_steps)
  worst = {name: float(out[name][0][:, tail].mean(1).max(1).mean()) for name in out}
  passed = post <= 0.8 / K and worst["coba"] <= worst["equal"]
  return {
      "claim": {"passed": bool(passed), "statement": CLAIM, "drifting_task_weight_before": pre,
                "drifting_task_weight_after": post,
                "coba_final_worst_val_loss": worst["coba"], "equal_final_worst_val_loss": worst["equal"],
                "coba_final_weights": out["coba"][1][:, -1].mean(0).tolist()},
      "final_val_losses": {name: out[name][0][:, tail].mean((0, 1)).tolist() for name in out},
  }
