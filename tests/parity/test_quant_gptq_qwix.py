"""GPTQ without act-order against qwix's JAX GPTQ (``qwix.contrib.gptq_core.quantize_weight``, qwix 0.1.8).

Same kernel, same Hessian, same grid: qwix's ``absmax`` symmetric grid uses ``absmax / (2^(b-1) - 0.5)`` (the
official GPTQ ``2 absmax / (2^b - 1)`` with zero ``2^(b-1)``), so the dequantized weights must agree. qwix has no
act-order (background anchors §4). Only the symmetric grid is compared: qwix 0.1.8's asymmetric GPTQ fails before
it starts (``zero_points.append(zero_point and zero_point.squeeze(1))`` takes the truth value of an array); the
asymmetric grid is covered by the official-code parity in ``test_quant_gptq_official.py``.
Tolerance: 1e-4 absolute on the dequantized weight (both
float32; the Cholesky kernels are the same XLA ones, differences come from the order of the lazy updates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("qwix")

from qwix._src.core import qarray as qwix_qarray  # noqa: E402
from qwix.contrib import gptq_core  # noqa: E402

from paperlab.quant import gptq  # noqa: E402


def _layer(seed: int, n_in: int, n_out: int):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  mix = jax.random.normal(k1, (n_in, n_in)) / np.sqrt(n_in) + jnp.eye(n_in)
  x = jax.random.normal(k2, (512, n_in)) @ mix * jnp.exp(jax.random.uniform(k3, (n_in,), minval=-1, maxval=1))
  w = 0.1 * jax.random.normal(jax.random.fold_in(k1, 1), (n_in, n_out))
  return w, gptq.hessian(x)


@pytest.mark.parametrize("qtype,group_size,blocksize", [
    (jnp.int4, None, 128),
    (jnp.int4, 16, 32),  # several lazy-update blocks, several groups per block
])
def test_gptq_without_act_order_matches_qwix(qtype, group_size, blocksize):
  n_in, n_out = 48, 16
  bits = int(jnp.iinfo(qtype).bits)
  w, h = _layer(bits + (group_size or 0), n_in, n_out)
  how = qwix_qarray.HowToQuantize(qtype=qtype, channelwise_axes=[0],
                                  tiled_axes={} if group_size is None else {1: group_size},
                                  calibration_method="absmax")
  # qwix takes W as (out, in); jit only to trace its per-column Python loop once
  q_ref, _ = jax.jit(lambda w, h: gptq_core.quantize_weight(w, h, how, blocksize=blocksize))(w.T, h)
  ref = np.asarray(qwix_qarray.dequantize(q_ref)).T
  ours = gptq.gptq_layer(w, h, bits=bits, group_size=group_size, symmetric=True, blocksize=blocksize)
  np.testing.assert_allclose(np.asarray(ours.w_hat), ref, atol=1e-4, rtol=0)
