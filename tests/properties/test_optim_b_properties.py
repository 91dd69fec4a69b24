"""Property tests for the momentum, low-rank and gradient-combination optimizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import optim

seeds = st.integers(0, 2**31 - 1)


def _normal(seed, shape, scale=1.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


_grams_update = jax.jit(lambda g, s: optim.scale_by_grams().update(g, s))


@given(seeds, st.integers(1, 6))
def test_grams_direction_never_opposes_the_gradient(seed, steps):
  tx = optim.scale_by_grams()
  params = {"w": jnp.zeros((5, 4))}
  state = tx.init(params)
  for t in range(steps):
    g = {"w": jnp.asarray(_normal(seed + t, (5, 4)))}
    u, state = _grams_update(g, state)
    assert np.all(np.asarray(u["w"]) * np.asarray(g["w"]) >= 0)


@given(seeds, st.floats(1e-3, 1e3))
def test_gravity_zeta_is_bounded_and_odd(seed, scale):
  g = jnp.asarray(_normal(seed, (17,), scale))
  z = optim.gravity_zeta(g)
  assert np.all(np.abs(np.asarray(z)) <= np.abs(np.asarray(g)) * (1 + 1e-6))
  np.testing.assert_allclose(np.asarray(optim.gravity_zeta(-g)), -np.asarray(z), rtol=1e-6)


_config = jax.jit(optim.config_direction)


@given(seeds, st.integers(2, 3))
@settings(max_examples=20)
def test_config_is_conflict_free_with_equal_cosines(seed, m):
  g = _normal(seed, (m, 40))
  g[1] -= 1.5 * g[0]  # make objectives 0 and 1 conflict
  d = np.asarray(_config({"w": jnp.asarray(g)})["w"], np.float64)
  inner = g.astype(np.float64) @ d
  assert np.all(inner > 0)
  cos = inner / np.linalg.norm(g, axis=1) / np.linalg.norm(d)
  np.testing.assert_allclose(cos, cos[0], rtol=1e-3)


_pcgrad = jax.jit(lambda g: optim.pcgrad_direction(g, reduction="sum"))


@given(seeds)
@settings(max_examples=20)
def test_pcgrad_of_two_objectives_does_not_conflict_with_either(seed):
  g = _normal(seed, (2, 30))
  g[1] -= 1.2 * g[0]
  d = np.asarray(_pcgrad({"w": jnp.asarray(g)})["w"])
  assert np.all(g @ d >= -1e-4 * np.linalg.norm(g, axis=1) * np.linalg.norm(d))


@given(seeds, st.integers(1, 5), st.sampled_from(["svd", "random", "columns"]))
@settings(max_examples=20)
def test_split_gradient_is_orthogonal_and_complete(seed, rank, method):
  g = jnp.asarray(_normal(seed, (9, 6)))
  basis = optim.galore_basis(g, rank, method, jax.random.key(seed))
  g_sf, g_free = optim.split_gradient(g, basis)
  np.testing.assert_allclose(np.asarray(g_sf + g_free), np.asarray(g), atol=1e-5)
  assert abs(float(jnp.sum(g_sf * g_free))) <= 1e-4 * float(jnp.sum(g * g))


@given(seeds)
@settings(max_examples=15)
def test_project_out_leaves_no_component_along_u(seed):
  v = {"a": jnp.asarray(_normal(seed, (4, 3))), "b": jnp.asarray(_normal(seed + 1, (3,)))}
  u = {"a": jnp.asarray(_normal(seed + 2, (4, 3))), "b": jnp.asarray(_normal(seed + 3, (3,)))}
  p = optim.project_out(v, u)
  dot = sum(float(jnp.sum(x * y)) for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(u)))
  norm = np.sqrt(sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(v) + jax.tree.leaves(u)))
  assert abs(dot) <= 1e-5 * norm**2
