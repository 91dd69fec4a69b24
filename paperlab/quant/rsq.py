"""RSQ: rotate, scale the tokens by importance, then GPTQ (Sung et al., "RSQ: Learning from Important Tokens Leads to
Better Quantized LLMs", arXiv:2503.01820, ICML 2025).

GPTQ (:mod:`paperlab.quant.gptq`) minimizes the layer-output error ``||X W - X W_hat||^2`` over all calibration
tokens alike. RSQ weights each token ``n`` by an importance ``r_n`` (Sec. 3, Eq. 3), i.e. the rows of ``X`` are
scaled by ``sqrt(r_n)`` and the Hessian becomes

    ``H = 2 / N * sum_n r_n x_n x_n^T = 2 / N * X^T diag(r) X``,

after QuaRot-style random Hadamard rotations that spread outliers over the input features. The importance the paper
settles on, *attention concentration* (AttnCon), is the attention probability each token receives, summed over heads
and queries, min-max normalized per sequence into ``[r_min, r_max]``. The steps follow the official code
(github.com/ylsung/rsq, commit 1a7cf31):

* :func:`token_importance` is ``OriginalAttentionWeighting.compute_weight`` (``fake_quant/input_weighting_module.py``)
  with ``normalize="default"``: sum over heads, sum over queries, ``(a - min) / (max - min) * (r_max - r_min) +
  r_min``; the released script ``scripts/run_rsq.sh`` uses ``--min_value 0.005 --max_value 1``.
* :func:`weighted_hessian` is ``GPTQ.add_batch(inp, out, weighting)`` (``fake_quant/gptq_utils.py``): each
  sequence's weights are rescaled to mean 1 (``weighting / weighting.sum() * len``) and the inputs multiplied by
  their square root before ``X^T X``.
* :func:`random_hadamard` is ``random_hadamard_matrix`` (``fake_quant/hadamard_utils.py``): ``diag(s) H / sqrt(n)``
  with random signs ``s``, for ``n`` a power of two.

With ``r = 1`` and no rotation RSQ *is* GPTQ, bit for bit (the scaled inputs are the inputs). The rotation here acts
on each Dense layer's input features (``W -> Q^T W``, inputs ``x -> x Q``), the form QuaRot uses online before the
MLP's down projection; the paper fuses one rotation of the residual stream into the weights, which needs RMSNorm
(a LayerNorm's mean subtraction does not commute with a rotation). Either way the layer quantized is ``Q^T W`` under
the Hessian ``Q^T H Q``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from paperlab import _checks
from paperlab.quant.gptq import gptq_layer
from paperlab.quant.mambaquant import hadamard
from paperlab.quant.rtn import QuantizedWeight, check_finite, check_kernel

__all__ = ["token_importance", "weighted_hessian", "random_hadamard", "rsq_layer", "rsq_model"]

_KINDS = ("attn_concentration", "uniform")


def token_importance(attn_probs: jax.Array, *, kind: str = "attn_concentration", r_min: float = 0.005,
                     r_max: float = 1.0) -> jax.Array:
  """Per-token importance ``r`` of RSQ (arXiv:2503.01820, Sec. 3.2, "attention concentration").

  ``a_k = sum_h sum_q P[b, h, q, k]`` is the attention each key token ``k`` receives; per sequence it is mapped
  linearly onto ``[r_min, r_max]`` (the official ``normalize_weight``: ``(a - min a) / (max a - min a) *
  (r_max - r_min) + r_min``, clipped).

  Args:
    attn_probs: attention probabilities ``(batch, heads, queries, keys)`` (rows summing to one, causal or not).
    kind: ``"attn_concentration"`` (the paper's choice, AttnCon) or ``"uniform"`` (``r = 1``: plain GPTQ).
    r_min, r_max: the range of ``r`` (the released script: ``0.005`` and ``1``); ``0 <= r_min <= r_max``.

  Returns:
    ``float32`` ``(batch, keys)``. Jittable. A sequence whose tokens all receive the same attention gives NaN in the
    official code (0 / 0); here it gets ``r_max`` for every token.

  Raises:
    ValueError: ``attn_probs`` not 4-D, unknown ``kind``, ``r_min``/``r_max`` out of range, non-finite input.
  """
  _checks.check_choice("kind", kind, _KINDS)
  if not hasattr(attn_probs, "shape") or len(attn_probs.shape) != 4:
    raise ValueError(f"attn_probs must have shape (batch, heads, queries, keys), got shape "
                     f"{getattr(attn_probs, 'shape', type(attn_probs).__name__)}.")
  check_finite("attn_probs", attn_probs)
  _checks.check_non_negative("r_min", r_min)
  _checks.check_non_negative("r_max", r_max)
  lo, hi = _checks._concrete(r_min), _checks._concrete(r_max)  # pylint: disable=protected-access
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(f"r_min must not exceed r_max, got r_min={r_min!r}, r_max={r_max!r}.")
  p = jnp.asarray(attn_probs, jnp.float32)
  if kind == "uniform":
    return jnp.ones((p.shape[0], p.shape[3]), jnp.float32)
  a = p.sum(axis=1).sum(axis=1)  # over heads, then over queries (the official order)
  amin, amax = a.min(axis=1, keepdims=True), a.max(axis=1, keepdims=True)
  span = amax - amin
  t = jnp.where(span > 0, (a - amin) / jnp.where(span > 0, span, 1.0), 1.0)
  return jnp.clip(t * (r_max - r_min) + r_min, r_min, r_max)


def weighted_hessian(x: jax.Array, r: jax.Array | None = None, *, normalize: bool = True) -> jax.Array:
  """RSQ's token-weighted layer Hessian ``H = 2 / N * sum_n r_n x_n x_n^T`` (arXiv:2503.01820, Eq. 3), float32.

  Args:
    x: layer inputs ``(..., in)``; ``N`` is the number of tokens (rows after flattening the leading axes).
    r: non-negative token weights of shape ``x.shape[:-1]``; ``None`` is ``r = 1`` (GPTQ's :func:`hessian`).
    normalize: rescale ``r`` along its last axis (one sequence) to mean one before use, as the official
      ``add_batch`` does (``weighting / weighting.sum() * len``), so only the relative weights within a sequence
      matter. With ``r = 1`` and no normalization the result is :func:`paperlab.quant.hessian` of ``x`` exactly.

  Returns:
    ``(in, in)`` float32. Jittable (``normalize`` static).

  Raises:
    ValueError: ``r``'s shape is not ``x.shape[:-1]``; non-finite or negative weights (when concrete).
  """
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"x must have shape (..., in) with at least one token axis, got shape {tuple(x.shape)}.")
  check_finite("x", x)
  x = x.astype(jnp.float32)
  if r is not None:
    r = jnp.asarray(r)
    if tuple(r.shape) != tuple(x.shape[:-1]):
      raise ValueError(f"r must have shape {tuple(x.shape[:-1])} (one weight per token of x), got "
                       f"{tuple(r.shape)}.")
    check_finite("r", r)
    if not isinstance(r, jax.core.Tracer) and bool(jnp.any(r < 0)):
      raise ValueError("r must be non-negative token weights.")
    r = r.astype(jnp.float32)
    if normalize:
      r = r / r.sum(axis=-1, keepdims=True) * r.shape[-1]
    x = x * jnp.sqrt(r)[..., None]
  x = x.reshape(-1, x.shape[-1])
  return 2.0 / x.shape[0] * (x.T @ x)


def random_hadamard(n: int, key: jax.Array) -> jax.Array:
  """QuaRot's random Hadamard rotation ``Q = diag(s) H_n / sqrt(n)`` (``s`` random signs), orthogonal.

  The rotation RSQ applies before quantizing (arXiv:2503.01820, Sec. 3.1, after QuaRot, arXiv:2404.00456); it is
  the official ``random_hadamard_matrix``. Built on the host with ``scipy.linalg.hadamard`` (not jittable: ``n``
  sets the shape).

  Args:
    n: the size, a power of two.
    key: a JAX PRNG key for the signs.

  Returns:
    ``(n, n)`` float32 with ``Q^T Q = I``.

  Raises:
    ValueError: ``n`` not a positive power of two.
  """
  h = hadamard(n)  # checks n
  s = jax.random.rademacher(key, (h.shape[0],), dtype=jnp.float32)
  return s[:, None] * h


def rsq_layer(w: jax.Array, x: jax.Array, r: jax.Array | None = None, *, rotation: jax.Array | None = None,
              normalize: bool = True, **gptq_kwargs: Any) -> QuantizedWeight:
  """RSQ on one Flax kernel: rotate, weight the tokens, GPTQ (arXiv:2503.01820, Algorithm 1).

  Quantizes ``W' = Q^T W`` with GPTQ under ``H = weighted_hessian(x Q, r)``; the model keeps computing ``x W`` by
  feeding ``x Q`` to the stored ``W'``, so ``w_hat`` is returned in the original basis, ``Q W'_hat``.

  Args:
    w: kernel ``(in, out)``.
    x: calibration inputs ``(..., in)``.
    r: token weights of shape ``x.shape[:-1]`` (e.g. :func:`token_importance`); ``None``: ``r = 1``.
    rotation: orthogonal ``(in, in)`` ``Q`` (e.g. :func:`random_hadamard`) or ``None``.
    normalize: see :func:`weighted_hessian`.
    **gptq_kwargs: :func:`~paperlab.quant.gptq_layer`'s options (``bits``, ``group_size``, ``act_order``,
      ``percdamp``...; the paper: W3 or W2, per channel, ``percdamp = 0.01``).

  Returns:
    :class:`~paperlab.quant.rtn.QuantizedWeight`: ``w_hat`` is the effective kernel ``Q W'_hat`` in ``w``'s dtype;
    ``codes``/``scale``/``zero``/``g_idx`` describe the stored rotated kernel ``W'``. With ``r = 1`` and no rotation
    it is ``gptq_layer(w, hessian(x))`` bit for bit.

  Raises:
    ValueError: bad ``w``/``x``/``r`` shapes, ``rotation`` not ``(in, in)``, and :func:`gptq_layer`'s errors.
  """
  w = check_kernel("w", w)
  x = jnp.asarray(x)
  if x.ndim < 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"x must have shape (..., {w.shape[0]}) for w of shape {tuple(w.shape)}, got "
                     f"{tuple(x.shape)}.")
  if rotation is not None:
    rotation = jnp.asarray(rotation, jnp.float32)
    if tuple(rotation.shape) != (w.shape[0], w.shape[0]):
      raise ValueError(f"rotation must be an orthogonal ({w.shape[0]}, {w.shape[0]}) matrix, got shape "
                       f"{tuple(rotation.shape)}.")
    check_finite("rotation", rotation)
    x = x.astype(jnp.float32) @ rotation
    w_in = (rotation.T @ w.astype(jnp.float32)).astype(w.dtype)
  else:
    w_in = w
  q = gptq_layer(w_in, weighted_hessian(x, r, normalize=normalize), **gptq_kwargs)
  if rotation is None:
    return q
  w_hat = (rotation @ q.w_hat.astype(jnp.float32)).astype(w.dtype)
  return QuantizedWeight(w_hat, q.codes, q.scale, q.zero, q.g_idx)


def rsq_model(model, batches: Iterable[Any], *,
              token_weights: Callable[[str, Any], jax.Array] | None = None, rotate: bool = False,
              key: jax.Array | None = None, normalize: bool = True, include: str | None = None,
              exclude: str | None = None, **gptq_kwargs: Any):
  """RSQ over the Dense (``nnx.Linear``) layers of a Flax NNX model, layer by layer in forward order.

  Each layer is quantized on the inputs produced by the model whose earlier layers already hold their quantized
  kernels (GPTQ's true-sequential order; the official code goes decoder layer by decoder layer). The token weights
  of a layer come from ``token_weights(path, current_model)``, called on that partially quantized model (the
  official code computes AttnCon from each decoder layer's attention before quantizing it); a host loop with one
  jitted capture program.

  Args:
    model: an ``nnx.Module``; not modified.
    batches: calibration inputs, each accepted by ``model(batch)``.
    token_weights: ``(path, current_model) -> r`` with one weight per captured input row of the layer (rows of all
      batches in order, reshaped to ``r.shape``; e.g. ``(sequences, tokens)`` from :func:`token_importance`, whose
      last axis :func:`weighted_hessian` normalizes); ``None``: ``r = 1``.
    rotate: quantize every layer in a random Hadamard basis of its inputs (:func:`random_hadamard`, one per layer,
      from ``key``); input sizes must be powers of two.
    key: PRNG key of the rotations (required with ``rotate``).
    normalize: see :func:`weighted_hessian`.
    include, exclude: regexes on the layer path selecting layers.
    **gptq_kwargs: :func:`~paperlab.quant.gptq_layer`'s options.

  Returns:
    ``(quantized_model, {path: QuantizedWeight})``: a copy of the model with every selected kernel replaced by its
    effective dequantized kernel (``Q W'_hat``), and the quantized tensors (see :func:`rsq_layer`).

  Raises:
    ValueError: ``rotate`` without ``key``; weights that do not match a layer's captured inputs; as
      :func:`rsq_layer`.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  if rotate and key is None:
    raise ValueError("key must be a PRNG key when rotate=True (it draws the Hadamard signs), got None.")
  batches = list(batches)
  if not batches:
    raise ValueError("batches must hold at least one calibration batch, got none.")
  paths = calibration.linear_paths(model, include=include, exclude=exclude)
  if not paths:
    raise ValueError(f"no nnx.Linear layer matches include={include!r}, exclude={exclude!r}.")
  order = calibration.layer_order(model, batches[0], include=include, exclude=exclude)
  kernels = {"/".join(map(str, p)): m.kernel[...] for p, m in nnx.iter_modules(model)
             if isinstance(m, nnx.Linear)}
  current, results = model, {}
  for i, path in enumerate(order):
    x = calibration.capture_inputs(current, batches, paths=paths)[path]  # one capture program for every layer
    r = None
    if token_weights is not None:
      r = jnp.asarray(token_weights(path, current), jnp.float32)
      if r.size != x.shape[0]:
        raise ValueError(f"token_weights({path!r}) must give one weight per captured input row ({x.shape[0]}), "
                         f"got shape {tuple(r.shape)}.")
      x = x.reshape(*r.shape, x.shape[-1])
    q_mat = random_hadamard(x.shape[-1], jax.random.fold_in(key, i)) if rotate else None
    results[path] = rsq_layer(kernels[path], x, r, rotation=q_mat, normalize=normalize, **gptq_kwargs)
    current = calibration.replace_kernels(model, {p: q.w_hat for p, q in results.items()})
  return current, results
