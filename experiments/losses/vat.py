"""Virtual adversarial training for semi-supervised two-moons (Miyato et al., 2018, arXiv:1704.03976),
catalogue [218].

10 labelled points (5 per class) and 1000 unlabelled ones from ``sklearn.datasets.make_moons(noise=0.1)``; an MLP
2-64-64-2 is trained with cross-entropy on the labelled points only, or with cross-entropy plus the VAT penalty
(alpha=1, epsilon=0.3, K=1 power iteration) on all points. Seeds are vmapped.

The catalogue's setting, compared through the shared protocol (:mod:`paperlab.runner.protocol`: one fixed point
per arm, so the same budget; 3 seeds; the test split read once per arm; the claim judged on seed means; control: the
supervised-only MLP passed as the method must fail the claim).

Measured (seeds 0-2): test accuracy VAT 0.9957 +- 0.0014 (0.9940/0.9955/0.9975) vs supervised-only 0.8823 +-
0.0022 (0.8795/0.8825/0.8850): +0.113, above 0.95; the control (supervised passed as VAT) fails.

    paperlab run experiments/losses/vat.py --config.num_steps=4000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from sklearn.datasets import make_moons

from paperlab import losses, papers
from paperlab.runner import protocol

PAPER_ID = 218
CLAIM = papers.get(PAPER_ID).claim  # the catalogue's claim line, tested as stated
DEVIATIONS = ()


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.num_labelled_per_class = 5
  c.num_unlabelled = 1000
  c.noise = 0.1
  c.widths = (64, 64)
  c.num_steps = 2000
  c.unlabelled_batch = 256
  c.learning_rate = 1e-3
  c.epsilon = 0.3
  c.xi = 1e-6
  c.alpha = 1.0
  c.scale = 1  # multiplies num_steps
  return c


def _data(config):
  x, y = make_moons(n_samples=config.num_unlabelled, noise=config.noise, random_state=0)
  x_test, y_test = make_moons(n_samples=2000, noise=config.noise, random_state=1)
  mean, std = x.mean(0), x.std(0)
  x, x_test = (x - mean) / std, (x_test - mean) / std
  rng = np.random.default_rng(0)
  lab = np.concatenate([rng.choice(np.where(y == c)[0], config.num_labelled_per_class, replace=False) for c in (0, 1)])
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  return f32(x[lab]), jnp.asarray(y[lab], jnp.int32), f32(x), f32(x_test), jnp.asarray(y_test, jnp.int32)


def _init(key, widths):
  sizes = (2, *widths, 2)
  keys = jax.random.split(key, len(sizes) - 1)
  return [{"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)}
          for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def _apply(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _train(config, key, data, use_vat: bool):
  x_lab, y_lab, x_unl, x_test, y_test = data
  params = _init(key, tuple(config.widths))
  opt = optax.adam(config.learning_rate)

  def loss_fn(params, t):
    ce = jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(_apply(params, x_lab), y_lab))
    if not use_vat:
      return ce
    k_batch, k_vat = jax.random.split(jax.random.fold_in(key, t))
    xb = x_unl[jax.random.randint(k_batch, (config.unlabelled_batch,), 0, x_unl.shape[0])]
    xb = jnp.concatenate([x_lab, xb])
    lds = losses.vat_loss(lambda z: _apply(params, z), xb, k_vat, epsilon=config.epsilon, xi=config.xi)
    return ce + config.alpha * jnp.mean(lds)

  def step(carry, t):
    params, state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, t)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), loss

  (params, _), curve = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(config.num_steps * config.scale))
  acc = jnp.mean(jnp.argmax(_apply(params, x_test), -1) == y_test)
  return acc, curve


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  data = _data(config)

  def fit(arm, hparams, seeds):
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    acc, curve = jax.jit(jax.vmap(lambda k: _train(config, k, data, arm.name == "vat")))(keys)
    curve = np.asarray(curve).mean(0)
    for s in range(0, len(curve), max(1, len(curve) // 10)):
      ctx.log(int(s), {f"{arm.name}/train_loss": float(curve[s])})
    return {"test_accuracy": np.asarray(acc)}

  comparison = protocol.compare([protocol.Arm("supervised"), protocol.Arm("vat")], range(config.seeds), fit,
                                validate=lambda out: np.zeros(config.seeds),  # one point per arm: nothing to pick
                                test=lambda out: out)
  verdict = comparison.judge(
      lambda m, b: m["test_accuracy"] >= 0.95 and m["test_accuracy"] >= b["test_accuracy"] + 0.08,
      method="vat", baseline="supervised")
  sup, vat = comparison["supervised"].mean("test_accuracy"), comparison["vat"].mean("test_accuracy")
  ctx.print(f"test accuracy: supervised {sup:.4f}, VAT {vat:.4f}")
  return {
      "claim": {**verdict, "statement": CLAIM, "vat_test_accuracy": vat, "supervised_test_accuracy": sup},
      "per_seed": {name: arm.test["test_accuracy"].tolist() for name, arm in comparison.arms.items()},
      "protocol": comparison.to_json(),
  }
