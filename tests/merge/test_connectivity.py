"""Linear interpolation, loss barriers, Starlight and the star-domain check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def test_curve_evaluates_the_linear_path_in_the_leaf_dtype():
  a = {"w": jnp.zeros(3, jnp.bfloat16)}
  b = {"w": jnp.ones(3, jnp.bfloat16)}
  seen = []

  def loss(p):
    seen.append(p["w"].dtype)
    return jnp.mean(p["w"].astype(jnp.float32))

  losses, _ = merge.interpolation_curve(loss, a, b, [0.0, 0.25, 1.0])
  np.testing.assert_allclose(losses, [0.0, 0.25, 1.0])
  assert seen == [jnp.bfloat16]


def test_barrier_of_a_double_well_along_the_path():
  # L(w) = (w^2 - 1)^2 has minima at -1 and 1; the path crosses w = 0 with loss 1
  loss = lambda p: (p["w"] ** 2 - 1.0) ** 2
  losses, barrier = jax.jit(lambda a, b: merge.interpolation_curve(loss, a, b))({"w": -1.0}, {"w": 1.0})
  np.testing.assert_allclose(barrier, 1.0, rtol=1e-6)
  np.testing.assert_allclose(losses[0], 0.0)
  _, flat = merge.interpolation_curve(loss, {"w": 1.0}, {"w": 1.0})
  assert float(flat) == 0.0


def test_loss_barrier_subtracts_the_linear_baseline():
  alphas = jnp.linspace(0, 1, 5)
  np.testing.assert_allclose(merge.loss_barrier(1.0 + alphas, alphas), 0.0, atol=1e-7)
  with pytest.raises(ValueError, match="same length"):
    merge.loss_barrier(jnp.zeros(3), jnp.zeros(4))


def test_starlight_loss_with_sources_equal_to_the_star_is_the_plain_loss():
  star = {"w": jnp.array([1.0, 2.0])}
  sources = {"w": jnp.stack([star["w"]] * 3)}
  loss = lambda p, batch: jnp.sum((p["w"] - batch) ** 2)
  batch = jnp.array([0.5, 0.5])
  got = jax.jit(merge.starlight_loss, static_argnums=0)(loss, star, sources, jax.random.key(0), batch)
  np.testing.assert_allclose(got, loss(star, batch), rtol=1e-6)
  g = jax.grad(lambda s: merge.starlight_loss(loss, s, {"w": jnp.zeros((2, 2))}, jax.random.key(1), batch))(star)
  assert np.all(np.isfinite(g["w"]))


def test_star_barriers_are_zero_for_a_convex_loss_and_positive_across_wells():
  loss = lambda p: (p["w"] ** 2 - 1.0) ** 2
  b = merge.star_barriers(loss, {"w": 1.0}, [{"w": 1.0}, {"w": -1.0}])
  assert b.shape == (2,) and float(b[0]) == 0.0 and float(b[1]) > 0.5
  with pytest.raises(ValueError, match="empty"):
    merge.star_barriers(loss, {"w": 1.0}, [])
