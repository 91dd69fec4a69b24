"""Post-quantization integral and ReQuant (paperlab.quant.sensitivity): closed forms, convergence, the detach and
errors (the integral is checked against scipy.integrate.quad in tests/parity)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import quant


def _quadratic():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 6)).astype(np.float32)
  h = jnp.asarray(a @ a.T + np.eye(6, dtype=np.float32))

  def loss(p, b):
    return 0.5 * p["w"] @ h @ p["w"] + b @ p["w"]

  p = {"w": jnp.asarray(rng.normal(size=6).astype(np.float32)), "step": jnp.asarray(3)}  # an int leaf too
  pq = {"w": jnp.round(p["w"] * 2) / 2, "step": jnp.asarray(3)}
  return loss, p, pq, jnp.asarray(rng.normal(size=6).astype(np.float32)), h


def _total(tree):
  return float(sum(jnp.sum(x) for x in jax.tree.leaves(tree)))


def test_midpoint_pqi_with_one_point_is_exact_on_a_quadratic_loss_and_equals_second_order_taylor():
  loss, p, pq, b, _ = _quadratic()
  true = float(loss(pq, b) - loss(p, b))
  s = quant.pqi(loss, p, pq, b, n_steps=1)
  assert _total(s) == pytest.approx(true, rel=1e-5)
  assert float(s["step"]) == 0.0  # non-floating leaves get no share
  # on a quadratic, the second-order Taylor expansion is exact too, element by element the same split
  t = quant.taylor_sensitivity(loss, p, pq, b, order=2)
  np.testing.assert_allclose(np.asarray(t["w"]), np.asarray(s["w"]), rtol=1e-4, atol=1e-6)
  t1 = quant.taylor_sensitivity(loss, p, pq, b, order=1)
  assert abs(_total(t1) - true) > 1e-3  # the first-order term misses the curvature


def test_pqi_converges_to_the_true_loss_change_where_taylor_does_not():
  # a loss far from quadratic over the quantization step: sum(cos(8 w))
  w = jnp.linspace(-1.0, 1.0, 32)
  loss = lambda p, b: jnp.sum(jnp.cos(b * p))
  wq = jnp.round(w)  # steps up to 0.5: 4 radians of the cosine
  true = float(loss(wq, 8.0) - loss(w, 8.0))
  err = {n: abs(_total(quant.pqi(loss, w, wq, 8.0, n_steps=n)) - true) / abs(true) for n in (4, 32)}
  assert err[32] < 0.01 and err[32] < err[4]
  taylor = abs(_total(quant.taylor_sensitivity(loss, w, wq, 8.0)) - true) / abs(true)
  assert taylor > 0.5


def test_requant_with_zero_budget_is_the_base_quantizer_and_detached_weights_are_exact():
  rng = np.random.default_rng(1)
  params = {"a": jnp.asarray(rng.normal(size=(32, 8)).astype(np.float32)),
            "b": jnp.asarray(rng.normal(size=(8,)).astype(np.float32))}
  qfn = jax.jit(lambda t: {"a": quant.fake_quantize_rtn(t["a"], bits=3), "b": t["b"]})
  sens = {"a": jnp.abs(params["a"]), "b": None}  # bias never detached
  base = qfn(params)
  same, res0 = quant.requant(params, qfn, sens, sparse_frac=0.0)
  np.testing.assert_array_equal(np.asarray(same["a"]), np.asarray(base["a"]))
  assert float(jnp.abs(res0["a"]).sum()) == 0.0
  hat, res = quant.requant(params, qfn, sens, sparse_frac=0.05, steps=2)
  detached = np.asarray(res["a"]) != 0
  assert detached.sum() == round(0.05 * (32 * 8 + 8)) and not np.any(np.asarray(res["b"]))
  np.testing.assert_array_equal(np.asarray(hat["a"])[detached], np.asarray(params["a"])[detached])
  top = np.argsort(-np.abs(np.asarray(params["a"])).ravel())[:detached.sum()]  # the largest scores
  assert set(np.flatnonzero(detached.ravel())) == set(top)
  # removing the largest weights from the min-max grid shrinks the steps: the dense part's error drops
  dense = ~detached
  err = lambda q: float(np.mean((np.asarray(q["a"])[dense] - np.asarray(params["a"])[dense]) ** 2))
  assert err(hat) < err(base)
  # a sensitivity function is re-evaluated on the current quantized tree at every step
  calls = []
  quant.requant(params, qfn, lambda ph: calls.append(1) or sens, sparse_frac=0.05, steps=2)
  assert len(calls) == 2


def test_pqi_jits_with_a_closure_loss():
  loss, p, pq, b, _ = _quadratic()
  f = jax.jit(lambda p, pq, b: quant.pqi(loss, p, pq, b, n_steps=4))
  np.testing.assert_allclose(np.asarray(f(p, pq, b)["w"]), np.asarray(quant.pqi(loss, p, pq, b, n_steps=4)["w"]),
                             rtol=1e-6)


def test_errors_name_the_argument():
  loss, p, pq, b, _ = _quadratic()
  with pytest.raises(ValueError, match="n_steps"):
    quant.pqi(loss, p, pq, b, n_steps=0)
  with pytest.raises(ValueError, match="structure"):
    quant.pqi(loss, p, {"w": pq["w"]}, b)
  with pytest.raises(ValueError, match="shapes"):
    quant.pqi(loss, p, {"w": pq["w"][:3], "step": pq["step"]}, b)
  with pytest.raises(ValueError, match="order"):
    quant.taylor_sensitivity(loss, p, pq, b, order=3)
  with pytest.raises(ValueError, match="sparse_frac"):
    quant.requant(p, lambda t: t, p, sparse_frac=1.0)
  with pytest.raises(ValueError, match="steps"):
    quant.requant(p, lambda t: t, p, steps=0)
