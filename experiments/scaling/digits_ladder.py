"""The DIGITS-MLP ladder shared by the scaling-law transfer reproductions: loss-to-loss prediction [136], over-training
and loss -> error [244], task ladders [156].

ReLU MLPs ``64 -> h -> h -> 10`` (kernels N(0, 1/fan_in), zero biases) on scikit-learn digits (pixels in [0, 1], split
70 / 15 / 15: fit / validation / test, stratified, seed 0), one rung per width ``h`` and training-set size ``n`` (the
first ``n`` of a fixed shuffle of the fit split; ``D = n``), Adam at a fixed learning rate for a fixed number of
steps (minibatches sampled with replacement); every width, seed and data size in one ``jit(vmap(vmap(vmap(...))))``
program (a width-h rung is a width-max network with its extra units at zero, which stay zero). Each rung is scored
at the end on the validation split, the test split, and a shifted copy of the test split (each image blurred by the
3x3 binomial kernel, then i.i.d. Gaussian pixel noise of std ``noise`` from a fixed seed): the "noise + blur"
distribution of the catalogue's [136] setting. Trained once per process and configuration (``functools.lru_cache``),
so the three reproductions share one ladder (~16 CPU-s).

Not an experiment itself (no ``PAPER_ID``): the reproductions load it with ``load_experiment``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab import data
from paperlab.runner.trainer import FAST_COMPILE_CPU

__all__ = ["DEFAULTS", "ladder", "shift"]

DEFAULTS = {"widths": (8, 16, 32, 64, 128), "data_fractions": (0.25, 0.5, 1.0), "seeds": 3, "num_steps": 400,
            "batch_size": 32, "learning_rate": 3e-3, "noise": 0.25}


def get_config():  # load_experiment requires one; this module is a substrate, not a reproduction
  raise NotImplementedError("digits_ladder.py is the shared DIGITS-MLP ladder of experiments/scaling, not a run.")


def shift(x: np.ndarray, noise: float, seed: int = 0) -> np.ndarray:
  """Blur each 8x8 image with the 3x3 binomial kernel (zero padding), then add N(0, noise^2) pixel noise."""
  img = np.pad(np.asarray(x, np.float32).reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
  k = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
  out = sum(k[i, j] * img[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3))
  rng = np.random.default_rng(seed)
  return (out.reshape(-1, 64) + noise * rng.standard_normal((len(out), 64))).astype(np.float32)


def _splits():
  ds = data.digits(test_fraction=0.15, seed=0, standardize=False)
  fit, val = data.stratified_split(ds.y_train, 0.15 / 0.85, seed=0)
  order = np.random.default_rng(0).permutation(len(fit))
  fit = np.asarray(fit)[order]
  return (ds.x_train[fit], ds.y_train[fit]), (ds.x_train[val], ds.y_train[val]), (ds.x_test, ds.y_test)


@functools.lru_cache(maxsize=2)
def _train(key: str) -> dict:
  c = json.loads(key)
  (x, y), (xv, yv), (xt, yt) = _splits()
  sizes = [int(round(f * len(x))) for f in c["data_fractions"]]
  evals = {"val": (xv, yv), "test": (xt, yt), "shift": (shift(xt, c["noise"]), yt)}
  evals = {k: (jnp.asarray(a), jnp.asarray(b)) for k, (a, b) in evals.items()}
  x, y = jnp.asarray(x), jnp.asarray(y)
  keys = jax.vmap(jax.random.key)(jnp.arange(c["seeds"]))
  adam = optax.adam(c["learning_rate"])
  H = max(c["widths"])

  def init(key, h):
    # every width lives in a width-H network whose units >= h are zero: their weights get zero gradients (no path
    # to or from them), so Adam keeps them at zero and the program trains exactly the width-h MLP. Kernels
    # N(0, 1 / fan_in) with the real fan-in, biases zero.
    m = (jnp.arange(H) < h).astype(jnp.float32)
    k1, k2, k3 = jax.random.split(key, 3)
    return [{"kernel": jax.random.normal(k1, (64, H)) / 8.0 * m, "bias": jnp.zeros(H)},
            {"kernel": jax.random.normal(k2, (H, H)) / jnp.sqrt(h) * m[:, None] * m, "bias": jnp.zeros(H)},
            {"kernel": jax.random.normal(k3, (H, 10)) / jnp.sqrt(h) * m[:, None], "bias": jnp.zeros(10)}]

  def forward(p, xb):
    for layer in p[:-1]:
      xb = jax.nn.relu(xb @ layer["kernel"] + layer["bias"])
    return xb @ p[-1]["kernel"] + p[-1]["bias"]

  def ce(p, xb, yb):
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(forward(p, xb), yb))

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE_CPU)
  @functools.partial(jax.vmap, in_axes=(None, 0, None))  # widths
  @functools.partial(jax.vmap, in_axes=(0, None, None))  # seeds
  @functools.partial(jax.vmap, in_axes=(None, None, 0))  # data sizes
  def run(key, h, n):
    params = init(key, h)

    def step(carry, i):
      params, opt = carry
      idx = jax.random.randint(jax.random.fold_in(key, i), (c["batch_size"],), 0, n)
      upd, opt = adam.update(jax.grad(ce)(params, x[idx], y[idx]), opt, params)
      return (optax.apply_updates(params, upd), opt), None

    (params, _), _ = jax.lax.scan(step, (params, adam.init(params)), jnp.arange(c["num_steps"]))
    metrics = {}
    for name, (xe, ye) in evals.items():
      z = forward(params, xe)
      metrics[f"{name}_loss"] = jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(z, ye))
      metrics[f"{name}_err"] = 1.0 - jnp.mean(jnp.argmax(z, -1) == ye)
    return metrics

  out = jax.tree.map(np.asarray, run(keys, jnp.asarray(c["widths"], jnp.int32), jnp.asarray(sizes, jnp.int32)))
  counts = [64 * h + h + h * h + h + h * 10 + 10 for h in c["widths"]]
  result = {k: np.swapaxes(v, 0, 1).astype(np.float64) for k, v in out.items()}  # (seeds, widths, sizes)
  result.update(num_params=np.asarray(counts, np.float64), data_sizes=np.asarray(sizes, np.float64),
                widths=np.asarray(c["widths"]))
  return result


def ladder(**overrides: Any) -> dict:
  """The trained ladder: ``{val,test,shift}_{loss,err}`` of shape ``(seeds, widths, data sizes)``, ``num_params``
  ``(widths,)`` (all MLP parameters), ``data_sizes`` and ``widths``; trained once per configuration."""
  unknown = set(overrides) - set(DEFAULTS)
  if unknown:
    raise ValueError(f"unknown ladder settings {sorted(unknown)}; accepted {sorted(DEFAULTS)}.")
  c = {**DEFAULTS, **overrides}
  return _train(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in c.items()}, sort_keys=True))
