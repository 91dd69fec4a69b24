"""Adafactor / AdamW / SGDW: closed forms from the papers (memory, relative step, decoupling)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from paperlab import optim


def test_relative_step_is_min_of_cap_and_inverse_sqrt_t():
  s = optim.adafactor_relative_step(1e-2)
  assert float(s(0)) == pytest.approx(1e-2)
  assert float(s(9_999)) == pytest.approx(1e-2)
  assert float(s(39_999)) == pytest.approx(1 / math.sqrt(40_000), rel=1e-6)


def test_factored_state_is_rows_plus_columns():
  """256x512 kernel: Adafactor keeps 256 + 512 second-moment numbers; Adam keeps 2 * 131072."""
  params = {"k": jnp.zeros((256, 512))}
  ada = optim.state_size(optim.adafactor_paper().init(params))
  adam = optim.state_size(optax.adam(1e-3).init(params))
  assert 768 <= ada <= 768 + 4  # + the step count and optax's (1,)-shaped placeholders
  assert adam == 2 * 256 * 512 + 1
  unfactored = optim.state_size(optim.adafactor_paper(factored=False).init(params))
  assert unfactored >= 256 * 512


def test_first_adafactor_step_is_clipped_relative_sign_step():
  """t=1: b_1 = 0 so V = G^2 (factored exactly for a rank-1 G^2), U = sign(G) has RMS 1 (no clipping), and
  the step is max(eps2, RMS(X)) * 1e-2."""
  x = jnp.full((4, 6), 2.0)
  g = jnp.outer(jnp.arange(1.0, 5.0), jnp.arange(1.0, 7.0))  # G^2 is rank one
  tx = optim.adafactor_paper()
  updates, _ = tx.update({"x": g}, tx.init({"x": x}), {"x": x})
  chex.assert_trees_all_close(updates["x"], -2.0 * 1e-2 * jnp.sign(g), rtol=1e-5)


def test_adamw_paper_with_constant_multiplier_is_optax_adamw():
  """optax.adamw(lr, wd) == paper form with alpha = lr and lambda = lr * wd."""
  params = {"w": jnp.linspace(-1, 1, 6).reshape(2, 3)}
  grads = {"w": jnp.cos(params["w"])}
  a, b = optim.adamw_paper(1e-2, weight_decay=1e-2 * 0.1), optax.adamw(1e-2, weight_decay=0.1)
  ua, _ = a.update(grads, a.init(params), params)
  ub, _ = b.update(grads, b.init(params), params)
  chex.assert_trees_all_close(ua, ub, rtol=1e-6)


def test_decoupled_decay_equals_l2_for_plain_sgd_but_not_for_adam():
  params = {"w": jnp.linspace(-1, 1, 6)}
  loss = lambda p: jnp.sum(jnp.sin(p["w"]))
  alpha, lam = 0.1, 0.01

  def run(tx, l2=0.0, steps=5):
    p, s = params, tx.init(params)
    for _ in range(steps):
      g = jax.grad(lambda q: loss(q) + 0.5 * l2 * jnp.sum(q["w"] ** 2))(p)
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
    return p["w"]

  sgd_w = run(optim.sgdw(alpha, momentum=0.0, weight_decay=lam))
  sgd_l2 = run(optax.sgd(alpha), l2=lam / alpha)
  chex.assert_trees_all_close(sgd_w, sgd_l2, rtol=1e-6)
  adam_w = run(optim.adamw_paper(alpha, weight_decay=lam))
  adam_l2 = run(optax.adam(alpha), l2=lam / alpha)
  assert float(jnp.max(jnp.abs(adam_w - adam_l2))) > 1e-3


def test_schedule_multiplies_both_step_and_decay():
  params = {"w": jnp.ones(3)}
  grads = {"w": jnp.zeros(3)}
  tx = optim.adamw_paper(1e-3, schedule=0.5, weight_decay=0.2)
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(updates["w"], -0.5 * 0.2 * jnp.ones(3))


def test_normalized_weight_decay():
  assert optim.normalized_weight_decay(0.05, 128, 50_000, 200) == pytest.approx(0.05 * math.sqrt(128 / (50_000 * 200)))


@pytest.mark.parametrize("make,match", [
    (lambda: optim.adamw_paper(-1e-3), "learning_rate"), (lambda: optim.adamw_paper(b1=1.0), "b1"),
    (lambda: optim.adamw_paper(weight_decay=-0.1), "weight_decay"), (lambda: optim.sgdw(0.1, momentum=1.5), "momentum"),
    (lambda: optim.adafactor_paper(decay_rate=0.0), "decay_rate"),
    (lambda: optim.adafactor_paper(clipping_threshold=0.5), "clipping_threshold"),
    (lambda: optim.adafactor_relative_step(0.0), "max_step"), (lambda: optim.normalized_weight_decay(0.1, 0, 10, 1), "batch_size"),
])
def test_invalid_hyperparameters(make, match):
  with pytest.raises(ValueError, match=match):
    make()
