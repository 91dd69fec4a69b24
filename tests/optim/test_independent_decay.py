"""paperlab.optim.independent_weight_decay [249]: weight decay not multiplied by the learning rate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import optim


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"w": jax.random.normal(k1, (4, 3)), "b": jax.random.normal(k2, (3,))}


def _run(tx, params, steps=5):
  state = tx.init(params)
  for i in range(steps):
    grads = jax.tree.map(lambda p: jnp.sin(p + i), params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("lr", [1e-3, 1e-1])
def test_equals_optax_adamw_with_decay_divided_by_lr(lr):
  wd = 1e-2
  ours = _run(optax.chain(optax.scale_by_adam(), optax.scale_by_learning_rate(lr), optim.independent_weight_decay(wd)),
              _params())
  ref = _run(optax.adamw(lr, weight_decay=wd / lr), _params())  # optax decays by lr * weight_decay
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_decay_per_step_does_not_depend_on_the_learning_rate_and_follows_the_schedule():
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  schedule = lambda count: 0.5 ** count.astype(jnp.float32)
  for lr in (1e-4, 1.0):
    tx = optax.chain(optax.sgd(lr), optim.independent_weight_decay(0.1, schedule=schedule))
    state = tx.init(params)
    u0, state = tx.update(zero, state, params)
    u1, _ = tx.update(zero, state, params)
    np.testing.assert_allclose(np.asarray(u0["w"]), -0.1 * np.asarray(params["w"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(u1["w"]), -0.05 * np.asarray(params["w"]), rtol=1e-6)


def test_mask_and_traced_weight_decay():
  params = _params()
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = optim.independent_weight_decay(0.1, mask={"w": True, "b": False})
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["b"]), 0.0)
  injected = optax.inject_hyperparams(optim.independent_weight_decay)(weight_decay=0.3)
  updates, _ = jax.jit(injected.update)(zero, injected.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.3 * np.asarray(params["w"]), rtol=1e-6)


def test_rejects_negative_decay_and_missing_params():
  with pytest.raises(ValueError, match="weight_decay"):
    optim.independent_weight_decay(-1.0)
  tx = optim.independent_weight_decay(1e-4)
  with pytest.raises(ValueError, match="params"):
    tx.update(_params(), tx.init(_params()))
