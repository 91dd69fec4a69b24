"""paperlab.analysis.grokking: the catalogue's properties of Softmax Collapse, StableMax and the orthogonal gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import analysis


def test_float32_cross_entropy_collapses_at_a_logit_gap_of_20_but_stablemax_does_not():
  logits = jnp.array([[20.0, 0.0, 0.0], [1.0, 0.0, 0.0]], jnp.float32)
  labels = jnp.array([0, 0])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  assert float(ce[0]) == 0.0 and float(ce[1]) > 0
  assert float(analysis.softmax_collapse_fraction(logits, labels)) == 0.5
  assert float(analysis.softmax_collapse_fraction(logits * 0.5, labels)) == 0.0  # a gap of 10 does not collapse
  assert float(analysis.softmax_collapse_fraction(logits * 0.5, labels, dtype=jnp.float16)) == 0.5  # float16 does
  sm = analysis.stablemax_cross_entropy(logits, labels)
  assert float(sm[0]) > 0 and np.all(np.isfinite(sm))
  # the correct-class gradient vanishes under collapse (float32) but not under StableMax
  g_ce = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels[:1]).sum())(logits[:1])
  g_sm = jax.grad(lambda z: analysis.stablemax_cross_entropy(z, labels[:1]).sum())(logits[:1])
  assert float(jnp.abs(g_ce[0, 0])) == 0.0 and float(jnp.abs(g_sm[0, 0])) > 0


def test_stablemax_is_a_distribution_monotone_in_the_logits():
  z = jax.random.normal(jax.random.key(0), (64, 7)) * 5
  p = jax.jit(analysis.stablemax)(z)
  np.testing.assert_allclose(jnp.sum(p, -1), 1.0, rtol=1e-6)
  assert bool(jnp.all(p > 0))
  bumped = analysis.stablemax(z.at[:, 2].add(0.5))
  assert bool(jnp.all(bumped[:, 2] > p[:, 2]))
  np.testing.assert_allclose(jnp.exp(analysis.log_stablemax(z)), p, rtol=1e-5)
  # s is continuous with a continuous slope at 0
  eps = 1e-3
  s = analysis.stablemax_s(jnp.array([-eps, 0.0, eps]))
  np.testing.assert_allclose(s, [1 / (1 + eps), 1.0, 1 + eps], rtol=1e-6)


def test_orthogonal_gradient_is_orthogonal_to_the_weights_and_keeps_the_norm():
  k = jax.random.split(jax.random.key(1), 4)
  params = {"w": jax.random.normal(k[0], (5, 4)), "b": jax.random.normal(k[1], (4,))}
  grads = {"w": jax.random.normal(k[2], (5, 4)), "b": jax.random.normal(k[3], (4,))}
  tx = analysis.orthogonal_gradient()
  out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for name in params:
    w, g, o = params[name].ravel(), grads[name].ravel(), out[name].ravel()
    assert abs(float(jnp.vdot(w, o) / (jnp.linalg.norm(w) * jnp.linalg.norm(o)))) < 1e-6
    np.testing.assert_allclose(jnp.linalg.norm(o), jnp.linalg.norm(g), rtol=1e-5)
  raw, _ = analysis.orthogonal_gradient(renormalize=False).update(grads, (), params)
  w, g = params["w"].ravel(), grads["w"].ravel()
  np.testing.assert_allclose(raw["w"].ravel(), g - jnp.vdot(w, g) / jnp.vdot(w, w) * w, rtol=1e-5, atol=1e-6)
  chained = optax.chain(analysis.orthogonal_gradient(), optax.adam(1e-3))
  chained.update(grads, chained.init(params), params)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="labels"):
    analysis.stablemax_cross_entropy(jnp.ones((3, 4)), jnp.zeros((4,), jnp.int32))
  with pytest.raises(TypeError, match="labels"):
    analysis.softmax_collapse_fraction(jnp.ones((3, 4)), jnp.zeros((3,)))
  with pytest.raises(TypeError, match="dtype"):
    analysis.softmax_collapse_fraction(jnp.ones((3, 4)), jnp.zeros((3,), jnp.int32), dtype=jnp.int32)
  with pytest.raises(ValueError, match="params"):
    analysis.orthogonal_gradient().update({"w": jnp.ones(2)}, ())
  with pytest.raises(TypeError, match="renormalize"):
    analysis.orthogonal_gradient(renormalize=1)
