"""Bad input to the data helpers: an error naming the argument, never an empty or silent batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import data


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_sample_batch_rejects_a_batch_size_that_is_not_a_positive_integer(batch_size):
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    data.sample_batch(jax.random.key(0), (jnp.ones((4, 2)), jnp.ones(4)), batch_size)


def test_sample_batch_rejects_data_without_examples():
  with pytest.raises(ValueError, match="no examples"):
    data.sample_batch(jax.random.key(0), (jnp.ones((0, 2)), jnp.ones(0)), 2)
  with pytest.raises(ValueError, match="leading example axis"):
    data.sample_batch(jax.random.key(0), (jnp.ones(()),), 2)


def test_sample_batch_accepts_numpy_integers_and_samples_rows_of_the_data():
  x = jnp.arange(10.0).reshape(5, 2)
  (batch,) = data.sample_batch(jax.random.key(0), (x,), np.int64(3))
  assert batch.shape == (3, 2) and all(any(np.array_equal(row, r) for r in np.asarray(x)) for row in batch)
