"""Parity of the gradient-combination rules: PCGrad vs ``pytorch_optimizer.PCGrad`` (same random orders), ConFIG
vs the paper's formula written in NumPy with ``np.linalg.lstsq`` on the flattened unit gradients (the official
``conflictfree`` package does exactly this with torch but is not installed here)."""

from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from pytorch_optimizer import PCGrad

from paperlab import optim


def _stacked(m, seed, shift=0.0):
  rng = np.random.default_rng(seed)
  tree = {"conv": rng.normal(size=(m, 3, 3, 2, 4)), "dense": rng.normal(size=(m, 40, 10)),
          "bias": rng.normal(size=(m, 10))}
  tree = {k: (v + shift).astype(np.float32) for k, v in tree.items()}
  return tree


def _flat(tree):
  m = tree["bias"].shape[0]
  return np.concatenate([np.asarray(tree[k]).reshape(m, -1) for k in sorted(tree)], axis=1)


@pytest.mark.parametrize("m,seed,reduction", [(2, 0, "mean"), (3, 1, "sum"), (4, 2, "mean")])
def test_pcgrad_matches_pytorch_optimizer(m, seed, reduction):
  grads = _stacked(m, seed)
  flat = _flat(grads)
  # Make some pairs conflict strongly.
  flat_t = [torch.from_numpy(flat[i].copy()) for i in range(m)]
  flat_t[0] = flat_t[0] - 0.8 * flat_t[1]
  grads_np = {k: v.copy() for k, v in grads.items()}
  for k in grads_np:
    grads_np[k][0] = grads_np[k][0] - 0.8 * grads_np[k][1]
  # pytorch_optimizer shuffles the *list* in place once per objective; replay its permutations.
  random.seed(seed)
  idx = list(range(m))
  orders = []
  for _ in range(m):
    random.shuffle(idx)
    orders.append(list(idx))
  random.seed(seed)
  wrapper = PCGrad(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), reduction=reduction)
  has = [torch.ones_like(g) for g in flat_t]
  want = wrapper.project_conflicting([g.clone() for g in flat_t], has).numpy()
  # random.shuffle of an index list consumes the RNG exactly like the in-place shuffles of the gradient list, so
  # orders[i] is the sequence of objectives that pytorch_optimizer projects objective i against.
  got = optim.pcgrad_direction(grads_np, jnp.asarray(orders), reduction=reduction)
  np.testing.assert_allclose(_flat(jax.tree.map(lambda x: x[None], got))[0], want, rtol=1e-5, atol=1e-5)


def _config_numpy(flat, weights=None):
  """ConFIG (Liu et al. 2025, Eq. 5-6) in float64 NumPy: lstsq on unit vectors, then projection length."""
  g = flat.astype(np.float64)
  units = g / np.linalg.norm(g, axis=1, keepdims=True)
  w = np.ones(len(g)) if weights is None else np.asarray(weights, np.float64)
  direction = np.linalg.lstsq(units, w, rcond=None)[0]
  direction /= np.linalg.norm(direction)
  return np.sum(g @ direction) * direction


@pytest.mark.parametrize("m,seed", [(2, 0), (3, 1), (5, 2)])
def test_config_matches_numpy_lstsq(m, seed):
  grads = _stacked(m, seed)
  got = optim.config_direction(grads)
  want = _config_numpy(_flat(grads))
  np.testing.assert_allclose(_flat(jax.tree.map(lambda x: x[None], got))[0], want, rtol=1e-4, atol=1e-5)


def test_config_two_gradients_with_negative_cosine_and_weights():
  rng = np.random.default_rng(7)
  a = rng.normal(size=1000)
  b = -0.7 * a + 0.5 * rng.normal(size=1000)
  flat = np.stack([a, b]).astype(np.float32)
  assert flat[0] @ flat[1] < 0
  for weights in (None, [1.0, 2.0]):
    got = optim.config_direction({"w": jnp.asarray(flat)}, weights=None if weights is None else jnp.asarray(weights))
    np.testing.assert_allclose(got["w"], _config_numpy(flat, weights), rtol=1e-4, atol=1e-5)
    assert np.all(flat @ np.asarray(got["w"]) > 0)


def test_config_on_3x1000_random_stacks_matches_numpy():
  rng = np.random.default_rng(11)
  for _ in range(5):
    flat = rng.normal(size=(3, 1000)).astype(np.float32)
    got = optim.config_direction({"w": jnp.asarray(flat)})
    np.testing.assert_allclose(got["w"], _config_numpy(flat), rtol=1e-4, atol=1e-5)
