"""AWP / RWP: closed-form checks (radius, direction, untouched vectors, RWP limits)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from paperlab import optim


def _problem():
  k = jax.random.split(jax.random.key(0), 4)
  params = {"w1": jax.random.normal(k[0], (5, 8)), "b1": jnp.zeros(8), "w2": jax.random.normal(k[1], (8, 3)),
            "b2": jnp.zeros(3)}
  x, y = jax.random.normal(k[2], (20, 5)), jnp.arange(20) % 3

  def example_loss(p):
    logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  return params, example_loss, jax.grad(lambda p: example_loss(p).mean())


def test_awp_radius_direction_and_untouched_vectors():
  params, _, grad_fn = _problem()
  g = grad_fn(params)
  v = optim.awp_perturbation(g, params, gamma=0.02)
  for name in ("w1", "w2"):
    assert float(jnp.linalg.norm(v[name])) == pytest.approx(0.02 * float(jnp.linalg.norm(params[name])), rel=1e-5)
    cos = jnp.sum(v[name] * g[name]) / (jnp.linalg.norm(v[name]) * jnp.linalg.norm(g[name]))
    assert float(cos) == pytest.approx(1.0, abs=1e-5)
  assert float(jnp.max(jnp.abs(v["b1"]))) == 0.0 and float(jnp.max(jnp.abs(v["b2"]))) == 0.0


def test_awp_gradient_matches_manual_two_pass():
  params, _, grad_fn = _problem()
  g = grad_fn(params)
  manual = grad_fn({k: params[k] + (0.01 * jnp.linalg.norm(params[k]) * g[k] / jnp.linalg.norm(g[k])
                                    if params[k].ndim > 1 else 0.0) for k in params})
  chex.assert_trees_all_close(optim.awp_gradient(grad_fn, params, gamma=0.01), manual, rtol=1e-6)


def test_awp_transform_feeds_base_the_perturbed_gradient():
  params, _, grad_fn = _problem()
  tx = optim.awp(optax.sgd(0.1), gamma=0.01)
  updates, _ = jax.jit(lambda s, p: tx.update(grad_fn(p), s, p, grad_fn=grad_fn))(tx.init(params), params)
  chex.assert_trees_all_close(updates, jax.tree.map(lambda g: -0.1 * g, optim.awp_gradient(grad_fn, params, gamma=0.01)),
                              rtol=1e-5)


def test_rwp_with_no_threshold_and_one_step_is_awp():
  params, example_loss, grad_fn = _problem()
  v_rwp = optim.rwp_perturbation(example_loss, params, 0.01, c_min=jnp.inf, steps=1)
  v_awp = optim.awp_perturbation(grad_fn(params), params, 0.01)
  chex.assert_trees_all_close(v_rwp, v_awp, rtol=1e-5, atol=1e-8)


def test_rwp_with_threshold_below_every_loss_is_no_perturbation():
  params, example_loss, _ = _problem()
  c_min = float(jnp.min(example_loss(params))) * 0.5
  v = optim.rwp_perturbation(example_loss, params, 0.01, c_min=c_min, steps=5)
  assert float(optax.global_norm(v)) == 0.0


def test_rwp_stays_inside_the_relative_ball():
  params, example_loss, _ = _problem()
  v = optim.rwp_perturbation(example_loss, params, 0.05, c_min=10.0, steps=6, step_size=0.03)
  for name in ("w1", "w2"):
    assert float(jnp.linalg.norm(v[name])) <= 0.05 * float(jnp.linalg.norm(params[name])) * (1 + 1e-5)


def test_rwp_transform_and_errors():
  params, example_loss, grad_fn = _problem()
  tx = optim.rwp(optax.sgd(0.1), gamma=0.01, steps=2)
  updates, _ = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn, example_loss_fn=example_loss)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  with pytest.raises(ValueError, match="example_loss_fn"):
    tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
  with pytest.raises(ValueError, match="gamma"):
    optim.awp(optax.sgd(0.1), gamma=0.0)
  with pytest.raises(ValueError, match="steps"):
    optim.rwp_perturbation(example_loss, params, steps=0)


def test_awp_bfloat16():
  params, _, grad_fn = _problem()
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  g16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), grad_fn(params))
  v = optim.awp_perturbation(g16, p16, 0.01)
  assert float(jnp.linalg.norm(v["w1"])) == pytest.approx(0.01 * float(jnp.linalg.norm(p16["w1"].astype(jnp.float32))),
                                                          rel=1e-4)
