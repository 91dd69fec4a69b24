"""A decoder-only character-level transformer with the options the papers need."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from paperlab.models._checks import positive

ATTN_SCALES = ("sqrt", "mup")


def check_attn_scale(attn_scale: str | float) -> str | float:
  """``attn_scale`` if it is ``"sqrt"``, ``"mup"`` or a positive finite number, else ``ValueError`` naming it."""
  if isinstance(attn_scale, str):
    if attn_scale not in ATTN_SCALES:
      raise ValueError(f"attn_scale must be one of {list(ATTN_SCALES)} or a positive float, got {attn_scale!r}.")
    return attn_scale
  if isinstance(attn_scale, bool) or not isinstance(attn_scale, (int, float)) or not (
      math.isfinite(attn_scale) and attn_scale > 0):
    raise ValueError(f"attn_scale must be one of {list(ATTN_SCALES)} or a positive float, got {attn_scale!r}.")
  return float(attn_scale)


class AttnScale(nnx.Variable):
  """A float attention-logit multiplier: a non-trainable float32 variable (in the model's non-``Param`` state), so
  it can be traced and ``vmap``-ed like any other hyperparameter (e.g. two parametrizations in one program)."""


class CausalSelfAttention(nnx.Module):
  """Multi-head causal attention; optional LayerNorm on queries and keys (qk-layernorm).

  ``attn_scale`` multiplies the logits ``q . k``: ``"sqrt"`` is ``1/sqrt(d_head)`` (Vaswani et al.), ``"mup"`` is
  ``1/d_head`` (Yang et al., "Tensor Programs V", arXiv:2203.03466, Sec. 4 / Table 3), a float is the multiplier
  itself (``torch.nn.functional.scaled_dot_product_attention``'s ``scale``), held in an :class:`AttnScale` variable.
  """

  def __init__(self, d_model: int, num_heads: int, *, qk_layernorm: bool, rngs: nnx.Rngs,
               attn_scale: str | float = "sqrt"):
    if d_model % num_heads:
      raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}).")
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    attn_scale = check_attn_scale(attn_scale)
    self.attn_scale = attn_scale if isinstance(attn_scale, str) else "float"
    self.logit_scale = AttnScale(jnp.asarray(attn_scale, jnp.float32)) if self.attn_scale == "float" else None
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
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if self.attn_scale == "sqrt":
      scores = scores / jnp.sqrt(jnp.asarray(self.head_dim, x.dtype))
    elif self.attn_scale == "mup":
      scores = scores / jnp.asarray(self.head_dim, x.dtype)
    else:
      scores = scores * self.logit_scale.get_value().astype(scores.dtype)
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    attn = jax.nn.softmax(scores, axis=-1)
    return self.out(jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, d))


class Block(nnx.Module):
  def __init__(self, d_model: int, num_heads: int, mlp_ratio: int, *, qk_layernorm: bool, rngs: nnx.Rngs,
               attn_scale: str | float = "sqrt"):
    self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, num_heads, qk_layernorm=qk_layernorm, rngs=rngs, attn_scale=attn_scale)
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
    attn_scale: multiplier of the attention logits ``q . k``: ``"sqrt"`` (default) is ``1/sqrt(d_head)``;
      ``"mup"`` is muP's ``1/d_head`` (Yang et al., "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot
      Hyperparameter Transfer", arXiv:2203.03466, Sec. 4 and Table 3: ``softmax(q^T k / d_head)``, so that the
      logits stay O(1) once training correlates ``q`` and ``k``); a positive float is the multiplier itself (e.g.
      ``sqrt(d_head_base) / d_head``, which is ``1/d_head`` scaling and equals SP at the base width, the ``mup``
      package's ``attn_mult = d_head_base``). A float is held in an ``AttnScale`` variable (non-trainable state, next
      to the parameters), so it can be traced and vmapped; the strings are static.
    rngs: ``nnx.Rngs``.

  The raw logits are returned (no softmax), so z-loss style regularizers can use them directly.
  """

  def __init__(self, vocab_size: int, d_model: int = 64, num_layers: int = 2, num_heads: int = 4,
               seq_len: int = 64, *, mlp_ratio: int = 4, qk_layernorm: bool = False,
               tied_embeddings: bool = False, attn_scale: str | float = "sqrt", rngs: nnx.Rngs):
    self.vocab_size = positive("vocab_size", vocab_size)
    self.seq_len = positive("seq_len", seq_len)
    d_model = positive("d_model", d_model)
    num_heads = positive("num_heads", num_heads)
    if d_model % num_heads:
      raise ValueError(f"num_heads must divide d_model; got d_model={d_model}, num_heads={num_heads}.")
    attn_scale = check_attn_scale(attn_scale)
    self.embed = nnx.Embed(self.vocab_size, d_model, rngs=rngs)
    self.pos = nnx.Param(jax.random.normal(rngs.params(), (self.seq_len, d_model)) * 0.02)
    self.blocks = nnx.List([
        Block(d_model, num_heads, positive("mlp_ratio", mlp_ratio), qk_layernorm=qk_layernorm, rngs=rngs,
              attn_scale=attn_scale)
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
