"""Number token loss (Zausinger et al., ICML 2025, arXiv:2411.02083), catalogue [134].

"Digit of a noisy sum": two digits a, b in [0, 9] are observed through Gaussian noise and the model must emit the
token of (a + b) // 2 from a 30-token vocabulary (10 digit tokens at shuffled ids plus 20 word tokens). An MLP is
trained with CE alone and with CE + 0.3 * NTL-WAS; decoding is greedy (argmax over the whole vocabulary).

    paperlab run experiments/losses/number_token.py --config.num_steps=4000

Measured at CI scale (3 seeds): MAE 0.509 (CE) vs 0.505 (CE + 0.3 NTL-WAS), exact match 0.524 vs 0.527; with 100 or
300 training points the MAE ratio is 0.986 / 0.985. NTL helps consistently but only by ~1%, far from the claimed
15%: here the inputs already carry the ordinal structure NTL adds, so CE is close to Bayes-optimal. The test is an
honest strict xfail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from paperlab import losses

PAPER_ID = 134
CLAIM = ("On the noisy digit-sum task, CE + 0.3 NTL-WAS lowers the mean absolute error of the greedily decoded digit "
         "to <= 0.85x CE-only's while exact-match accuracy stays >= CE's - 0.02 (mean over seeds).")

VOCAB = 30


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.n_train = 2000
  c.n_test = 4000
  c.input_noise = 1.0
  c.width = 64
  c.num_steps = 1500
  c.batch_size = 128
  c.learning_rate = 3e-3
  c.lam = 0.3
  c.kind = "was"
  c.scale = 1  # multiplies num_steps
  return c


def _data(n, noise, seed):
  rng = np.random.default_rng(seed)
  a, b = rng.integers(0, 10, n), rng.integers(0, 10, n)
  x = np.stack([a, b], 1) + noise * rng.standard_normal((n, 2))
  x = (x - 4.5) / 3.0
  return jnp.asarray(x, jnp.float32), jnp.asarray((a + b) // 2, jnp.int32)


def _init(key, width):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (2, width)) * jnp.sqrt(2.0 / 2), "b1": jnp.zeros(width),
          "w2": jax.random.normal(k2, (width, VOCAB)) / jnp.sqrt(width), "b2": jnp.zeros(VOCAB)}


def _apply(p, x):
  return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _train(config, key, x, digits, x_test, digits_test, ids, use_ntl: bool):
  labels, labels_test = ids[digits], ids[digits_test]
  values = jnp.arange(10, dtype=jnp.float32)
  opt = optax.adam(config.learning_rate)
  params = _init(key, config.width)

  def loss_fn(p, xb, yb):
    logits = _apply(p, xb)
    if use_ntl:
      per = losses.cross_entropy_plus_number_token_loss(logits, yb, ids, values, lam=config.lam, kind=config.kind)
    else:
      per = optax.losses.softmax_cross_entropy_with_integer_labels(logits, yb)
    return jnp.mean(per)

  def step(carry, t):
    p, s = carry
    idx = jax.random.randint(jax.random.fold_in(key, t), (config.batch_size,), 0, x.shape[0])
    g = jax.grad(loss_fn)(p, x[idx], labels[idx])
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(config.num_steps * config.scale))
  pred_token = jnp.argmax(_apply(params, x_test), -1)
  token_value = jnp.full((VOCAB,), jnp.nan).at[ids].set(values)
  pred_value = token_value[pred_token]
  # a non-number prediction counts as the largest possible error
  abs_err = jnp.where(jnp.isnan(pred_value), 9.0, jnp.abs(pred_value - digits_test))
  return jnp.mean(abs_err), jnp.mean(pred_token == labels_test)


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  x, d = _data(config.n_train, config.input_noise, 0)
  x_test, d_test = _data(config.n_test, config.input_noise, 1)
  ids = jnp.asarray(np.random.default_rng(2).permutation(VOCAB)[:10], jnp.int32)
  keys = jax.random.split(jax.random.key(0), config.seeds)
  out = {}
  for name, use_ntl in (("ce", False), ("ce_ntl", True)):
    mae, acc = jax.jit(jax.vmap(lambda k: _train(config, k, x, d, x_test, d_test, ids, use_ntl)))(keys)
    out[name] = {"mae": float(np.mean(mae)), "exact_match": float(np.mean(acc)),
                 "mae_per_seed": np.asarray(mae).tolist(), "exact_match_per_seed": np.asarray(acc).tolist()}
    ctx.log(0, {f"{name}/test_mae": out[name]["mae"], f"{name}/test_exact_match": out[name]["exact_match"]})
  ratio = out["ce_ntl"]["mae"] / out["ce"]["mae"]
  passed = ratio <= 0.85 and out["ce_ntl"]["exact_match"] >= out["ce"]["exact_match"] - 0.02
  return {"claim": {"passed": bool(passed), "statement": CLAIM, "mae_ratio": ratio, "ce_mae": out["ce"]["mae"],
                    "ntl_mae": out["ce_ntl"]["mae"], "ce_exact_match": out["ce"]["exact_match"],
                    "ntl_exact_match": out["ce_ntl"]["exact_match"]},
          "runs": out}
