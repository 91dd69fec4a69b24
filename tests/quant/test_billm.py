"""BiLLM (paperlab.quant.billm): the binarization properties of the paper (mean|w| is the L2-optimal scale of
sign(w), a second residual order never increases the error), errors naming the argument (the layer's output is checked against the official code in tests/parity)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import quant


def test_residual_orders_lower_the_error_and_order_one_scale_is_l2_optimal():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_t(3, size=(40, 6)).astype(np.float32))  # the parity test's shape: one compile
  err = [float(jnp.sum((w - quant.residual_binarize(w, order=m)) ** 2)) for m in (1, 2, 3)]
  assert err[2] <= err[1] < err[0]
  # order 1 = alpha sign(w - mu) + mu with alpha = mean|w - mu|, the minimizer of ||w - mu - a sign(w - mu)||^2
  b = quant.residual_binarize(w, order=1)
  c = w - jnp.mean(w, axis=0)
  for a in (0.9, 1.1):
    scaled = jnp.mean(w, axis=0) + a * (b - jnp.mean(w, axis=0))
    assert float(jnp.sum((w - scaled) ** 2)) > float(jnp.sum((w - b) ** 2))
  assert np.allclose(np.abs(np.asarray(b - jnp.mean(w, axis=0))), np.mean(np.abs(np.asarray(c)), axis=0), rtol=1e-5)


def test_billm_layer_errors_name_the_argument():
  w = jnp.ones((64, 8), jnp.float32)
  h = jnp.eye(64, dtype=jnp.float32)
  with pytest.raises(ValueError, match="h must be"):
    quant.billm_layer(w, h[:3, :3])
  with pytest.raises(ValueError, match="max_salient"):
    quant.billm_layer(w, h, max_salient=1)
  with pytest.raises(ValueError, match="blocksize"):
    quant.billm_layer(w, h, blocksize=63)
  with pytest.raises(ValueError, match="finite"):
    quant.billm_layer(w.at[0, 0].set(jnp.inf), h)
  with pytest.raises(ValueError, match="order"):
    quant.residual_binarize(w, order=0)
