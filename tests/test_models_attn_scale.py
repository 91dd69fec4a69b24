"""CharTransformer's ``attn_scale`` option: muP's ``1/d_head`` attention logits (Yang et al., "Tensor Programs V",
arXiv:2203.03466, Sec. 4 / Table 3) next to the standard ``1/sqrt(d_head)``.

Oracle: PyTorch's ``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=s)`` on the same
weights (the fused qkv kernel and the output projection transposed into ``F.linear``), float32, rtol 1e-5. Its
default ``scale=None`` is ``1/sqrt(d_head)``, so the default of the option is checked against torch's default.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab.models import CharTransformer
from paperlab.models.transformer import CausalSelfAttention

torch = pytest.importorskip("torch")

D_MODEL, HEADS, T, B = 24, 3, 7, 2  # d_head 8: 1/d_head and 1/sqrt(d_head) differ by a factor of sqrt(8)


def _torch_attention(attn: CausalSelfAttention, x: np.ndarray, scale: float | None) -> np.ndarray:
  """The module's attention recomputed in PyTorch with SDPA (causal, the given ``scale``)."""
  f = torch.nn.functional
  w_qkv = torch.from_numpy(np.asarray(attn.qkv.kernel.value).T.copy())  # Flax (in, out) -> torch (out, in)
  w_out = torch.from_numpy(np.asarray(attn.out.kernel.value).T.copy())
  xt = torch.from_numpy(np.array(x))
  b, t, d = xt.shape
  qkv = f.linear(xt, w_qkv).reshape(b, t, 3, HEADS, d // HEADS)
  q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (b, h, t, hd)
  out = f.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
  return f.linear(out.transpose(1, 2).reshape(b, t, d), w_out).numpy()


def _jit_apply(module, x):
  graphdef, state = nnx.split(module)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x)


@pytest.mark.parametrize("attn_scale, torch_scale, other", [
    ("sqrt", None, 1.0 / (D_MODEL // HEADS)),  # torch's default scale is 1/sqrt(d_head)
    ("mup", 1.0 / (D_MODEL // HEADS), None),
    (0.3, 0.3, None),
])
def test_attention_matches_torch_sdpa(attn_scale, torch_scale, other):
  attn = CausalSelfAttention(D_MODEL, HEADS, qk_layernorm=False, rngs=nnx.Rngs(0), attn_scale=attn_scale)
  x = np.asarray(jax.random.normal(jax.random.key(1), (B, T, D_MODEL), jnp.float32) * 3.0)  # peaked softmax
  out = _jit_apply(attn, jnp.asarray(x))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), _torch_attention(attn, x, torch_scale), rtol=1e-5, atol=1e-5)
  # control: torch with the other scale disagrees, so the comparison can fail
  assert not np.allclose(np.asarray(out), _torch_attention(attn, x, other), rtol=1e-3, atol=1e-3)


def test_char_transformer_mup_scale_equals_its_float_and_keeps_parameters():
  """``"mup"`` is the float ``1/d_head`` end to end (one jitted program for both), ``sqrt(d_head_base)/d_head`` at
  the base width (muP's 1/d_head with the ``mup`` package's ``attn_mult = d_head_base``) is the default there, so
  the base model is exactly SP, and the option adds no parameter (same tree, same init for a seed)."""
  d_head = D_MODEL // HEADS
  make = lambda s: CharTransformer(17, D_MODEL, 1, HEADS, T, attn_scale=s, rngs=nnx.Rngs(4))
  tokens = jax.random.randint(jax.random.key(2), (B, T), 0, 17)
  models = {"mup": make("mup"), "float": make(1.0 / d_head), "base": make(math.sqrt(d_head) / d_head),
            "sqrt": make("sqrt")}
  split = {k: nnx.split(m) for k, m in models.items()}
  run = jax.jit(lambda states, x: {k: nnx.merge(split[k][0], states[k])(x) for k in split})
  out = {k: np.asarray(v) for k, v in run({k: v[1] for k, v in split.items()}, tokens).items()}
  np.testing.assert_allclose(out["mup"], out["float"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["base"], out["sqrt"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out["mup"], out["sqrt"], rtol=1e-3, atol=1e-3)
  params = {k: nnx.to_pure_dict(nnx.state(m, nnx.Param)) for k, m in models.items()}
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params["mup"], params["sqrt"])))


def test_float_scale_is_state_that_can_be_vmapped():
  """A float ``attn_scale`` lives in an ``AttnScale`` variable: vmapping over its value gives, per value, the module
  built with that float (two parametrizations' attention in one program)."""
  from paperlab.models.transformer import AttnScale  # pylint: disable=g-import-not-at-top
  attn = CausalSelfAttention(D_MODEL, HEADS, qk_layernorm=False, rngs=nnx.Rngs(0), attn_scale=1.0)
  graphdef, params, scale = nnx.split(attn, nnx.Param, AttnScale)
  x = jax.random.normal(jax.random.key(1), (B, T, D_MODEL), jnp.float32) * 3.0
  values = jnp.asarray([1.0 / (D_MODEL // HEADS), 0.3], jnp.float32)
  set_scale = lambda v: jax.tree.map(lambda _: v, scale)
  out = jax.jit(jax.vmap(lambda v: nnx.merge(graphdef, params, set_scale(v))(x)))(values)
  for i, v in enumerate((1.0 / (D_MODEL // HEADS), 0.3)):
    np.testing.assert_allclose(np.asarray(out[i]), _torch_attention(attn, np.asarray(x), v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", ["sqrt_d", "MUP", 0.0, -1.0, float("nan"), float("inf"), True, None])
def test_bad_attn_scale_raises_naming_it(bad):
  with pytest.raises(ValueError, match="attn_scale must be one of"):
    CharTransformer(17, D_MODEL, 1, HEADS, T, attn_scale=bad, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="attn_scale"):
    CausalSelfAttention(D_MODEL, HEADS, qk_layernorm=False, rngs=nnx.Rngs(0), attn_scale=bad)
