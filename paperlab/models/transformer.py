"""A decoder-only character-level transformer with the options the papers need."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from paperlab.models._checks import positive


class CausalSelfAttention(nnx.Module):
  """Multi-head causal attention; optional LayerNorm on queries and keys (qk-layernorm)."""

  def __init__(self, d_model: int, num_heads: int, *, qk_layernorm: bool, rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}).")
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, rngs=rngs)
    self.out = nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
    if qk_layernorm:
      self.q_norm = nnx.LayerNorm(self.head_dim, use_bias=False, rngs=rngs)
      self.k_norm = nnx.LayerNorm(self.head_dim, use_bias=False, rngs=rngs)
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (b, t, h, hd)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(self.head_dim, x.dtype))
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    attn = jax.nn.softmax(scores, axis=-1)
    return self.out(jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d))


class Block(nnx.Module):
  def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, *, qk_layernorm: bool, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, num_heads, qk_layernorm=qk_layernorm, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.fc1 = nnx.Linear(d_model, mlp_ratio * d_model, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_ratio * d_model, d_model, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln1(x))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class CharTransformer(nnx.Module):
  """Pre-LN decoder-only transformer over character ids; returns logits ``(batch, time, vocab_size)``.

  Args:
    vocab_size: number of token ids.
    d_model: width (scale it for muP-style studies).
    num_layers: transformer blocks.
    num_heads: attention heads (must divide ``d_model``).
    seq_len: maximum context (learned positional embeddings).
    mlp_ratio: hidden width of the MLP as a multiple of ``d_model``.
    qk_layernorm: LayerNorm on queries and keys per head (stabilizes attention logits).
    tied_embeddings: compute logits with the transposed token embedding instead of a separate head.
    rngs: ``nnx.Rngs``.

  The raw logits are returned (no softmax), so z-loss style regularizers can use them directly.
  """

  def __init__(self, vocab_size: int, d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
               seq_len: int = 64, *, mlp_ratio: int = 4, qk_layernorm: bool = False,
               tied_embeddings: bool = False, rngs: nnx.Rngs):
    self.vocab_size = positive("vocab_size", vocab_size)
    self.seq_len = positive("seq_len", seq_len)
    d_model = positive("d_model", d_model)
    num_heads = positive("num_heads", num_heads)
    if d_model % num_heads:
      raise ValueError(f"num_heads must divide d_model; got d_model={d_model}, num_heads={num_heads}.")
    self.embed = nnx.Embed(self.vocab_size, d_model, rngs=rngs)
    self.pos = nnx.Param(jax.random.normal(rngs.params(), (self.seq_len, d_model)) * 0.02)
    self.blocks = nnx.List([
        Block(d_model, num_heads, positive("mlp_ratio", mlp_ratio), qk_layernorm=qk_layernorm, rngs=rngs)
        for _ in range(positive("num_layers", num_layers))])
    self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
    self.head = None if tied_embeddings else nnx.Linear(d_model, self.vocab_size, use_bias=False, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or tokens.shape[1] > self.seq_len:
      raise ValueError(f"tokens must have shape (batch, time) with time <= seq_len={self.seq_len}, "
                       f"got {tuple(tokens.shape)}.")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}.")
    x = self.embed(tokens) + self.pos[None, : tokens.shape[1]]
    for block in self.blocks:
      x = block(x)
    x = self.ln_f(x)
    return self.embed.attend(x) if self.head is None else self.head(x)
