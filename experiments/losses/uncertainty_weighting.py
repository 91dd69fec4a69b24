"""Homoscedastic uncertainty weighting vs equal weighting (Kendall et al., 2018, arXiv:1705.07115), catalogue [133].

The catalogue's setting: a shared 2-layer tanh trunk (16 -> 32 -> 32) with two linear regression heads on
``paperlab.data.multitask_toy``'s two regression tasks, whose targets carry noise sigma=0.1 (task 1) and
sigma=3.0 (task 2). 2000 Adam steps on minibatches of 128 from 1024 training points, with the equal-weight sum
``L_1 + L_2`` and with uncertainty weighting (``0.5 exp(-s_i) L_i + 0.5 s_i``, the log-variances ``s_i`` trained
by the same optimizer). Compared through the shared protocol (:mod:`paperlab.runner.protocol`): each arm picks its
Adam learning rate from the same grid (1e-3, 3e-3, 1e-2) on the validation mean over tasks of log MSE (a
unit-free score, so neither task's units decide), 3 seeds, the test split read once per arm. The claim: exp(s_i)
within 25% of each task's residual training MSE, task-1 test MSE <= 0.7x equal weighting's and task-2 test MSE
<= 1.1x. Control: equal weighting passed as the method must fail (its s_i stay at 0).

Measured (seeds 0-2; both arms chose lr 1e-3): task-1 test MSE UW 0.0216 +- 0.0028 vs equal 0.0677 +- 0.0097
(ratio 0.32 <= 0.7), task-2 12.31 +- 0.10 vs 13.69 +- 0.33 (ratio 0.90 <= 1.1), but exp(s_i) / residual training
MSE is 8.9 +- 1.5 (task 1) and 0.74 +- 0.02 (task 2): at the learning rate chosen on validation the log-variances
have not reached the residual MSE after 2000 steps (Adam moves s_1 by about lr per step, and s_1 must fall from 0
to log 0.003), so the claim as a whole does not reproduce. At lr 1e-2 for both arms (not chosen: validation score
worse for both) the variances track (1.06, 1.23) and the MSE ratios are 0.65 and 1.00, while task 2 overfits (test
MSE 18.8 vs noise variance 9). The earlier record used noise 0.1/1.0 (10x, not 30x), added a classification task
and dropped the task-1 <= 0.7x check.

CI scale (CI_CONFIG): the learning-rate grid cut to (1e-3, 3e-3), both arms chose 1e-3 at the full scale, so every
choice and number is the record's; at it: task-1 MSE ratio 0.32, task-2 0.90, exp(s)/residual MSE 8.9 and 0.74 (seeds
0-2, not reproduced, as the record), 17.5 CPU-s (31.2 with one program per grid point; both measured side by side
under heavy load, the numbers bit-identical): each arm compiles one program, the learning rate its argument. 1000 steps
break the MSE half (task-2 ratio 1.39 > 1.1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import data, losses, papers
from paperlab.runner import protocol

PAPER_ID = 133
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()
CI_CONFIG = {"learning_rates": (1e-3, 3e-3)}  # the grid points the arms chose at the full scale

TASKS = ("reg_a", "reg_b")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.width = 32
  c.num_steps = 2000
  c.batch_size = 128
  c.learning_rates = (1e-3, 3e-3, 1e-2)
  c.n_train = 1024
  c.n_val = 1024
  c.n_test = 1024
  c.noise_scales = (0.1, 3.0)
  c.task1_ratio = 0.7
  c.task2_ratio = 1.1
  c.variance_tolerance = 0.25
  return c


def init_params(key, d_in: int, width: int) -> dict:
  k1, k2, k3 = jax.random.split(key, 3)
  dense = lambda k, a, b: {"w": jax.random.normal(k, (a, b)) / jnp.sqrt(a), "b": jnp.zeros(b)}
  return {"trunk": [dense(k1, d_in, width), dense(k2, width, width)], "heads": dense(k3, width, len(TASKS)),
          "log_vars": losses.init_log_vars(TASKS)}


def task_mse(params, x, y) -> dict:
  h = x
  for layer in params["trunk"]:
    h = jnp.tanh(h @ layer["w"] + layer["b"])
  out = h @ params["heads"]["w"] + params["heads"]["b"]
  return {t: jnp.mean((out[:, i] - y[t]) ** 2) for i, t in enumerate(TASKS)}


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  mt = data.multitask_toy(n_train=config.n_train, n_test=config.n_val + config.n_test,
                          noise_scales=tuple(config.noise_scales), seed=0)
  as_jnp = lambda x, y, sl: (jnp.asarray(x[sl]), {t: jnp.asarray(y[t][sl]) for t in TASKS})
  train_split = as_jnp(mt.x_train, mt.y_train, slice(None))
  val_split = as_jnp(mt.x_test, mt.y_test, slice(None, config.n_val))
  test_split = as_jnp(mt.x_test, mt.y_test, slice(config.n_val, None))
  objectives = {
      "equal": lambda p, batch: losses.weighted_sum(task_mse(p, *batch)),
      "uw": lambda p, batch: losses.uncertainty_weighted(task_mse(p, *batch), p["log_vars"])[0],
  }

  # One program per arm: the learning rate is an argument, so the grid's points reuse it instead of recompiling.
  @functools.partial(jax.jit, static_argnums=0)
  def trials(name, keys, lr):
    objective, opt = objectives[name], optax.adam(lr)
    x, y = train_split

    def trial(key):
      params = init_params(key, x.shape[1], config.width)

      def step(carry, t):
        params, state = carry
        idx = jax.random.randint(jax.random.fold_in(key, t), (config.batch_size,), 0, x.shape[0])
        loss, grads = jax.value_and_grad(objective)(params, (x[idx], jax.tree.map(lambda a: a[idx], y)))
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

      (params, _), curve = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(config.num_steps))
      return params, curve

    return jax.vmap(trial)(keys)

  def fit(arm, hparams, seeds):
    params, curves = trials(arm.name, jax.vmap(jax.random.key)(jnp.asarray(seeds)), jnp.float32(hparams["lr"]))
    ctx.log_curve(f"{arm.name}/lr={hparams['lr']}/train_loss", np.asarray(curves).mean(0),
                  every=max(config.num_steps // 10, 1))
    return params

  evaluate = jax.jit(jax.vmap(task_mse, (0, None, None)))

  def validate(params):
    mse = evaluate(params, *val_split)
    return np.mean([np.log(np.asarray(mse[t])) for t in TASKS], axis=0)

  def test(params):
    mse, train_mse = evaluate(params, *test_split), evaluate(params, *train_split)
    variance_ratio = {f"variance_over_train_mse_{t}": np.exp(np.asarray(params["log_vars"][t])) / train_mse[t]
                      for t in TASKS}
    return {**{f"test_mse_{t}": mse[t] for t in TASKS}, **variance_ratio}

  grid = [{"lr": lr} for lr in config.learning_rates]
  comparison = protocol.compare([protocol.Arm("equal", grid), protocol.Arm("uw", grid)], range(config.seeds), fit,
                                validate=validate, test=test, maximize=False)
  for name in ("equal", "uw"):
    arm = comparison[name]
    ctx.print(f"{name} (lr {arm.chosen['lr']}): " + ", ".join(
        f"{k} {arm.mean(k):.4g} +- {arm.std(k):.2g}" for k in arm.test))

  def claim(m, b):
    tracks = all(abs(m[f"variance_over_train_mse_{t}"] - 1) <= config.variance_tolerance for t in TASKS)
    return (tracks and m["test_mse_reg_a"] <= config.task1_ratio * b["test_mse_reg_a"]
            and m["test_mse_reg_b"] <= config.task2_ratio * b["test_mse_reg_b"])

  verdict = comparison.judge(claim, method="uw", baseline="equal")
  uw, equal = comparison["uw"].means(), comparison["equal"].means()
  return {
      **{name: {k: np.asarray(v).tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
      "claim": {**verdict, "statement": CLAIM,
                "task1_mse_ratio": uw["test_mse_reg_a"] / equal["test_mse_reg_a"],
                "task2_mse_ratio": uw["test_mse_reg_b"] / equal["test_mse_reg_b"],
                "variance_over_train_mse": {t: uw[f"variance_over_train_mse_{t}"] for t in TASKS}},
  }
