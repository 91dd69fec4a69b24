"""Weight compander (Cakaj et al., arXiv:2306.16993): the properties the paper states for its function (odd,
bounded by ``a``, expanding near zero with slope ``b``, monotone), the pytree helper, jit/vmap, dtypes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import param


def test_compander_is_odd_bounded_monotone_and_expands_small_weights():
  w = jnp.linspace(-1.0, 1.0, 201)
  f = param.compander(w, a=0.5, b=2.0)
  np.testing.assert_allclose(f, -param.compander(-w, a=0.5, b=2.0), atol=0)
  assert float(jnp.max(jnp.abs(f))) < 0.5
  assert float(jnp.max(jnp.abs(param.compander(jnp.array([-1e3, 1e3]), a=0.5, b=2.0)))) <= 0.5
  assert bool(jnp.all(jnp.diff(f) > 0))
  small = jnp.abs(w) < 0.2
  assert bool(jnp.all(jnp.abs(f[small]) >= jnp.abs(w[small])))
  assert bool(jnp.all(jnp.abs(f[small & (w != 0)]) > jnp.abs(w[small & (w != 0)])))
  # large weights are compressed: the cap holds where the identity would exceed it
  assert bool(jnp.all(jnp.abs(f[jnp.abs(w) > 0.5]) < jnp.abs(w[jnp.abs(w) > 0.5])))


def test_compander_with_unit_slope_and_huge_bound_is_the_identity():
  w = jax.random.normal(jax.random.key(0), (8, 4)) * 0.1
  np.testing.assert_allclose(param.compander(w, a=1e4, b=1.0), w, rtol=1e-6, atol=1e-9)


def test_compander_jits_vmaps_and_learns_its_hyperparameters():
  w = jax.random.normal(jax.random.key(1), (3, 5, 4))
  fn = jax.jit(jax.vmap(lambda x, a, b: param.compander(x, a=a, b=b)))
  out = fn(w, jnp.array([0.3, 0.5, 1.0]), jnp.array([1.5, 2.0, 3.0]))
  np.testing.assert_allclose(out[1], param.compander(w[1], a=0.5, b=2.0), rtol=1e-6)
  ga, gb = jax.grad(lambda a, b: jnp.sum(param.compander(w, a=a, b=b)), argnums=(0, 1))(0.5, 2.0)
  assert np.isfinite(float(ga)) and np.isfinite(float(gb)) and float(gb) != 0.0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_compander_keeps_the_dtype(dtype):
  w = jnp.ones((4, 3), dtype)
  assert param.compander(w, a=0.5, b=2.0).dtype == dtype


def test_compander_errors_name_the_argument():
  with pytest.raises(ValueError, match="a must"):
    param.compander(jnp.ones(3), a=0.0, b=2.0)
  with pytest.raises(ValueError, match="b must"):
    param.compander(jnp.ones(3), a=1.0, b=-1.0)
  with pytest.raises(TypeError, match="w must be a floating"):
    param.compander(jnp.ones(3, jnp.int32), a=1.0, b=2.0)


def test_reparametrize_touches_only_selected_kernels_and_passes_gradients():
  params = {"hidden": {"kernel": jnp.full((3, 2), 0.1), "bias": jnp.full((2,), 0.1)},
            "head": {"kernel": jnp.full((2, 2), 0.1), "bias": jnp.zeros(2)}}
  fn = lambda w: param.compander(w, a=0.5, b=2.0)
  out = jax.jit(lambda p: param.reparametrize(p, fn))(params)
  np.testing.assert_allclose(out["hidden"]["kernel"], fn(params["hidden"]["kernel"]))
  np.testing.assert_array_equal(out["hidden"]["bias"], params["hidden"]["bias"])
  only_head = param.reparametrize(params, fn, include=r"^head/kernel$")
  np.testing.assert_array_equal(only_head["hidden"]["kernel"], params["hidden"]["kernel"])
  g = jax.grad(lambda p: jnp.sum(param.reparametrize(p, fn)["head"]["kernel"]))(params)
  # d/dw a tanh(b w / a) = b sech^2(b w / a)
  np.testing.assert_allclose(g["head"]["kernel"], 2.0 / np.cosh(2.0 * 0.1 / 0.5) ** 2, rtol=1e-5)
  with pytest.raises(ValueError, match="selects no kernel"):
    param.reparametrize(params, fn, include="nothing")


def test_compander_inverse_round_trips_and_rejects_out_of_range():
  w = jnp.linspace(-0.45, 0.45, 19)
  np.testing.assert_allclose(param.compander(param.compander_inverse(w, a=0.5, b=2.0), a=0.5, b=2.0), w,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="w_eff must lie in"):
    param.compander_inverse(jnp.array([0.1, 0.5]), a=0.5, b=2.0)
