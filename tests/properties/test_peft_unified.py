"""Properties of the unified view (He et al., arXiv:2110.04366): prefix attention computed directly (prefixes
concatenated to K and V) equals the paper's gated form (1 - lambda) Attn(q, K, V) + lambda Attn(q, P_k, P_v) to 1e-6
for any shapes and values; lambda lies in (0, 1) and matches its definition; an adapter with W_up = 0 is the
identity, and a parallel adapter fed the sub-layer's output is the sequential one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import paperlab.peft as pp


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(5, 7, 4, 8, 2), (1, 3, 1, 4, 1)]),
       scale=st.floats(0.1, 3.0))
def test_prefix_attention_equals_gated_form(seed, shape, scale):
  n, m, l, d, heads = shape  # two shape sets: every new shape recompiles the eager ops
  ks = jax.random.split(jax.random.key(seed), 5)
  q = scale * jax.random.normal(ks[0], (heads, n, d))
  k, v = jax.random.normal(ks[1], (heads, m, d)), jax.random.normal(ks[2], (heads, m, d))
  pk, pv = jax.random.normal(ks[3], (heads, l, d)), jax.random.normal(ks[4], (heads, l, d))
  direct = pp.prefix_attention(q, k, v, pk, pv)
  gated, lam = pp.prefix_attention_gated(q, k, v, pk, pv)
  np.testing.assert_allclose(gated, direct, atol=1e-6, rtol=1e-6)
  s = d ** -0.5
  e_p = jnp.exp(jnp.einsum("hnd,hld->hnl", q, pk) * s).sum(-1, keepdims=True)
  e_k = jnp.exp(jnp.einsum("hnd,hmd->hnm", q, k) * s).sum(-1, keepdims=True)
  np.testing.assert_allclose(lam, e_p / (e_p + e_k), rtol=1e-5)
  assert np.all((np.asarray(lam) > 0) & (np.asarray(lam) < 1))


def test_adapters_identity_at_zero_up_and_parallel_on_output_is_sequential():
  ks = jax.random.split(jax.random.key(0), 4)
  x, h = jax.random.normal(ks[0], (5, 6)), jax.random.normal(ks[1], (5, 6))
  down, up = jax.random.normal(ks[2], (6, 3)), jax.random.normal(ks[3], (3, 6))
  np.testing.assert_array_equal(pp.parallel_adapter(h, x, down, jnp.zeros_like(up)), h)
  np.testing.assert_allclose(pp.parallel_adapter(h, h, down, up, s=1.0), pp.sequential_adapter(h, down, up),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="pk and pv"):
    pp.prefix_attention(x[None], x[None], x[None], x[None, :2], x[None, :3])
