"""The unified view of parameter-efficient transfer learning: prefix tuning as gated attention, parallel /
sequential adapters, and their Mix-And-Match (MAM) composition.

He et al., "Towards a Unified View of Parameter-Efficient Transfer Learning", arXiv:2110.04366, eq. 5-10 and Sec. 4:

* prefix tuning prepends ``l`` trainable key/value vectors ``P_k, P_v``; the attention output is exactly
  ``(1 - lambda(x)) Attn(q, K, V) + lambda(x) Attn(q, P_k, P_v)`` with
  ``lambda(x) = sum exp(q P_k^T) / (sum exp(q P_k^T) + sum exp(q K^T))`` (eq. 7; computed here with log-sum-exps,
  so ``lambda = sigmoid(lse_P - lse_K)``);
* an adapter is ``h <- h + s f(x W_down) W_up``: *sequential* when ``x`` is the sub-layer's output ``h`` (Houlsby),
  *parallel* when ``x`` is the sub-layer's input (eq. 9-10);
* the MAM adapter (Sec. 4.6) is prefix tuning with ``l = 30`` prefixes at every attention layer plus a scaled
  parallel adapter (``r = 512``, ``s = 4``) at every FFN: :func:`mam`.

All functions are jittable and broadcast over leading (batch, head) axes.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from paperlab import _checks

__all__ = ["attention", "prefix_attention", "sequential_adapter", "parallel_adapter", "MAMConfig", "MAM", "mam"]


def _check_last(name: str, a: jax.Array, d: int) -> None:
  if a.shape[-1] != d:
    raise ValueError(f"{name} must have last dimension {d} (the query's), got shape {a.shape}.")


def _logits(q: jax.Array, k: jax.Array, scale: float | None, mask: jax.Array | None) -> jax.Array:
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  s = jnp.einsum("...nd,...md->...nm", q, k) * jnp.asarray(scale, q.dtype)
  return s if mask is None else jnp.where(mask, s, -jnp.inf)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None,
              mask: jax.Array | None = None) -> jax.Array:
  """``softmax(q k^T * scale) v`` over the last two axes (``scale`` default ``1/sqrt(d)``); ``mask`` (bool,
  broadcastable to ``(..., n, m)``, True = attend) hides keys; every query must see at least one key."""
  _check_last("k", k, q.shape[-1])
  return jax.nn.softmax(_logits(q, k, scale, mask), axis=-1) @ v


def prefix_attention(q: jax.Array, k: jax.Array, v: jax.Array, pk: jax.Array, pv: jax.Array, *,
                     scale: float | None = None, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Prefix tuning in the paper's gated form (eq. 7): ``(out, lambda)`` with
  ``out = (1 - lambda) Attn(q, K, V) + lambda Attn(q, P_k, P_v)`` and
  ``lambda = sum exp(q P_k^T) / (sum exp(q P_k^T) + sum exp(q K^T))`` of shape ``(..., n, 1)``.

  ``out`` is exactly attention over the concatenations ``[P_k; K]``, ``[P_v; V]`` (the direct form; it equals
  ``attention(q, concat([pk, k]), concat([pv, v]))`` up to float rounding).

  Args:
    q: queries ``(..., n, d)``.
    k, v: keys and values ``(..., m, d)`` / ``(..., m, d_v)``.
    pk, pv: the ``l`` prefixes ``(..., l, d)`` / ``(..., l, d_v)`` (broadcast over the leading axes).
    scale: logit scale (default ``1/sqrt(d)``).
    mask: optional bool mask over the keys ``K`` (e.g. causal), broadcastable to ``(..., n, m)``; prefixes are
      visible to every query, as in prefix tuning. Every query must see at least one key of ``K``.

  Raises:
    ValueError: ``pk`` / ``k`` whose last dimension is not the query's, or ``pk`` and ``pv`` holding different
      numbers of prefixes.
  """
  _check_last("k", k, q.shape[-1])
  _check_last("pk", pk, q.shape[-1])
  if pk.shape[-2] != pv.shape[-2]:
    raise ValueError(f"pk and pv must hold the same number of prefixes, got {pk.shape} and {pv.shape}.")
  s_k, s_p = _logits(q, k, scale, mask), _logits(q, pk, scale, None)
  lse_k = jax.nn.logsumexp(s_k, axis=-1, keepdims=True)
  lse_p = jax.nn.logsumexp(s_p, axis=-1, keepdims=True)
  lam = jax.nn.sigmoid(lse_p - lse_k)
  out = (1 - lam) * (jnp.exp(s_k - lse_k) @ v) + lam * (jnp.exp(s_p - lse_p) @ pv)
  return out, lam


