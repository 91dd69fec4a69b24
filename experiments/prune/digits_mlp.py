"""The pre-trained DIGITS-MLP substrate shared by the one-shot pruning analyses (gradient-free structured pruning
[83], oracle pruning [87], essential sparsity [64], lottery jackpots [91]) and the iso-FLOP comparison [90].

scikit-learn digits split 70 / 15 / 15 (:func:`paperlab.runner.digits_splits.fit_val_test`); a ReLU MLP
``64 -> widths -> 10`` initialised as :class:`paperlab.models.MLP` and held as a list of ``{"kernel", "bias"}``
layers (hidden layers then the head), so that structured pruning can shrink it; Adam, batch 64, vmapped over seeds.
Not an experiment itself (no ``PAPER_ID``): the reproductions load it with ``load_experiment``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from paperlab import models
from paperlab.runner import digits_splits

__all__ = ["splits", "init_layers", "forward", "cross_entropy", "accuracy", "train", "pretrain"]


def get_config():  # load_experiment requires one; this module is a substrate, not a reproduction
  raise NotImplementedError("digits_mlp.py is the shared DIGITS-MLP substrate of experiments/prune, not a run.")


def splits() -> tuple:
  """``((x, y), (x_val, y_val), (x_test, y_test))``."""
  return digits_splits.fit_val_test()


def init_layers(key: jax.Array, widths, num_classes: int = 10) -> list:
  """The initial parameters of ``models.MLP(64, widths, num_classes)`` as ``[{"kernel", "bias"}, ...]``."""
  p = nnx.to_pure_dict(nnx.split(models.MLP(64, list(widths), num_classes, rngs=nnx.Rngs(key)))[1])
  return [dict(p["hidden"][i]) for i in range(len(widths))] + [dict(p["head"])]


def forward(layers: list, x: jax.Array) -> jax.Array:
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  return x @ layers[-1]["kernel"] + layers[-1]["bias"]


def cross_entropy(layers: list, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(forward(layers, x), y).mean()


def accuracy(layers: list, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(forward(layers, x), -1) == y)


def train(layers, key, x, y, *, epochs: int, learning_rate=1e-3, batch_size: int = 64, masks=None,
          loss: Callable = cross_entropy):
  """Adam on minibatches (a fresh permutation per epoch); pruned weights held at zero when ``masks`` is given.
  Traceable: call it inside ``jit`` / ``vmap``."""
  per_epoch = x.shape[0] // batch_size
  adam = optax.chain(optax.scale_by_adam(), optax.scale(-learning_rate))
  from paperlab import prune  # pylint: disable=g-import-not-at-top
  tx = adam if masks is None else optax.chain(adam, prune.keep_pruned_zero(masks))
  order = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), x.shape[0])[:per_epoch * batch_size])(
      jnp.arange(epochs)).reshape(-1, batch_size)

  def step(carry, idx):
    p, s = carry
    u, s = tx.update(jax.grad(loss)(p, x[idx], y[idx]), s, p)
    return (optax.apply_updates(p, u), s), None

  return jax.lax.scan(step, (layers, tx.init(layers)), order)[0][0]


@functools.partial(jax.jit, static_argnames=("widths", "epochs", "learning_rate"))
def _pretrain(keys, x, y, *, widths, epochs, learning_rate):
  return jax.vmap(lambda k: train(init_layers(k, widths), k, x, y, epochs=epochs, learning_rate=learning_rate))(keys)


def pretrain(seeds, widths, x, y, *, epochs: int, learning_rate: float = 1e-3) -> list:
  """The dense pre-trained layers of every seed, stacked on a leading seed axis (one vmapped program, compiled
  once per shape and setting: data of the same shape reuse it)."""
  keys = jax.vmap(jax.random.key)(jnp.asarray(list(seeds)))
  return _pretrain(keys, x, y, widths=tuple(int(w) for w in widths), epochs=int(epochs),
                   learning_rate=float(learning_rate))
