"""Weight conditioning (Saratchandran et al., arXiv:2409.03424): the equilibration conditioner, its kinds, the
condition-number reduction the paper claims, Flax kernel layouts, jit/vmap, dtypes, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import param


def _kappa(kernel):
  s = np.linalg.svd(np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1]), compute_uv=False)
  return s[0] / s[-1]


def test_row_conditioning_gives_every_output_unit_a_unit_norm():
  w = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))  # a conv kernel: fan-in 36, 6 output units
  wc = param.weight_condition(w)
  assert wc.shape == w.shape
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(wc ** 2, axis=(0, 1, 2))), np.ones(6), rtol=1e-5)
  r, c = param.make_conditioner(w)
  assert r.shape == (6,) and c.shape == (36,)
  np.testing.assert_array_equal(c, np.ones(36))


def test_column_and_row_column_kinds():
  w = jax.random.normal(jax.random.key(1), (5, 4))
  col = param.weight_condition(w, kind="column")
  np.testing.assert_allclose(jnp.linalg.norm(col, axis=1), np.ones(5), rtol=1e-5)  # each input coordinate
  both = param.weight_condition(w, kind="row_column")
  np.testing.assert_allclose(jnp.linalg.norm(both, axis=1), np.ones(5), rtol=1e-5)  # columns last


@pytest.mark.parametrize("shape,row_scale", [((32, 64), 0.0), ((16, 16), 1.0)])
def test_conditioning_lowers_the_mean_condition_number_of_random_matrices(shape, row_scale):
  # the catalogue's property: over 100 random Gaussian matrices (as drawn, and with badly scaled output units) the
  # mean kappa(C W) is below the mean kappa(W); van der Sluis' bound caps any increase at sqrt(out) (square W)
  rng = np.random.default_rng(2)
  ws = (rng.normal(size=(100, *shape)) * np.exp(row_scale * rng.normal(size=(100, 1, shape[1])))).astype(np.float32)
  wcs = jax.vmap(param.weight_condition)(ws)
  before = np.array([_kappa(w) for w in ws])
  after = np.array([_kappa(w) for w in wcs])
  assert after.mean() < before.mean()
  if shape[0] == shape[1]:
    assert np.all(after <= np.sqrt(shape[1]) * before * (1 + 1e-4))


def test_conditioning_is_scale_invariant_per_output_unit():
  w = jax.random.normal(jax.random.key(3), (6, 4))
  scaled = w * jnp.array([0.1, 2.0, 7.0, 0.5])
  np.testing.assert_allclose(param.weight_condition(scaled), param.weight_condition(w), rtol=1e-5, atol=1e-6)


def test_zero_row_stays_zero_and_dtype_is_kept():
  w = jnp.zeros((4, 3), jnp.bfloat16).at[:, 1].set(1.0)
  out = param.weight_condition(w)
  assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
  np.testing.assert_array_equal(out[:, 0], np.zeros(4))


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="kind must be one of"):
    param.weight_condition(jnp.ones((3, 3)), kind="diag")
  with pytest.raises(ValueError, match="ndim >= 2"):
    param.weight_condition(jnp.ones(3))
  with pytest.raises(ValueError, match="eps must"):
    param.make_conditioner(jnp.ones((3, 3)), eps=0.0)