def sequential_adapter(h: jax.Array, w_down: jax.Array, w_up: jax.Array, *, s: float = 1.0,
                       f: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  """Houlsby's sequential adapter on a sub-layer output ``h``: ``h + s f(h W_down) W_up``."""
  return h + s * f(h @ w_down) @ w_up


def parallel_adapter(h: jax.Array, x: jax.Array, w_down: jax.Array, w_up: jax.Array, *, s: float = 4.0,
                     f: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
  """The (scaled) parallel adapter: ``h + s f(x W_down) W_up`` with ``x`` the sub-layer's *input* (eq. 10; the MAM
  adapter's FFN part uses ``s = 4``)."""
  if x.shape[-1] != w_down.shape[0]:
    raise ValueError(f"x's last dimension {x.shape[-1]} must equal w_down's first {w_down.shape[0]}.")
  return h + s * f(x @ w_down) @ w_up


class MAMConfig(NamedTuple):
  """The MAM adapter's hyperparameters; defaults are the paper's (Sec. 4.6, Table 4: prefix length ``l = 30``,
  parallel FFN adapter bottleneck ``r = 512`` scaled by ``s = 4``, ReLU)."""

  prefix_length: int = 30
  adapter_rank: int = 512
  adapter_scale: float = 4.0
  prefix_init_std: float = 0.02
  activation: Callable[[jax.Array], jax.Array] = jax.nn.relu


class MAM(NamedTuple):
  """The MAM adapter as three pure functions (built by :func:`mam`).

  * ``init(key, *, num_layers, num_heads, head_dim, d_model, dtype=jnp.float32) -> params`` with
    ``params["prefix_k"], params["prefix_v"]: (num_layers, num_heads, l, head_dim)`` drawn
    ``N(0, prefix_init_std^2)`` (directly, without the prefix-tuning reparametrization MLP) and
    ``params["w_down"]: (num_layers, d_model, r)`` kaiming-uniform, ``params["w_up"]: (num_layers, r, d_model)`` zero;
    index one layer with ``jax.tree.map(lambda p: p[i], params)``.
  * ``attention(layer, q, k, v, *, mask=None) -> (out, lambda)``: :func:`prefix_attention` of queries
    ``(..., num_heads, n, head_dim)`` with that layer's prefixes (the attention sub-layer's part).
  * ``ffn(layer, h, x) -> h + s f(x W_down) W_up``: :func:`parallel_adapter` on the FFN output ``h`` fed the FFN's
    input ``x`` (the FFN sub-layer's part).
  """

  config: MAMConfig
  init: Callable[..., dict[str, jax.Array]]
  attention: Callable[..., tuple[jax.Array, jax.Array]]
  ffn: Callable[..., jax.Array]


def mam(config: MAMConfig | Mapping[str, Any] | None = None) -> MAM:
  """The Mix-And-Match adapter of He et al. (arXiv:2110.04366, Sec. 4.6): prefix tuning (eq. 7) at every attention
  layer plus a scaled parallel adapter ``h + s f(x W_down) W_up`` (eq. 10) at every FFN, the paper's recommended
  composition of the design dimensions. Wire ``attention`` and ``ffn`` into a model's blocks (e.g. the attention
  and MLP of :class:`paperlab.models.CharTransformer`); all three functions are jittable.

  Args:
    config: a :class:`MAMConfig`, a mapping of its fields, or None for the paper's defaults
      (``prefix_length=30, adapter_rank=512, adapter_scale=4.0``).

  Raises:
    ValueError: a non-positive ``prefix_length`` / ``adapter_rank``, a negative ``adapter_scale`` or
      ``prefix_init_std``, or an unknown field.
  """
  if config is None:
    config = MAMConfig()
  elif not isinstance(config, MAMConfig):
    unknown = set(config) - set(MAMConfig._fields)
    if unknown:
      raise ValueError(f"config has unknown fields {sorted(unknown)}; accepted are {list(MAMConfig._fields)}.")
    config = MAMConfig(**config)
  for name in ("prefix_length", "adapter_rank"):
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}.")
  _checks.check_non_negative("adapter_scale", config.adapter_scale)
  _checks.check_non_negative("prefix_init_std", config.prefix_init_std)
  l, r = config.prefix_length, config.adapter_rank

  def init(key: jax.Array, *, num_layers: int, num_heads: int, head_dim: int, d_model: int,
           dtype=jnp.float32) -> dict[str, jax.Array]:
    kk, kv, kd = jax.random.split(key, 3)
    shape = (num_layers, num_heads, l, head_dim)
    bound = d_model ** -0.5  # torch's kaiming_uniform_(a=sqrt(5)) on a (r, d_model) weight: U(+-1/sqrt(fan_in))
    return {"prefix_k": (config.prefix_init_std * jax.random.normal(kk, shape)).astype(dtype),
            "prefix_v": (config.prefix_init_std * jax.random.normal(kv, shape)).astype(dtype),
            "w_down": jax.random.uniform(kd, (num_layers, d_model, r), dtype, -bound, bound),
            "w_up": jnp.zeros((num_layers, r, d_model), dtype)}

  def attn(layer: Mapping[str, jax.Array], q: jax.Array, k: jax.Array, v: jax.Array, *,
           mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return prefix_attention(q, k, v, layer["prefix_k"], layer["prefix_v"], mask=mask)

  def ffn(layer: Mapping[str, jax.Array], h: jax.Array, x: jax.Array) -> jax.Array:
    return parallel_adapter(h, x, layer["w_down"], layer["w_up"], s=config.adapter_scale, f=config.activation)

  return MAM(config, init, attn, ffn)
