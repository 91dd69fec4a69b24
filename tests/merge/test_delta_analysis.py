"""riemann_delta_loss (Tang et al., arXiv:2410.13841): exact on quadratics, converges on smooth losses, tracks
the measured change of small edits, validates its arguments."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def _quadratic(seed: int):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(5, 5)).astype(np.float32)
  h = jnp.asarray(a @ a.T + np.eye(5, dtype=np.float32))
  c = jnp.asarray(rng.normal(size=(5,)).astype(np.float32))

  def loss(p):
    x = jnp.concatenate([p["w"].reshape(-1), p["b"].reshape(-1)])
    return 0.5 * x @ h @ x + c @ x

  def tree(v):
    v = jnp.asarray(v, jnp.float32)
    return {"w": v[:3].reshape(3, 1), "b": v[3:]}

  return loss, tree, rng


@pytest.mark.parametrize("n_points", [1, 3, 8])
def test_exact_on_quadratic_for_any_n_points(n_points):
  loss, tree, rng = _quadratic(0)
  base, delta, edit = (tree(rng.normal(size=5)) for _ in range(3))
  add = lambda a, b: jax.tree.map(jnp.add, a, b)
  exact = loss(add(base, edit)) - loss(add(base, delta))  # the path integral of a quadratic, in closed form
  got = merge.riemann_delta_loss(loss, base, delta, edit, n_points=n_points)
  np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)
  assert abs(float(exact)) > 0.1  # a non-trivial change


def test_converges_on_smooth_nonquadratic_loss():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(40, 6)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 3, size=40))

  def loss(p):
    logits = jnp.tanh(x @ p["w1"]) @ p["w2"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(40), y])

  base = {"w1": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32), "w2": jnp.asarray(rng.normal(size=(8, 3)),
                                                                                         jnp.float32)}
  delta = jax.tree.map(lambda b: jnp.asarray(rng.normal(size=b.shape), jnp.float32), base)
  edit = jax.tree.map(lambda d: -1.5 * d, delta)  # a large edit: the loss is far from quadratic along it
  exact = float(loss(jax.tree.map(jnp.add, base, edit)) - loss(jax.tree.map(jnp.add, base, delta)))
  errs = [abs(float(merge.riemann_delta_loss(loss, base, delta, edit, n_points=k)) - exact) for k in (1, 4, 32)]
  assert errs[2] < errs[1] < errs[0]
  assert errs[2] < 1e-3 * max(abs(exact), 1.0)


def test_matches_measured_change_for_small_edits_and_dare():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(64, 10)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 4, size=64))

  def loss(p):
    logits = jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(64), y])

  base = {"w1": jnp.asarray(rng.normal(size=(10, 16)) * 0.3, jnp.float32), "b1": jnp.zeros((16,)),
          "w2": jnp.asarray(rng.normal(size=(16, 4)) * 0.3, jnp.float32)}
  ft = jax.tree.map(lambda b: b + jnp.asarray(rng.normal(size=b.shape) * 0.05, jnp.float32), base)
  delta = merge.task_vector(base, ft)
  edits = {
      "shrink": jax.tree.map(lambda d: 0.9 * d, delta),
      "extrapolate": merge.task_vector(base, merge.extrapolate(base, ft, 0.2)),
      "dare": merge.task_vector(base, merge.dare(jax.random.key(0), base, ft, 0.5)),
      "bitdelta": merge.task_vector(base, merge.bitdelta(base, ft)),
  }
  f = jax.jit(lambda d, e: merge.riemann_delta_loss(loss, base, d, e, n_points=8))
  for name, e in edits.items():
    measured = float(loss(jax.tree.map(jnp.add, base, e)) - loss(ft))
    got = float(f(delta, e))
    assert abs(got - measured) <= 5e-3 * abs(measured) + 1e-6, (name, got, measured)


def test_identity_edit_is_zero_and_jit_matches_eager():
  loss, tree, rng = _quadratic(3)
  base, delta, edit = (tree(rng.normal(size=5)) for _ in range(3))
  np.testing.assert_allclose(merge.riemann_delta_loss(loss, base, delta, delta), 0.0, atol=1e-6)
  eager = merge.riemann_delta_loss(loss, base, delta, edit, n_points=4)
  jitted = jax.jit(merge.riemann_delta_loss, static_argnums=(0, 4))(loss, base, delta, edit, 4)
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  chex.assert_shape(jitted, ())


def test_validation():
  loss, tree, rng = _quadratic(4)
  base, delta = tree(rng.normal(size=5)), tree(rng.normal(size=5))
  with pytest.raises(ValueError, match="n_points"):
    merge.riemann_delta_loss(loss, base, delta, delta, n_points=0)
  with pytest.raises(ValueError, match="n_points"):
    merge.riemann_delta_loss(loss, base, delta, delta, n_points=2.5)
  with pytest.raises(TypeError, match="loss_fn"):
    merge.riemann_delta_loss(None, base, delta, delta)
  with pytest.raises(ValueError, match="delta_edit"):
    merge.riemann_delta_loss(loss, base, delta, {"w": delta["w"]})
