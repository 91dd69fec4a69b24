"""Unit tests for paperlab.optim.momentum: Grams, Gravity, MoMo, complex momentum."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import optim

PARAMS = {"dense": {"kernel": jnp.ones((4, 3)) * 0.5, "bias": jnp.zeros(3)}, "scale": jnp.ones(3)}


def _grads(seed=0):
  leaves, treedef = jax.tree.flatten(PARAMS)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


ALIASES = {
    "grams": lambda: optim.grams(1e-3, weight_decay=0.01),
    "gravity": lambda: optim.gravity(0.1, key=0),
    "complex_momentum": lambda: optim.complex_momentum(0.05),
}


class TestJit(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_aliases_jit_and_keep_structure_and_dtype(self):
    for name, make in ALIASES.items():
      opt = make()
      state = opt.init(PARAMS)
      update = self.variant(opt.update)
      updates, state = update(_grads(), state, PARAMS)
      updates, state = update(_grads(1), state, PARAMS)
      chex.assert_trees_all_equal_shapes_and_dtypes(updates, PARAMS)
      chex.assert_tree_all_finite(updates)

  @chex.variants(with_jit=True, without_jit=True)
  def test_momo_jits_with_value(self):
    for opt in (optim.momo(), optim.momo_adam(), optim.momo(adapt_lower_bound=True, weight_decay=0.1)):
      state = opt.init(PARAMS)
      updates, state = self.variant(lambda g, s, p, v: opt.update(g, s, p, value=v))(_grads(), state, PARAMS, 1.0)
      chex.assert_trees_all_equal_shapes_and_dtypes(updates, PARAMS)


def test_grams_direction_has_gradient_sign_and_adam_magnitude():
  g1, g2 = _grads(0), _grads(1)
  grams, adam = optim.scale_by_grams(), optax.scale_by_adam()
  gs, as_ = grams.init(PARAMS), adam.init(PARAMS)
  _, gs = grams.update(g1, gs)
  _, as_ = adam.update(g1, as_)
  u, _ = grams.update(g2, gs)
  a, _ = adam.update(g2, as_)
  for ul, al, gl in zip(jax.tree.leaves(u), jax.tree.leaves(a), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.abs(ul), np.abs(al), rtol=1e-6)
    assert np.all(np.sign(ul) == np.sign(gl))
  # Some coordinates really disagree with Adam's momentum sign (the flip is exercised).
  assert any(np.any(np.sign(al) != np.sign(gl)) for al, gl in zip(jax.tree.leaves(a), jax.tree.leaves(g2)))


def test_grams_weight_decay_respects_mask():
  mask = {"dense": {"kernel": True, "bias": False}, "scale": False}
  opt = optim.grams(0.1, weight_decay=0.5, mask=mask)
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  u, _ = opt.update(zero, opt.init(PARAMS), PARAMS)
  np.testing.assert_allclose(u["dense"]["kernel"], -0.1 * 0.5 * PARAMS["dense"]["kernel"], rtol=1e-6)
  np.testing.assert_array_equal(u["scale"], 0.0)


def test_gravity_zeta_is_bounded_odd_and_zero_safe():
  g = jax.random.normal(jax.random.key(0), (50,)) * 3
  z = optim.gravity_zeta(g)
  assert np.all(np.abs(z) <= np.abs(g) + 1e-7)
  np.testing.assert_allclose(optim.gravity_zeta(-g), -z, rtol=1e-6)
  np.testing.assert_array_equal(optim.gravity_zeta(jnp.zeros(4)), 0.0)


def test_gravity_initial_velocity_depends_on_key_and_scales_with_alpha_over_lr():
  v = lambda key, lr: optim.scale_by_gravity(key, lr, alpha=0.01).init({"w": jnp.zeros(4000)}).velocity["w"]
  assert not np.allclose(v(0, 0.1), v(1, 0.1))
  np.testing.assert_allclose(np.std(v(0, 0.1)), 0.1, rtol=0.05)
  np.testing.assert_allclose(np.asarray(v(0, 0.01)), 10 * np.asarray(v(0, 0.1)), rtol=1e-5)


def test_gravity_beta_schedule_follows_paper():
  # With V_0 = 0 (alpha = 0): V_1 = (1 - beta_1) zeta_1, beta_1 = (beta + 1) / 3.
  opt = optim.scale_by_gravity(0, 0.1, alpha=0.0, beta=0.9)
  g = {"w": jnp.array([1.0, -2.0, 0.5])}
  v, _ = opt.update(g, opt.init(g))
  np.testing.assert_allclose(v["w"], (1 - 1.9 / 3) * optim.gravity_zeta(g["w"]), rtol=1e-6)


def _bilinear_transition(beta: complex, alpha: float) -> np.ndarray:
  """Real 6x6 linear map of (Re mu, Im mu, w) for SimCM on min_x max_y x*y (Lorraine et al., Sec. 4)."""
  jac = np.array([[0.0, 1.0], [-1.0, 0.0]])  # game gradient ĝ = jac @ w
  br, bi = beta.real, beta.imag
  i2 = np.eye(2)
  # mu' = beta mu - jac w ; w' = w + alpha Re(mu')
  re_row = np.hstack([br * i2, -bi * i2, -jac])
  im_row = np.hstack([bi * i2, br * i2, np.zeros((2, 2))])
  w_row = np.hstack([alpha * br * i2, -alpha * bi * i2, i2 - alpha * jac])
  return np.vstack([re_row, im_row, w_row])


@pytest.mark.parametrize("beta_abs,phase,converges", [(0.9, np.pi / 8, True), (0.0, 0.0, False),
                                                      (0.9, 0.0, False), (0.5, np.pi, False)])
def test_complex_momentum_spectral_radius_and_iterates_on_bilinear_game(beta_abs, phase, converges):
  radius = np.max(np.abs(np.linalg.eigvals(_bilinear_transition(beta_abs * np.exp(1j * phase), 0.05))))
  assert (radius < 1) == converges
  opt = optim.complex_momentum(0.05, beta_abs=beta_abs, beta_phase=phase)
  w = jnp.array([1.0, 1.0])

  def body(carry, _):
    w, s = carry
    u, s = opt.update(jnp.stack([w[1], -w[0]]), s)
    return (w + u, s), None

  (w, _), _ = jax.lax.scan(body, (w, opt.init(w)), None, length=3000)
  norm = float(jnp.linalg.norm(w))
  assert norm <= 1e-6 if converges else not norm < 1.0  # diverging runs may overflow to inf/nan


def test_complex_momentum_with_zero_phase_is_heavy_ball():
  g = _grads()
  cm, hb = optim.scale_by_complex_momentum(0.7, 0.0), optax.trace(decay=0.7)
  cs, hs = cm.init(PARAMS), hb.init(PARAMS)
  for _ in range(3):
    u1, cs = cm.update(g, cs)
    u2, hs = hb.update(g, hs)
  chex.assert_trees_all_close(u1, u2, rtol=1e-6)


def test_momo_takes_polyak_step_on_quadratic():
  # f(x) = 0.5||x||^2, f_* = 0, first step: d = g = x, fbar = f, gamma = ||x||^2 -> tau = min(lr, 0.5) -> x/2.
  x = jnp.array([1.0, 2.0, 3.0])
  opt = optim.momo(learning_rate=10.0)
  u, _ = opt.update(x, opt.init(x), x, value=0.5 * jnp.sum(x * x))
  np.testing.assert_allclose(x + u, x / 2, rtol=1e-6)
  assert_scaled = optim.scale_by_momo(learning_rate=10.0)
  d, _ = assert_scaled.update(x, assert_scaled.init(x), x, value=0.5 * jnp.sum(x * x))
  np.testing.assert_allclose(d, -u, rtol=1e-6)


def test_momo_requires_loss_value_and_params():
  opt = optim.momo()
  with pytest.raises(ValueError, match="value=loss"):
    opt.update(PARAMS, opt.init(PARAMS), PARAMS)
  with pytest.raises(ValueError, match="params"):
    opt.update(PARAMS, opt.init(PARAMS), None, value=1.0)


@pytest.mark.parametrize("make,arg", [
    (lambda: optim.grams(-1e-3), "learning_rate"),
    (lambda: optim.grams(1e-3, b1=1.0), "b1"),
    (lambda: optim.scale_by_grams(b2=-0.1), "b2"),
    (lambda: optim.grams(1e-3, weight_decay=-1.0), "weight_decay"),
    (lambda: optim.gravity(0.0, key=0), "learning_rate"),
    (lambda: optim.gravity(0.1, alpha=2.0, key=0), "alpha"),
    (lambda: optim.gravity(0.1, beta=1.5, key=0), "beta"),
    (lambda: optim.momo(-1.0), "learning_rate"),
    (lambda: optim.momo(beta=1.0), "beta"),
    (lambda: optim.momo_adam(b2=1.0), "b2"),
    (lambda: optim.momo(weight_decay=-0.1), "weight_decay"),
    (lambda: optim.complex_momentum(0.1, beta_abs=1.0), "beta_abs"),
    (lambda: optim.complex_momentum(0.1, beta_phase=4.0), "beta_phase"),
])
def test_invalid_hyperparameters_raise_naming_the_argument(make, arg):
  with pytest.raises(ValueError, match=arg):
    make()


def test_schedules_are_accepted():
  sched = optax.linear_schedule(1e-2, 1e-3, 10)
  for opt in (optim.grams(sched), optim.gravity(sched, key=0), optim.complex_momentum(sched)):
    updates, _ = opt.update(_grads(), opt.init(PARAMS), PARAMS)
    chex.assert_tree_all_finite(updates)
  opt = optim.momo(sched)
  updates, _ = opt.update(_grads(), opt.init(PARAMS), PARAMS, value=1.0)
  chex.assert_tree_all_finite(updates)


def test_hyperparameters_can_be_vmapped_for_sweeps():
  def first_update(lr, wd, phase):
    grams, cm = optim.grams(lr, weight_decay=wd), optim.complex_momentum(lr, beta_phase=phase)
    u1, _ = grams.update(_grads(), grams.init(PARAMS), PARAMS)
    u2, _ = cm.update(_grads(), cm.init(PARAMS))
    return u1["scale"], u2["scale"]

  u1, u2 = jax.vmap(first_update)(jnp.array([1e-3, 1e-2]), jnp.array([0.0, 0.1]), jnp.array([0.0, 0.5]))
  np.testing.assert_allclose(u1[1], 10 * u1[0] - 1e-2 * 0.1 * PARAMS["scale"], rtol=1e-5)
  np.testing.assert_allclose(u2[1], 10 * u2[0], rtol=1e-5)  # first complex-momentum step is -lr * g
