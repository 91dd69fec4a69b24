"""Hypothesis properties of paperlab.prune: pruned weights stay exactly zero through adam(w) with weight decay
under keep_pruned_zero, and N:M masks are valid (exactly n kept per group of m) for any shape and values."""

from __future__ import annotations

import jax
import numpy as np
import optax
from hypothesis import given, settings, strategies as st

import paperlab.prune as pr


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), s=st.floats(0.0, 0.95), lr=st.floats(1e-4, 1.0), wd=st.floats(0.0, 1.0),
       steps=st.integers(1, 4))
def test_pruned_weights_stay_exactly_zero_through_adamw(seed, s, lr, wd, steps):
  k = jax.random.split(jax.random.key(seed), 3)
  params = {"w": jax.random.normal(k[0], (8, 6)), "b": jax.random.normal(k[1], (6,))}
  masks = pr.magnitude_masks(params, s)
  params = pr.apply_masks(params, masks)
  tx = optax.chain(optax.adamw(lr, weight_decay=wd), pr.keep_pruned_zero(masks))
  state = tx.init(params)
  for t in range(steps):
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(k[2], t), x.shape), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  w, m = np.asarray(params["w"]), np.asarray(masks["w"])
  assert np.all(w[~m] == 0.0)
  assert int((~m).sum()) == round(s * 48)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), groups=st.sampled_from([1, 3]), cols=st.sampled_from([1, 4]), nm=st.sampled_from(
    [(2, 4), (1, 4), (4, 8), (1, 2), (0, 3), (3, 3)]))
def test_nm_mask_is_valid(seed, groups, cols, nm):
  n, m = nm
  w = jax.random.normal(jax.random.key(seed), (groups * m, cols))
  mask = np.asarray(pr.nm_masks({"w": w}, n, m)["w"])
  g = mask.reshape(groups, m, cols)
  assert np.all(g.sum(1) == n)
  a = np.abs(np.asarray(w)).reshape(groups, m, cols)
  assert np.all(np.where(g, a, np.inf).min(1) >= np.where(g, -np.inf, a).max(1))
