"""Dynamic loss-based sample reweighting, LinUpper strategy (Sow et al., ICLR 2025, arXiv:2502.06733),
catalogue [132].

The paper's linear-regression sanity setting: 20% of the training set are duplicates of a few easy points
(labelled exactly), the rest have heavy-tailed (Student-t) label noise. Minibatch SGD on the squared error with the
plain mean (uniform weighting) vs ``sum_i w_i l_i`` with LinUpper weights (delta=1, r=1), same batches and step
size; we count the steps until the parameter error first falls below a target. Seeds are vmapped.

The catalogue's claim, compared through the shared protocol (:mod:`paperlab.runner.protocol`: one fixed point per
arm (SGD 0.02, batch 64), so the same budget; 16 seeds; the claim judged on the seed mean of the steps to the target
(an earlier version used the median); the steps to a tighter target, 0.05, are recorded beside it). Control: uniform
weighting passed as LinUpper (ratio 1) must fail. The target 0.1 is listed as a deviation (see DEVIATIONS).

Measured (seeds 0-15): mean steps to a relative error of 0.1: uniform 143.4 (135-160), LinUpper 109.3 (99-119),
ratio 0.762 (median ratio 0.765); to 0.05 the ratio is 0.921 (fails the 0.8 bar), and LinUpper's final error floor
is higher (0.059 vs 0.032 after 500 steps): it spends its weight on high-loss, noisy samples.

    paperlab run experiments/losses/sample_reweighting.py --config.seeds=16
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import losses, papers
from paperlab.runner import protocol

PAPER_ID = 132
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = (
    "the target parameter error (relative ||w - w*|| / ||w*|| = 0.1) is not in the catalogue and was chosen by an "
    "earlier version after looking at the claim's metric: the advantage shrinks at tighter targets (at 0.05 the step "
    "ratio is 0.92, which fails the 0.8 bar) and LinUpper's final error floor is higher than uniform's (0.059 vs "
    "0.032)",
)


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 16
  c.dim = 20
  c.n = 4000
  c.duplicate_fraction = 0.2
  c.num_easy = 4
  c.noise_df = 2.0
  c.noise_scale = 0.5
  c.batch_size = 64
  c.learning_rate = 0.02
  c.num_steps = 500
  c.target_error = 0.1  # relative: ||w - w*|| / ||w*||
  c.tight_target_error = 0.05  # recorded beside the claim
  c.strategy = "linupper"
  c.delta = 1.0
  c.temperature = 1.0
  c.scale = 1  # multiplies num_steps
  return c


def _dataset(config, key):
  k_w, k_x, k_e, k_n = jax.random.split(key, 4)
  w_star = jax.random.normal(k_w, (config.dim,))
  n_dup = int(config.duplicate_fraction * config.n)
  x = jax.random.normal(k_x, (config.n - n_dup, config.dim))
  y = x @ w_star + config.noise_scale * jax.random.t(k_n, config.noise_df, (config.n - n_dup,))
  easy = jax.random.normal(k_e, (config.num_easy, config.dim))
  x_easy = jnp.repeat(easy, n_dup // config.num_easy, axis=0)
  return jnp.concatenate([x, x_easy]), jnp.concatenate([y, x_easy @ w_star]), w_star


def _steps_to_target(config, key, reweight: bool):
  x, y, w_star = _dataset(config, key)
  num_steps = config.num_steps * config.scale

  def step(w, t):
    idx = jax.random.randint(jax.random.fold_in(key, t), (config.batch_size,), 0, x.shape[0])
    xb, yb = x[idx], y[idx]

    def objective(w):
      per_example = 0.5 * (xb @ w - yb) ** 2
      if reweight:
        weights = losses.loss_based_weights(per_example, strategy=config.strategy, delta=config.delta,
                                            temperature=config.temperature)
        return losses.apply_weights(per_example, weights)
      return jnp.mean(per_example)

    w = w - config.learning_rate * jax.grad(objective)(w)
    return w, jnp.linalg.norm(w - w_star) / jnp.linalg.norm(w_star)

  _, err = jax.lax.scan(step, jnp.zeros(config.dim), jnp.arange(num_steps))
  def first(target):
    below = err <= target
    return jnp.where(jnp.any(below), jnp.argmax(below) + 1, num_steps + 1)

  return first(config.target_error), first(config.tight_target_error), err


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  def fit(arm, hparams, seeds):
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(jnp.asarray(seeds))
    steps, tight, err = jax.jit(jax.vmap(lambda k: _steps_to_target(config, k, arm.name != "uniform")))(keys)
    curve = np.asarray(err).mean(0)
    for s in range(0, len(curve), max(1, len(curve) // 10)):
      ctx.log(int(s), {f"{arm.name}/param_error": float(curve[s])})
    return {"steps_to_target": np.asarray(steps, float), "steps_to_tight_target": np.asarray(tight, float),
            "final_error": np.asarray(err)[:, -1]}

  comparison = protocol.compare([protocol.Arm("uniform"), protocol.Arm(config.strategy)], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one point per arm: nothing to pick
                                test=lambda out: out)
  num_steps = config.num_steps * config.scale
  verdict = comparison.judge(lambda m, b: m["steps_to_target"] <= 0.8 * b["steps_to_target"], method=config.strategy,
                             baseline="uniform")
  uni, rw = comparison["uniform"], comparison[config.strategy]
  reached = bool(uni.test["steps_to_target"].max() <= num_steps and rw.test["steps_to_target"].max() <= num_steps)
  ratio = rw.mean("steps_to_target") / uni.mean("steps_to_target")
  tight_ratio = rw.mean("steps_to_tight_target") / uni.mean("steps_to_tight_target")
  ctx.print(f"steps to {config.target_error}: uniform {uni.mean('steps_to_target'):.1f}, {config.strategy} "
            f"{rw.mean('steps_to_target'):.1f} (ratio {ratio:.3f}); to {config.tight_target_error}: ratio "
            f"{tight_ratio:.3f}; final error {uni.mean('final_error'):.4f} vs {rw.mean('final_error'):.4f}")
  return {
      "claim": {**verdict, "passed": bool(verdict["passed"] and reached), "every_run_reached_target": reached,
                "statement": CLAIM, "step_ratio": ratio, "tight_target_step_ratio": tight_ratio,
                "uniform_mean_steps": uni.mean("steps_to_target"),
                "reweighted_mean_steps": rw.mean("steps_to_target"),
                "median_step_ratio": float(np.median(rw.test["steps_to_target"])
                                           / np.median(uni.test["steps_to_target"])),
                "uniform_final_error": uni.mean("final_error"), "reweighted_final_error": rw.mean("final_error")},
      "runs": {name: {k: v.tolist() for k, v in arm.test.items()} for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
  }
