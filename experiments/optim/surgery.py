"""Gradient surgery with an EMA (Bloop; Hsieh et al., 2024, arXiv:2402.02998), catalogue [452].

The catalogue's setting: underdetermined linear regression (``n = 20`` equations, ``d = 50`` unknowns) with noisy
minibatches of 5 rows is the main loss; the auxiliary loss ``||w - w0||²`` picks one interpolating solution. The
bilevel solution is ``w* = w0 + X⁺(y - X w0)``. Bloop projects the auxiliary gradient against the EMA of the main
gradients, so it should fit the data and land on ``w*``; adding the losses instead trades data fit for the auxiliary
term, and projecting against the noisy minibatch gradient (EMA decay 0) should land further from ``w*``.

The catalogue fixes neither the learning rate nor lambda; both are shared by every arm (the summed baseline gets the
same lambda, as the claim says, and the same learning rate). They were calibrated on Bloop's main loss (lr 0.02 ->
0.3 leave 7e-3 -> 3e-3 after 5000 steps; lambda 0.05 and 0.015 in this ||.||² convention a floor of 3e-3 and
1.2e-3); the summed loss's main-loss floor is that of its minimiser, which trades data fit for ||w - w0||² at the
ratio lambda, not something its learning rate sets. 3 seeds (a new random problem per seed), claims on seed means.
Control: the claim with the summed loss in Bloop's place, and with Bloop without EMA in Bloop's place, must fail.

Measured (5000 steps, seeds 0-2, mean +- std): Bloop main loss 1.9e-4 +- 2.2e-4, ||w - w*||/||w0 - w*|| 0.016 +-
0.013; summed main loss 0.040 +- 0.014; Bloop without EMA 0.275 from w* (17.7x Bloop's). Reproduced.

    paperlab run experiments/optim/surgery.py --config.num_steps=20000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import optim, papers

PAPER_ID = 452
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.num_equations = 20
  c.dim = 50
  c.batch_size = 5
  c.num_steps = 5000
  c.learning_rate = 1.0  # calibrated: lr 0.02 -> 0.3 leave the main loss at 7e-3 -> 3e-3 after 5000 steps
  c.aux_weight = 0.005  # lambda on ||w - w0||² (calibrated: 0.05 and 0.015 leave a main-loss floor of 3e-3, 1.2e-3)
  c.ema_decay = 0.99
  c.seeds = 3
  c.scale = 1  # multiplies num_steps
  return c


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  num_steps = config.num_steps * config.scale
  n, d, b = config.num_equations, config.dim, config.batch_size

  def problem(key):
    kx, ky, kw = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d)) / np.sqrt(d)
    y = jax.random.normal(ky, (n,))
    w0 = jax.random.normal(kw, (d,))
    w_star = w0 + jnp.linalg.pinv(x) @ (y - x @ w0)
    return x, y, w0, w_star

  def main_loss(w, x, y):
    return 0.5 * jnp.mean(jnp.square(x @ w - y))

  def aux_loss(w, w0):
    return jnp.sum(jnp.square(w - w0))

  def trial(key, method):
    x, y, w0, w_star = problem(key)
    if method == "summed":
      opt = optax.sgd(config.learning_rate)
    else:
      decay = config.ema_decay if method == "bloop" else 0.0
      opt = optim.bloop(config.learning_rate, aux_weight=config.aux_weight, ema_decay=decay)

    def body(carry, step):
      w, s = carry
      rows = jax.random.choice(jax.random.fold_in(key, step), n, (b,), replace=False)
      g_main = jax.grad(main_loss)(w, x[rows], y[rows])
      g_aux = jax.grad(aux_loss)(w, w0)
      if method == "summed":
        u, s = opt.update(g_main + config.aux_weight * g_aux, s, w)
      else:
        u, s = opt.update(g_main, s, w, aux_grads=g_aux)
      w = w + u
      return (w, s), main_loss(w, x, y)

    w = jnp.zeros(d)
    (w, _), curve = jax.lax.scan(body, (w, opt.init(w)), jnp.arange(num_steps))
    return main_loss(w, x, y), jnp.linalg.norm(w - w_star) / jnp.linalg.norm(w0 - w_star), curve

  keys = jax.random.split(jax.random.key(0), config.seeds)
  results = {}
  for method in ("bloop", "bloop_no_ema", "summed"):
    loss, dist, curve = jax.jit(jax.vmap(lambda k: trial(k, method)))(keys)
    curve = np.asarray(curve).mean(axis=0)
    for s in range(0, num_steps, max(1, num_steps // 10)):
      ctx.log(s, {f"{method}/main_loss": float(curve[s])})
    results[method] = {"main_loss": np.asarray(loss).tolist(), "relative_distance_to_w_star": np.asarray(dist).tolist()}
  mean = lambda m, k: float(np.mean(results[m][k]))
  std = lambda m, k: float(np.std(results[m][k]))

  def claim(method, summed, no_ema):
    return bool(mean(method, "main_loss") <= 1e-3 and mean(method, "relative_distance_to_w_star") <= 0.1
                and mean(summed, "main_loss") >= 1e-2
                and mean(no_ema, "relative_distance_to_w_star") >= 2 * mean(method, "relative_distance_to_w_star"))

  holds = claim("bloop", "summed", "bloop_no_ema")
  controls = {"summed_as_bloop": claim("summed", "summed", "bloop_no_ema"),
              "no_ema_as_bloop": claim("bloop_no_ema", "summed", "bloop_no_ema")}
  passed = holds and not any(controls.values())
  results["claim"] = {"passed": bool(passed), "holds": holds, "control_passes": any(controls.values()),
                      "controls": controls, "statement": CLAIM,
                      "std": {m: {k: std(m, k) for k in ("main_loss", "relative_distance_to_w_star")}
                              for m in ("bloop", "bloop_no_ema", "summed")},
                      "bloop_main_loss": mean("bloop", "main_loss"),
                      "bloop_distance": mean("bloop", "relative_distance_to_w_star"),
                      "summed_main_loss": mean("summed", "main_loss"),
                      "no_ema_distance": mean("bloop_no_ema", "relative_distance_to_w_star")}
  return results
