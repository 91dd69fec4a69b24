"""kronecker_precondition (the K-FAC / Shampoo update of Ishikawa & Karakida, arXiv:2312.12226, Eq. 3) against
scipy: ``scipy.linalg.fractional_matrix_power`` and ``scipy.linalg.solve`` in float64 (tolerance 1e-4 relative,
float32 eigendecompositions and solves)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from paperlab import param


@pytest.mark.parametrize("exponent", [1.0, 0.25, 0.5])
def test_kronecker_precondition_matches_scipy(exponent):
  rng = np.random.default_rng(0)
  g = rng.normal(size=(6, 4))
  ha, hb = rng.normal(size=(20, 6)), rng.normal(size=(20, 4))
  a, b = ha.T @ ha / 20, hb.T @ hb / 20
  da, db = 0.3, 0.05
  want = (scipy.linalg.fractional_matrix_power(a + da * np.eye(6), -exponent) @ g
          @ scipy.linalg.fractional_matrix_power(b + db * np.eye(4), -exponent)).real
  if exponent == 1.0:
    np.testing.assert_allclose(want, scipy.linalg.solve(a + da * np.eye(6), g) @ np.linalg.inv(b + db * np.eye(4)),
                               rtol=1e-10)
  got = jax.jit(lambda g, a, b: param.kronecker_precondition(g, a, b, damping_a=da, damping_b=db,
                                                             exponent=exponent))(
      jnp.asarray(g, jnp.float32), jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
