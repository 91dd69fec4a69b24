"""Properties of the unified view (He et al., arXiv:2110.04366) against torch's ``scaled_dot_product_attention``.

Oracle: eq. 7's identity computed in torch -- prefix tuning is attention over the concatenations ``[P_k; K]``,
``[P_v; V]`` (the direct form, one SDPA call) and also the gated mix ``(1 - lambda) SDPA(q, K, V) + lambda SDPA(q,
P_k, P_v)`` with lambda from torch's logsumexps. ``paperlab.peft.prefix_attention`` must equal both.

Tolerances. In float64 the identity is exact up to rounding: 1e-12. In float32 a fixed 1e-6 is not principled:
peaked attention (large logits) amplifies rounding (an earlier draw differed by 3e-6 at 1e-6). Each softmax weight
``exp(s_j - lse)`` carries a relative error of about ``eps (|s_j| + |lse|) <= 2 eps L`` (``L``: the largest
|scaled logit|, incl. the dot products' own rounding), and the outputs are convex combinations of the value rows
(``<= V = max |v|``), so both float32 forms lie within ``c eps32 (1 + L) V`` of the exact value; ``c = 16`` leaves
room for the sums. The same bound is checked against a float64 reference, so the tolerance is about float32 rounding,
not about one form agreeing with the other.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import paperlab.peft as pp

EPS32 = float(np.finfo(np.float32).eps)


def _draw(seed, shape, scale, dtype=np.float32):
  n, m, l, d, heads = shape
  rng = np.random.default_rng(seed)
  q = scale * rng.standard_normal((heads, n, d))
  k, v = rng.standard_normal((heads, m, d)), rng.standard_normal((heads, m, d))
  pk, pv = rng.standard_normal((heads, l, d)), rng.standard_normal((heads, l, d))
  return [a.astype(dtype) for a in (q, k, v, pk, pv)]


def _torch_direct(q, k, v, pk, pv, mask=None):
  t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
  attn_mask = None
  if mask is not None:  # prefixes are visible to every query
    attn_mask = torch.cat([torch.ones(mask.shape[:-1] + (pk.shape[-2],), dtype=torch.bool), t(mask)], dim=-1)
  out = torch.nn.functional.scaled_dot_product_attention(
      t(q), torch.cat([t(pk), t(k)], -2), torch.cat([t(pv), t(v)], -2), attn_mask=attn_mask)
  return out.numpy()


def _torch_gated(q, k, v, pk, pv):
  t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731
  sdpa = torch.nn.functional.scaled_dot_product_attention
  s = q.shape[-1] ** -0.5
  lse_k = torch.logsumexp(t(q) @ t(k).transpose(-1, -2) * s, -1, keepdim=True)
  lse_p = torch.logsumexp(t(q) @ t(pk).transpose(-1, -2) * s, -1, keepdim=True)
  lam = torch.sigmoid(lse_p - lse_k)
  return ((1 - lam) * sdpa(t(q), t(k), t(v)) + lam * sdpa(t(q), t(pk), t(pv))).numpy(), lam.numpy()


def _max_logit(q, k, pk):
  s = q.shape[-1] ** -0.5
  return np.abs(np.concatenate([np.einsum("hnd,hmd->hnm", q, k), np.einsum("hnd,hld->hnl", q, pk)], -1) * s).max()


_prefix_attention = jax.jit(pp.prefix_attention)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(5, 7, 4, 8, 2), (16, 24, 30, 16, 4)]),
       scale=st.floats(0.1, 8.0))
def test_prefix_attention_is_the_gated_form_of_attention_over_concatenated_prefixes(seed, shape, scale):
  q, k, v, pk, pv = _draw(seed, shape, scale)
  out, lam = _prefix_attention(q, k, v, pk, pv)
  exact = _torch_direct(*(a.astype(np.float64) for a in (q, k, v, pk, pv)))
  big_l = _max_logit(q, k, pk)
  tol = 16 * EPS32 * (1 + big_l) * max(np.abs(v).max(), np.abs(pv).max())
  np.testing.assert_allclose(out, exact, rtol=0, atol=tol)  # ours (gated form) vs the direct form
  np.testing.assert_allclose(_torch_direct(q, k, v, pk, pv), exact, rtol=0, atol=tol)  # the bound is float32's
  gated64, lam64 = _torch_gated(*(a.astype(np.float64) for a in (q, k, v, pk, pv)))
  np.testing.assert_allclose(gated64, exact, rtol=0, atol=1e-12)  # eq. 7 itself, in torch
  np.testing.assert_allclose(lam, lam64, rtol=0, atol=16 * EPS32 * (1 + big_l))  # sigmoid' <= 1/4
  assert lam.shape == q.shape[:-1] + (1,) and np.all((np.asarray(lam) >= 0) & (np.asarray(lam) <= 1))


def test_prefix_attention_is_exact_in_float64_and_respects_a_causal_mask():
  with jax.enable_x64(True):
    q, k, v, pk, pv = _draw(7, (6, 6, 3, 8, 2), 4.0, np.float64)
    mask = np.tril(np.ones((6, 6), bool))
    f = jax.jit(pp.prefix_attention)
    out, lam = f(q, k, v, pk, pv, mask=mask)
    np.testing.assert_allclose(out, _torch_direct(q, k, v, pk, pv, mask), rtol=0, atol=1e-12)
    plain, _ = f(q, k, v, pk, pv)
    np.testing.assert_allclose(plain, _torch_direct(q, k, v, pk, pv), rtol=0, atol=1e-12)
    # the first query sees one key of K and all prefixes: lambda = sum_P e / (sum_P e + e_0)
    s = 8 ** -0.5
    e_p = np.exp(np.einsum("hd,hld->hl", q[:, 0], pk) * s).sum(-1)
    e_0 = np.exp(np.einsum("hd,hd->h", q[:, 0], k[:, 0]) * s)
    np.testing.assert_allclose(lam[:, 0, 0], e_p / (e_p + e_0), rtol=1e-12)


def test_mam_has_the_papers_defaults_and_composes_prefix_attention_with_a_scaled_parallel_adapter():
  spec = pp.mam()
  assert spec.config[:3] == (30, 512, 4.0)  # l = 30 prefixes, r = 512, s = 4 (Sec. 4.6)
  small = pp.mam({"prefix_length": 5, "adapter_rank": 3})
  assert small.config.adapter_scale == 4.0
  params = small.init(jax.random.key(0), num_layers=2, num_heads=2, head_dim=4, d_model=8)
  assert params["prefix_k"].shape == params["prefix_v"].shape == (2, 2, 5, 4)
  assert params["w_down"].shape == (2, 8, 3) and not np.any(params["w_up"])
  layer = {n: np.asarray(p[1]) for n, p in params.items()}
  rng = np.random.default_rng(1)
  x, h = rng.standard_normal((2, 3, 7, 8), np.float32)
  ffn = jax.jit(small.ffn)
  np.testing.assert_array_equal(ffn(layer, h, x), h)  # W_up = 0: the FFN starts unchanged
  layer["w_up"] = rng.standard_normal((3, 8), np.float32)
  np.testing.assert_allclose(ffn(layer, h, x), h + 4.0 * np.maximum(x @ layer["w_down"], 0) @ layer["w_up"],
                             rtol=1e-5, atol=1e-5)
  q, k, v = rng.standard_normal((3, 3, 2, 7, 4), np.float32)  # (batch, heads, n, head_dim) each
  mask = np.tril(np.ones((7, 7), bool))
  out, lam = jax.jit(small.attention)(layer, q, k, v, mask=mask)
  assert out.shape == q.shape and lam.shape == (3, 2, 7, 1)
  pk, pv = (np.broadcast_to(layer[n], (3, 2, 5, 4)).copy() for n in ("prefix_k", "prefix_v"))
  np.testing.assert_allclose(out, _torch_direct(q, k, v, pk, pv, mask), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="prefix_length"):
    pp.mam({"prefix_length": 0})
  with pytest.raises(ValueError, match="unknown fields"):
    pp.mam({"rank": 4})


def test_adapters_identity_at_zero_up_and_parallel_on_output_is_sequential():
  rng = np.random.default_rng(0)
  x, h = rng.standard_normal((2, 5, 6), np.float32)
  down, up = rng.standard_normal((6, 3), np.float32), rng.standard_normal((3, 6), np.float32)
  np.testing.assert_array_equal(pp.parallel_adapter(h, x, down, np.zeros_like(up)), h)
  np.testing.assert_allclose(pp.parallel_adapter(h, h, down, up, s=1.0), pp.sequential_adapter(h, down, up),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="pk and pv"):
    pp.prefix_attention(x[None], x[None], x[None], x[None, :2], x[None, :3])
