"""Jittable mini-batch sampling over in-memory arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_batch(key: jax.Array, data, batch_size: int):
  """Uniformly sample ``batch_size`` examples (with replacement) from a pytree of arrays sharing axis 0.

  Pure and jittable; ``batch_size`` is static.
  """
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("data must hold at least one array.")
  n = leaves[0].shape[0]
  if any(leaf.shape[0] != n for leaf in leaves):
    raise ValueError(f"every array in data must share its leading axis; got {[l.shape for l in leaves]}.")
  idx = jax.random.randint(key, (batch_size,), 0, n)
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)


def epoch_permutation(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """Index array ``(num_batches, batch_size)`` of one shuffled epoch (the incomplete last batch is dropped)."""
  if batch_size < 1 or batch_size > num_examples:
    raise ValueError(f"batch_size must lie in [1, {num_examples}], got {batch_size}.")
  num_batches = num_examples // batch_size
  perm = jax.random.permutation(key, num_examples)[: num_batches * batch_size]
  return perm.reshape(num_batches, batch_size)


def batch_at(data, step: jax.Array, key: jax.Array, batch_size: int):
  """The ``step``-th mini-batch of a sequence of shuffled epochs, as a pure function of ``(step, key)``.

  Epoch ``e = step // batches_per_epoch`` is a permutation seeded by ``fold_in(key, e)``, so a resumed run
  that knows only its step sees exactly the batches an uninterrupted run would.
  """
  n = jax.tree.leaves(data)[0].shape[0]
  per_epoch = n // batch_size
  if per_epoch < 1:
    raise ValueError(f"batch_size must lie in [1, {n}], got {batch_size}.")
  epoch, pos = jnp.divmod(step, per_epoch)
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
  idx = jax.lax.dynamic_slice(perm, (pos * batch_size,), (batch_size,))
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)
