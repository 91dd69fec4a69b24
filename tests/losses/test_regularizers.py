"""Unit tests for paperlab.losses.regularizers: VAT, entropy minimisation, Norm loss, MaxNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab.losses import regularizers as R


def _linear_softmax():
  w = jax.random.normal(jax.random.key(0), (6, 4))
  x = jax.random.normal(jax.random.key(1), (1, 6))
  return w, x


def test_vat_direction_is_the_top_hessian_eigenvector_of_the_kl():
  # Linear softmax model: the power iteration must align with the top eigenvector of the Hessian of
  # r -> KL(p(x) || p(x + r)) at r = 0, computed here by jax.hessian and checked against W (diag p - p p^T) W^T.
  w, x = _linear_softmax()
  f = lambda z: z @ w
  log_p = jax.nn.log_softmax(f(x))

  def kl(r):
    log_q = jax.nn.log_softmax(f(x + r[None]))
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q))

  h = jax.hessian(kl)(jnp.zeros(6))
  p = jnp.exp(log_p[0])
  np.testing.assert_allclose(h, w @ (jnp.diag(p) - jnp.outer(p, p)) @ w.T, atol=1e-5)
  top = np.linalg.eigh(np.asarray(h))[1][:, -1]
  for xi in (1e-6, 1e-3):
    d = jax.jit(lambda x: R.vat_direction(f, x, jax.random.key(2), xi=xi, num_power_iterations=30))(x)[0]
    assert abs(float(d @ top)) > 0.999
    np.testing.assert_allclose(jnp.linalg.norm(d), 1.0, rtol=1e-5)


def test_vat_lds_is_zero_at_zero_radius_and_quadratic_for_small_radius():
  w, x = _linear_softmax()
  f = lambda z: z @ w
  np.testing.assert_allclose(R.vat_loss(f, x, jax.random.key(3), epsilon=0.0), 0.0, atol=1e-7)
  # for small eps, LDS ~ 0.5 eps^2 lambda_max (second-order expansion along the top eigenvector)
  p = jax.nn.softmax(f(x))[0]
  lam = np.linalg.eigvalsh(np.asarray(w @ (jnp.diag(p) - jnp.outer(p, p)) @ w.T))[-1]
  lds = R.vat_loss(f, x, jax.random.key(3), epsilon=0.05, num_power_iterations=30, xi=1e-3)
  np.testing.assert_allclose(lds[0], 0.5 * 0.05 ** 2 * lam, rtol=0.05)


def test_vat_gradient_flows_only_through_the_perturbed_branch():
  w, _ = _linear_softmax()
  x = jax.random.normal(jax.random.key(4), (5, 6))
  key = jax.random.key(5)
  eps = 0.5

  def manual(w_):
    d = R.vat_direction(lambda z: z @ w, x, key, xi=0.1)
    log_p = jax.lax.stop_gradient(jax.nn.log_softmax(x @ w))
    log_q = jax.nn.log_softmax((x + eps * d) @ w_)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q))

  g = jax.jit(jax.grad(lambda w_: R.vat_loss(lambda z: z @ w_, x, key, epsilon=eps, xi=0.1).sum()))(w)
  np.testing.assert_allclose(g, jax.jit(jax.grad(manual))(w), rtol=1e-3, atol=1e-5)


def test_vat_mask_and_bad_arguments():
  w, _ = _linear_softmax()
  x = jax.random.normal(jax.random.key(6), (4, 6))
  f = lambda z: z @ w
  m = jnp.array([True, False, True, False])
  full = R.vat_loss(f, x, jax.random.key(7), epsilon=1.0, where=m)
  np.testing.assert_allclose(full[~m], 0.0)
  assert (full[m] > 0).all()
  with pytest.raises(ValueError, match="epsilon"):
    R.vat_loss(f, x, jax.random.key(0), epsilon=-1.0)
  with pytest.raises(ValueError, match="num_power_iterations"):
    R.vat_loss(f, x, jax.random.key(0), epsilon=1.0, num_power_iterations=0)


def test_entropy_minimization_closed_forms():
  np.testing.assert_allclose(R.entropy_minimization(jnp.zeros((2, 5))), np.log(5.0), rtol=1e-6)
  np.testing.assert_allclose(R.entropy_minimization(jnp.array([[1e4, 0.0, 0.0]])), 0.0, atol=1e-6)


def _params():
  k = jax.random.split(jax.random.key(8), 3)
  return {"dense": {"kernel": jax.random.normal(k[0], (5, 3)), "bias": jnp.ones(3)},
          "conv": {"kernel": jax.random.normal(k[1], (3, 3, 2, 4))},
          "norm": {"scale": jnp.full((4,), 3.0)}}


def test_norm_penalty_matches_the_formula_and_is_zero_on_the_oblique_manifold():
  params = _params()
  expected = 0.0
  for kern in (params["dense"]["kernel"], params["conv"]["kernel"]):
    norms = np.linalg.norm(np.asarray(kern).reshape(-1, kern.shape[-1]), axis=0)
    expected += ((1 - norms) ** 2).sum()
  penalty = jax.jit(lambda p: R.oblique_norm_penalty(p, weight=0.1))
  np.testing.assert_allclose(penalty(params), 0.1 * expected, rtol=1e-5)
  unit = jax.tree.map(lambda a: a / jnp.linalg.norm(a.reshape(-1, a.shape[-1]), axis=0) if a.ndim >= 2 else a, params)
  np.testing.assert_allclose(penalty(unit), 0.0, atol=1e-10)
  only_dense = R.oblique_norm_penalty(params, weight=1.0, include="dense/kernel")
  norms = np.linalg.norm(np.asarray(params["dense"]["kernel"]), axis=0)
  np.testing.assert_allclose(only_dense, ((1 - norms) ** 2).sum(), rtol=1e-5)


def test_norm_loss_transformation_adds_the_penalty_gradient():
  params = _params()
  grads = jax.jit(jax.grad(lambda p: R.oblique_norm_penalty(p, weight=0.3)))(params)
  tx = R.add_norm_loss_gradient(0.3)
  zeros = jax.tree.map(jnp.zeros_like, params)
  upd, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), upd, grads)
  # closed form on one filter: -2 lambda (1 - ||w||) w / ||w||
  w = params["dense"]["kernel"][:, 0]
  n = jnp.linalg.norm(w)
  np.testing.assert_allclose(upd["dense"]["kernel"][:, 0], -2 * 0.3 * (1 - n) * w / n, rtol=1e-5)
  np.testing.assert_allclose(upd["dense"]["bias"], 0.0)


def test_max_norm_projects_only_filters_outside_the_ball():
  params = {"kernel": jnp.array([[3.0, 0.3], [4.0, 0.4]])}  # column norms 5 and 0.5
  tx = optax.chain(optax.sgd(0.0), R.max_norm(1.0))
  upd, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, upd)
  np.testing.assert_allclose(new["kernel"][:, 0], [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(new["kernel"][:, 1], [0.3, 0.4], rtol=1e-6)
  with pytest.raises(ValueError, match="max_norm_value"):
    R.max_norm(0.0)
