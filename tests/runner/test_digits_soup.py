"""paperlab.runner.digits_soup: the DIGITS-SOUP split and pre-trained bases shared by the soup-family experiments."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from paperlab.runner.digits_soup import digits_soup


def test_split_is_disjoint_stratified_and_deterministic():
  a, b = digits_soup(seed=0), digits_soup(seed=0)
  assert a.fit[0].shape[0] + a.val[0].shape[0] == 1347 and a.test[0].shape == (450, 64)
  np.testing.assert_array_equal(a.val[1], b.val[1])
  assert set(np.unique(np.asarray(a.val[1]))) == set(range(10))


def test_pretrain_stacks_bases_and_moves_them():
  soup = digits_soup(width=16)
  inits, bases = soup.pretrain(jax.random.key(0), 2, fraction=0.3, steps=5, batch_size=32)
  assert jax.tree.leaves(bases)[0].shape[0] == 2
  first = lambda t: jax.tree.map(lambda a: a[0], t)
  assert not np.allclose(jax.tree.leaves(first(inits))[0], jax.tree.leaves(first(bases))[0])
  acc = soup.accuracy_fn()
  assert 0.0 <= float(acc(first(bases), *soup.test)) <= 1.0


@pytest.mark.parametrize("kwargs", [{"num": 0}, {"num": 2, "fraction": 0.0}])
def test_pretrain_rejects_bad_arguments(kwargs):
  soup = digits_soup(width=8)
  kwargs = {"fraction": 0.3, **kwargs}
  with pytest.raises(ValueError, match="num|fraction"):
    soup.pretrain(jax.random.key(0), kwargs.pop("num"), steps=1, batch_size=8, **kwargs)
