"""Properties of the projection (AdamP), SAM perturbation and AWP perturbation over random shapes and values."""

from __future__ import annotations

import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings

from paperlab import optim

# A channel needs more than one row to have a gradient orthogonal to it.
SHAPES = st.sampled_from([(3, 4), (7, 2), (2, 2, 3, 5), (3, 3, 2, 4), (2, 6)])


def _arrays(seed, shape, n):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=shape).astype(np.float32)) for _ in range(n)]


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), shape=SHAPES)
def test_projection_removes_radial_part_is_idempotent_and_never_lengthens(seed, shape):
  w, g, u = _arrays(seed, shape, 3)
  w2, g2 = w.reshape(-1, shape[-1]), g.reshape(-1, shape[-1])
  g = (g2 - w2 * jnp.sum(w2 * g2, 0) / jnp.sum(w2 * w2, 0)).reshape(shape)  # scale-invariant gradient
  p, projected = optim.projection_direction(u, g, w)
  assert bool(projected)
  scale = float(jnp.linalg.norm(u)) + 1.0
  assert float(jnp.max(jnp.abs(jnp.sum((w * p).reshape(-1, shape[-1]), 0)))) < 1e-4 * scale
  assert float(jnp.linalg.norm(p)) <= float(jnp.linalg.norm(u)) * (1 + 1e-6)
  p2, _ = optim.projection_direction(p, g, w)
  np.testing.assert_allclose(np.asarray(p2), np.asarray(p), atol=1e-5 * scale)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), shape=SHAPES, rho=st.floats(1e-3, 2.0), adaptive=st.booleans())
def test_sam_perturbation_has_radius_rho_in_its_geometry(seed, shape, rho, adaptive):
  g, w = _arrays(seed, shape, 2)
  e = optim.sam_perturbation({"a": g}, {"a": w}, rho, adaptive=adaptive, eta=0.01)["a"]
  measured = e / (jnp.abs(w) + 0.01) if adaptive else e
  np.testing.assert_allclose(float(jnp.linalg.norm(measured)), rho, rtol=1e-4)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), shape=SHAPES, gamma=st.floats(1e-4, 0.5))
def test_awp_perturbation_is_gamma_times_weight_norm(seed, shape, gamma):
  g, w, b = _arrays(seed, shape, 3)
  bias = b.reshape(-1)[: shape[-1]]
  v = optim.awp_perturbation({"w": g, "b": bias}, {"w": w, "b": bias}, gamma)
  np.testing.assert_allclose(float(jnp.linalg.norm(v["w"])), gamma * float(jnp.linalg.norm(w)), rtol=1e-4)
  assert float(jnp.max(jnp.abs(v["b"]))) == 0.0


@given(max_step=st.floats(1e-4, 1.0), t=st.integers(0, 10**7))
def test_relative_step_is_capped_and_non_increasing(max_step, t):
  s = optim.adafactor_relative_step(max_step)
  assert float(s(t)) <= max_step * (1 + 1e-6)
  assert float(s(t + 1)) <= float(s(t)) * (1 + 1e-6)
