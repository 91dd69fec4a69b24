"""Hypothesis properties of QAT quantizers: the STE fake quantizer is within half a step of its input (the PTQ grid,
whose step is the group's scale); LSQ outputs lie on the step grid with at most 2^b levels; a QA-LoRA merge keeps
the codes and reproduces the adapted forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from paperlab.quant import qat, qat_recipes, rtn

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True)


@SETTINGS
@given(seed=st.integers(0, 2 ** 16), bits=st.integers(2, 8), scale=st.floats(1e-3, 1e3))
def test_fake_quantize_is_within_half_a_step(seed, bits, scale):
  w = jnp.asarray(np.random.default_rng(seed).normal(size=(32, 4)) * scale, jnp.float32)
  fq = qat.fake_quantize(w, bits=bits, group_size=16)
  step = jnp.repeat(rtn.quantize_rtn(w, bits=bits, group_size=16).scale, 16, axis=0)
  assert bool(jnp.all(jnp.abs(fq - w) <= 0.5 * step * (1 + 1e-5)))


@SETTINGS
@given(seed=st.integers(0, 2 ** 16), bits=st.integers(2, 8), s=st.floats(1e-2, 10.0))
def test_lsq_output_is_on_the_step_grid(seed, bits, s):
  w = jnp.asarray(np.random.default_rng(seed).normal(size=(64,)) * 3, jnp.float32)
  out = np.asarray(qat.lsq_quantize(w, jnp.float32(s), bits=bits), np.float64)
  k = out / np.float32(s)
  np.testing.assert_allclose(k, np.round(k), atol=1e-4)
  assert k.min() >= -2 ** (bits - 1) - 1e-4 and k.max() <= 2 ** (bits - 1) - 1 + 1e-4


@SETTINGS
@given(seed=st.integers(0, 2 ** 16), r=st.integers(1, 4), alpha=st.floats(0.5, 32.0))
def test_qalora_merge_preserves_codes_and_forward(seed, r, alpha):
  rng = np.random.default_rng(seed)
  qw = rtn.quantize_rtn(jnp.asarray(rng.normal(size=(32, 6)), jnp.float32), bits=4, group_size=8)
  ad = {"lora_A": jnp.asarray(rng.normal(size=(r, 4)), jnp.float32),
        "lora_B": jnp.asarray(rng.normal(size=(6, r)) * 0.1, jnp.float32)}
  x = jnp.asarray(rng.normal(size=(3, 32)), jnp.float32)
  merged = qat_recipes.qalora_merge(qw, ad, alpha=alpha)
  np.testing.assert_array_equal(merged.codes, qw.codes)
  ref = qat_recipes.qalora_apply(x, qw, ad, alpha=alpha)
  np.testing.assert_allclose(x @ merged.w_hat, ref, rtol=1e-4, atol=1e-4 * (1 + float(jnp.max(jnp.abs(ref)))))
