"""LoRC (ZeroQuant-V2, arXiv:2303.08302): Eckart-Young optimality against numpy's SVD, monotonicity, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab.quant import apply_lorc, lorc, lorc_model, rtn  # lorc: the function (it shadows its module)


def _pair(seed=0, shape=(48, 24)):
  w = jax.random.normal(jax.random.key(seed), shape)
  return w, rtn.quantize_rtn(w, bits=3, group_size=16).w_hat


def test_residual_is_the_eckart_young_tail_of_numpy_svd():
  w, w_hat = _pair()
  sigma = np.linalg.svd(np.asarray(w - w_hat, np.float64), compute_uv=False)
  for rank in (1, 8, 20):
    comp = apply_lorc(w_hat, lorc(w, w_hat, rank=rank))
    residual = float(jnp.sum(jnp.square(w - comp)))
    assert residual == pytest.approx(float(np.sum(sigma[rank:] ** 2)), rel=1e-4)


def test_error_is_monotone_in_rank_and_full_rank_is_exact():
  w, w_hat = _pair(1)
  errs = [float(jnp.sum(jnp.square(w - apply_lorc(w_hat, lorc(w, w_hat, rank=r))))) for r in
          (1, 2, 4, 8, 16, 24)]
  assert all(a >= b for a, b in zip(errs, errs[1:]))
  assert errs[-1] < 1e-8 * float(jnp.sum(jnp.square(w - w_hat))) + 1e-9


def test_quantized_factors_and_the_model_walk():
  w, w_hat = _pair(2)
  u, v = lorc(w, w_hat, rank=4, factor_bits=8)
  assert u.shape == (48, 4) and v.shape == (24, 4)
  exact = lorc(w, w_hat, rank=4)
  assert float(jnp.max(jnp.abs(u - exact[0]))) <= float(jnp.max(jnp.abs(exact[0]))) / 127
  params = {"dense": {"kernel": w, "bias": jnp.ones(24)}}
  params_q = {"dense": {"kernel": w_hat, "bias": jnp.ones(24)}}
  comp, factors = lorc_model(params, params_q, rank=4)
  assert set(factors) == {"dense/kernel"}
  np.testing.assert_allclose(comp["dense"]["kernel"], apply_lorc(w_hat, lorc(w, w_hat, rank=4)), atol=1e-6)


def test_errors():
  w, w_hat = _pair()
  with pytest.raises(ValueError, match="rank must be an int in"):
    lorc(w, w_hat, rank=0)
  with pytest.raises(ValueError, match="rank must be an int in"):
    lorc(w, w_hat, rank=25)
  with pytest.raises(ValueError, match="w_hat must have the shape"):
    lorc(w, w_hat[:16])
  with pytest.raises(ValueError, match="bits must be one of"):
    lorc(w, w_hat, factor_bits=1)
  with pytest.raises(ValueError, match="w must be finite"):
    lorc(w.at[0, 0].set(jnp.nan), w_hat)
