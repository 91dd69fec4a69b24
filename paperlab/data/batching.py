"""Jittable mini-batch sampling over in-memory arrays."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


def sample_batch(key: jax.Array, data, batch_size: int):
  """Uniformly sample ``batch_size`` examples (with replacement) from a pytree of arrays sharing axis 0.

  Pure and jittable; ``batch_size`` is static.

  Raises:
    ValueError: ``batch_size`` is not a positive integer, ``data`` holds no array, an empty one, or arrays whose
      leading axes differ.
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("data must hold at least one array.")
  if any(getattr(leaf, "ndim", 0) < 1 for leaf in leaves):
    raise ValueError(f"every array in data needs a leading example axis; got {[jnp.shape(l) for l in leaves]}.")
  n = leaves[0].shape[0]
  if any(leaf.shape[0] != n for leaf in leaves):
    raise ValueError(f"every array in data must share its leading axis; got {[l.shape for l in leaves]}.")
  if n == 0:
    raise ValueError("data holds no examples (leading axis of length 0).")
  idx = jax.random.randint(key, (batch_size,), 0, n)
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)


def epoch_permutation(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """Index array ``(num_batches, batch_size)`` of one shuffled epoch (the incomplete last batch is dropped)."""
  if batch_size < 1 or batch_size > num_examples:
    raise ValueError(f"batch_size must lie in [1, {num_examples}], got {batch_size}.")
  num_batches = num_examples // batch_size
  perm = jax.random.permutation(key, num_examples)[: num_batches * batch_size]
  return perm.reshape(num_batches, batch_size)


def _batches_per_epoch(num_examples: int, batch_size: int) -> int:
  per_epoch = num_examples // batch_size
  if per_epoch < 1:
    raise ValueError(f"batch_size must lie in [1, {num_examples}], got {batch_size}.")
  return per_epoch


def _epoch_order(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
  """The shuffled example order of epoch ``epoch``: the one rule shared by :func:`batch_at` and
  :func:`batch_indices`."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def batch_at(data, step: jax.Array, key: jax.Array, batch_size: int):
  """The ``step``-th mini-batch of a sequence of shuffled epochs, as a pure function of ``(step, key)``.

  Epoch ``e = step // batches_per_epoch`` is a permutation seeded by ``fold_in(key, e)``, so a resumed run
  that knows only its step sees exactly the batches an uninterrupted run would. Each call shuffles its whole
  epoch (O(N)); a loop over many steps can take its indices from :func:`batch_indices` instead, which
  shuffles once per epoch and gives the same batches.
  """
  n = jax.tree.leaves(data)[0].shape[0]
  per_epoch = _batches_per_epoch(n, batch_size)
  epoch, pos = jnp.divmod(step, per_epoch)
  perm = _epoch_order(key, epoch, n)
  idx = jax.lax.dynamic_slice(perm, (pos * batch_size,), (batch_size,))
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)


def batch_indices(key: jax.Array, start: jax.Array, num_steps: int, num_examples: int, batch_size: int
                  ) -> jax.Array:
  """Example indices ``(num_steps, batch_size)`` of :func:`batch_at`'s batches for steps ``start, start + 1, ...``.

  Row ``i`` equals the indices ``batch_at(data, start + i, key, batch_size)`` takes, bit for bit, but each
  epoch touched is shuffled once instead of once per step: a ``lax.scan`` over steps can take its batches as
  ``jnp.take(x, idx[i], axis=0)``. ``start`` may be traced; ``num_steps``, ``num_examples`` and ``batch_size``
  are static. Memory is about twice the output's.
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
  per_epoch = _batches_per_epoch(num_examples, batch_size)
  start = jnp.asarray(start)
  first = start // per_epoch
  num_epochs = (num_steps + per_epoch - 2) // per_epoch + 1  # the most epochs num_steps consecutive steps touch
  orders = jax.vmap(lambda e: _epoch_order(key, first + e, num_examples))(jnp.arange(num_epochs))
  batches = orders[:, :per_epoch * batch_size].reshape(num_epochs, per_epoch, batch_size)
  epoch, pos = jnp.divmod(start + jnp.arange(num_steps), per_epoch)
  return batches[epoch - first, pos]
