"""Weight normalization as a reparametrization of parameter pytrees, with its data-dependent init.

Salimans & Kingma, "Weight Normalization: A Simple Reparameterization to Accelerate Training of Deep Neural
Networks", arXiv:1602.07868, Eq. 2 and Sec. 2.2. A kernel ``w`` (Flax layout: last axis = output unit) is
trained as ``(v, g)`` with ``w = g * v / ||v||``, the norm per output unit (over every other axis). The trainable
pytree replaces each selected kernel leaf by ``{"v": ..., "g": ...}``; :func:`from_weight_norm` composes the
kernels back inside the loss, so any optimizer and any NNX model work unchanged::

    wn = to_weight_norm(params)                         # trainable
    loss = lambda wn: model_loss(from_weight_norm(wn))  # gradients flow to v and g
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from paperlab._checks import check_choice, check_positive
from paperlab._tree import path_mask, path_str
from paperlab.param.coordinates import layer_outputs

PyTree = Any

__all__ = ["weight_norm", "to_weight_norm", "from_weight_norm", "weight_norm_init", "weight_standardize", "StdConv",
           "BatchChannelNorm", "reparametrize", "compander", "compander_inverse", "make_conditioner",
           "weight_condition"]


def _norm(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))


def weight_norm(v: jax.Array, g: jax.Array) -> jax.Array:
  """``w = g * v / ||v||`` per output unit (Salimans & Kingma, arXiv:1602.07868, Eq. 2); ``v``'s last axis is the
  output unit (Flax kernels), ``g`` has shape ``(v.shape[-1],)``. Jittable, differentiable, dtype of ``v``."""
  if jnp.ndim(v) < 2:
    raise ValueError(f"v must be a kernel with ndim >= 2 (last axis = output units), got shape {jnp.shape(v)}.")
  if jnp.shape(g) != (v.shape[-1],):
    raise ValueError(f"g must have shape ({v.shape[-1]},) (one gain per output unit), got {jnp.shape(g)}.")
  return (g / _norm(v)).astype(v.dtype) * v


def _is_wn(x) -> bool:
  return isinstance(x, dict) and set(x) == {"v", "g"}


def to_weight_norm(params: PyTree, *, include: str = r"kernel$") -> PyTree:
  """Replace each selected kernel ``w`` (regex on the ``/``-joined path, ``ndim >= 2``) by ``{"v": w, "g":
  ||w||}``, so that :func:`from_weight_norm` gives back ``w`` exactly (up to rounding). Plain nested dicts."""
  rx = re.compile(include)
  found = []

  def convert(path, x):
    if rx.search(path_str(path)) and jnp.ndim(x) >= 2:
      found.append(path_str(path))
      return {"v": x, "g": _norm(jnp.asarray(x)).astype(jnp.result_type(x))}
    return x

  out = jax.tree_util.tree_map_with_path(convert, params)
  if not found:
    raise ValueError(f"include={include!r} selects no kernel (ndim >= 2).")
  return out


def from_weight_norm(wn_params: PyTree) -> PyTree:
  """The plain parameters: every ``{"v", "g"}`` node becomes ``weight_norm(v, g)``. Pure, differentiable."""
  return jax.tree.map(lambda x: weight_norm(x["v"], x["g"]) if _is_wn(x) else x, wn_params, is_leaf=_is_wn)


def weight_norm_init(key: jax.Array, model: nnx.Module, x: jax.Array, *, include: str = r"kernel$",
                     v_std: float = 0.05) -> PyTree:
  """Data-dependent init of a weight-normalized model (Salimans & Kingma, arXiv:1602.07868, Sec. 2.2).

  ``v ~ N(0, v_std^2)`` (paper: 0.05); then for each layer, with ``t = x . v / ||v||`` its normalized
  pre-activation on the batch ``x``, ``g <- 1 / sigma[t]`` and the layer's bias ``b <- -mu[t] / sigma[t]`` (per
  output unit), so every pre-activation starts with mean 0 and variance 1 on the batch. Layers are found as the
  modules owning the selected kernels (``a/b/kernel`` -> module ``a/b``, bias ``a/b/bias``); their order is not
  read from the model: every pass initializes all layers from one forward pass, and ``num_layers`` passes give the
  sequential result (after pass ``k`` the first ``k`` layers are final). Each pass is jitted.

  Returns:
    Weight-normalized parameters (:func:`to_weight_norm`'s form).
  """
  check_positive("v_std", v_std)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(params))
  wn = to_weight_norm(params, include=include)
  layers = []

  def draw(path, node):
    p = path_str(path)
    layers.append(p)
    v = jax.random.normal(jax.random.fold_in(key, len(layers)), node["v"].shape, jnp.float32) * v_std
    return {"v": v.astype(node["v"].dtype), "g": jnp.ones_like(node["g"])}

  wn = jax.tree_util.tree_map_with_path(lambda p, n: draw(p, n) if _is_wn(n) else n, wn, is_leaf=_is_wn)
  modules = [p.rsplit("/", 1)[0] for p in layers]

  @jax.jit
  def one_pass(wn):
    outs = layer_outputs(nnx.merge(graphdef, from_weight_norm(wn), rest), x)
    return {m: outs[m] for m in set(modules) if m in outs}

  def get(tree, path):
    for k in path.split("/"):
      tree = tree[k if k in tree else int(k)]
    return tree

  for _ in range(len(layers)):
    outs = one_pass(wn)
    for layer, module in zip(layers, modules):
      if module not in outs:
        raise ValueError(f"weight_norm_init: the output of module {module!r} (owning {layer!r}) is not captured.")
      node = get(wn, layer)
      parent = get(wn, module) if module else wn
      b = parent.get("bias") if isinstance(parent, dict) else None
      y = outs[module].reshape(-1, node["g"].shape[0]).astype(jnp.float32)
      t = (y - (0.0 if b is None else b)) / node["g"]
      mu, sigma = jnp.mean(t, 0), jnp.std(t, 0)
      node["g"] = (1.0 / sigma).astype(node["g"].dtype)
      if b is not None:
        parent["bias"] = (-mu / sigma).astype(b.dtype)
  return wn


# ----------------------------------------------------------------------------------------------------------------
# weight standardization and batch-channel normalization


def weight_standardize(w: jax.Array, *, eps: float = 1e-5) -> jax.Array:
  """Weight Standardization: ``(W_i - mean_i) / sqrt(var_i + eps)`` per output channel ``i`` over its fan-in.

  Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization",
  arXiv:1903.10520, Eq. 5-6, as the official code computes it (github.com/joe-siyuan-qiao/Batch-Channel-Normalization,
  ``imagenet/models/layers.py``, ``Conv2d.forward``, commit 0244c3e): the variance is the *unbiased* one
  (``torch.var``'s default) and ``eps = 1e-5`` is added under the square root. ``w`` is a Flax kernel: last axis =
  output channel, every other axis fan-in (``Conv (kh, kw, in, out)``, ``Linear (in, out)``). Jittable,
  differentiable, dtype of ``w`` (statistics in float32).

  Raises:
    ValueError: ``w`` with fewer than 2 axes or a fan-in of 1, or ``eps <= 0``.
  """
  check_positive("eps", eps)
  if jnp.ndim(w) < 2:
    raise ValueError(f"w must be a kernel with ndim >= 2 (last axis = output channels), got shape {jnp.shape(w)}.")
  axes = tuple(range(w.ndim - 1))
  fan_in = 1
  for a in axes:
    fan_in *= w.shape[a]
  if fan_in < 2:
    raise ValueError(f"w must have a fan-in of at least 2 to standardize, got shape {w.shape}.")
  x = w.astype(jnp.float32)
  centered = x - jnp.mean(x, axis=axes, keepdims=True)
  var = jnp.sum(jnp.square(centered), axis=axes, keepdims=True) / (fan_in - 1)
  return (centered / jnp.sqrt(var + eps)).astype(w.dtype)


class StdConv(nnx.Module):
  """A convolution whose kernel is weight-standardized at every call (:func:`weight_standardize`; Qiao et al.,
  arXiv:1903.10520, the official ``Conv2d``). The stored ``conv.kernel`` is the raw weight; gradients flow through
  the standardization. Arguments as ``nnx.Conv`` (Flax layout: NHWC inputs, ``(kh, kw, in, out)`` kernel)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int | tuple[int, ...], *,
               strides: int | tuple[int, ...] = 1, padding: Any = "SAME", use_bias: bool = True, eps: float = 1e-5,
               rngs: nnx.Rngs):
    check_positive("eps", eps)
    self.conv = nnx.Conv(in_features, out_features, kernel_size, strides=strides, padding=padding,
                         use_bias=use_bias, rngs=rngs)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    graphdef, state = nnx.split(self.conv)
    state["kernel"] = nnx.Param(weight_standardize(state["kernel"][...], eps=self.eps))
    return nnx.merge(graphdef, state)(x)


class BatchChannelNorm(nnx.Module):
  """Batch-Channel Normalization: a batch norm over ``(batch, spatial)`` per channel, then a group norm per example
  with one affine scale and bias per *group*.

  Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization",
  arXiv:1903.10520, Sec. 5, as the official code computes it (github.com/joe-siyuan-qiao/Batch-Channel-Normalization,
  ``imagenet/models/layers.py``, class ``GN``, commit 0244c3e): ``nn.BatchNorm2d(C)`` (affine; batch statistics in
  training, running averages with momentum 0.1 in evaluation), then ``torch.batch_norm`` on the
  ``(1, N * G, -1)`` view (each example's group normalized by its own mean and biased variance, ``eps = 1e-5``),
  then ``weight[g] * out + bias[g]``. Channels last (Flax): group ``g`` holds channels ``g C/G .. (g+1) C/G - 1``,
  the contiguous chunk of the official ``view``. The paper's micro-batch variant (batch statistics replaced by
  their running estimates) is not in that code and not here. Flax's ``BatchNorm`` keeps the biased batch variance
  as running variance (PyTorch the unbiased one), so evaluation-mode outputs differ from PyTorch's by the factor
  ``n / (n - 1)`` inside the variance; training-mode outputs are the same.

  Args:
    num_channels: ``C``, the last axis of the input.
    num_groups: ``G`` (the official default 32), must divide ``C``.
    momentum: running-average momentum of the batch norm, Flax's convention (``0.9`` = PyTorch's ``0.1``).
    eps: both normalizations' epsilon (1e-5).
    rngs: ``nnx.Rngs``.
  """

  def __init__(self, num_channels: int, num_groups: int = 32, *, momentum: float = 0.9, eps: float = 1e-5,
               rngs: nnx.Rngs):
    for name, v in (("num_channels", num_channels), ("num_groups", num_groups)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if num_channels % num_groups:
      raise ValueError(f"num_groups must divide num_channels, got num_groups={num_groups}, "
                       f"num_channels={num_channels}.")
    check_positive("eps", eps)
    self.num_groups = num_groups
    self.eps = eps
    self.bn = nnx.BatchNorm(num_channels, momentum=momentum, epsilon=eps, rngs=rngs)
    self.scale = nnx.Param(jnp.ones((num_groups,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_groups,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim < 2 or x.shape[-1] != self.bn.num_features:
      raise ValueError(f"x must have {self.bn.num_features} channels on its last axis, got shape {x.shape}.")
    y = self.bn(x)
    n, c, g = x.shape[0], x.shape[-1], self.num_groups
    grouped = jnp.moveaxis(y.reshape(n, -1, g, c // g), 2, 1).reshape(n, g, -1).astype(jnp.float32)
    mean = jnp.mean(grouped, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=-1, keepdims=True)
    out = (grouped - mean) / jnp.sqrt(var + self.eps)
    out = out * self.scale[...][None, :, None] + self.bias[...][None, :, None]
    out = jnp.moveaxis(out.reshape(n, g, -1, c // g), 1, 2).reshape(x.shape)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# elementwise and matrix reparametrizations applied inside the loss: weight compander, weight conditioning


def reparametrize(params: PyTree, fn: Callable[[jax.Array], jax.Array], *, include: str = r"kernel$") -> PyTree:
  """``fn`` applied to every selected leaf (regex ``include`` searched in the ``/``-joined path, ``ndim >= 2``);
  the other leaves pass through. The trainable parameters stay the raw ones and the model runs on the result, so
  gradients flow through ``fn``::

      loss = lambda raw: model_loss(reparametrize(raw, lambda w: compander(w, a=0.5, b=2.0)))

  Shared by the elementwise and matrix reparametrizations of this module (:func:`compander`,
  :func:`weight_condition`, :func:`weight_standardize`). Pure, jittable.

  Raises:
    ValueError: ``include`` selects no leaf with ``ndim >= 2``.
  """
  mask = path_mask(params, include)
  if not any(m and jnp.ndim(x) >= 2 for m, x in zip(jax.tree.leaves(mask), jax.tree.leaves(params))):
    raise ValueError(f"include={include!r} selects no kernel (ndim >= 2).")
  return jax.tree.map(lambda m, x: fn(x) if m and jnp.ndim(x) >= 2 else x, mask, params)


def compander(w: jax.Array, *, a: float | jax.Array, b: float | jax.Array) -> jax.Array:
  """Weight compander: an odd, monotone, bounded elementwise map ``w_eff = a * tanh(b * w / a)``.

  Cakaj, Mehnert & Yang, "Weight Compander: A Simple Weight Reparameterization for Regularization",
  arXiv:2306.16993 (IJCNN 2023). Each weight is used through a nonlinear function that restricts its magnitude
  (``|w_eff| < a``) and pushes it away from zero (slope ``b > 1`` at the origin, so ``|w_eff| > |w|`` for small
  ``|w|``); ``a`` and ``b`` may be learned (pass traced arrays). **The paper's exact function could not be read in
  this workplace** (no code was released and its full text is not in the stored corpora): this is the ``tanh``
  form with the properties the paper states -- saturation at ``a``, expansion near zero with gain ``b`` -- not a
  transcription of its equation, and the paper's default ``(a, b)`` are unknown, so both are required.

  Args:
    w: raw weights, any shape (floating).
    a: the bound of ``|w_eff|`` (> 0).
    b: the slope ``d w_eff / d w`` at ``w = 0`` (> 0; ``> 1`` expands small weights).

  Returns:
    ``w_eff`` with the shape and dtype of ``w`` (computed in float32). Jittable, differentiable in ``w``, ``a`` and
    ``b``.

  Raises:
    ValueError: ``a <= 0`` or ``b <= 0`` (when concrete); TypeError: a non-floating ``w``.
  """
  check_positive("a", a)
  check_positive("b", b)
  if not jnp.issubdtype(jnp.result_type(w), jnp.floating):
    raise TypeError(f"w must be a floating array, got dtype {jnp.result_type(w)}.")
  x = jnp.asarray(w).astype(jnp.float32)
  a = jnp.asarray(a, jnp.float32)
  return (a * jnp.tanh(jnp.asarray(b, jnp.float32) * x / a)).astype(jnp.result_type(w))


def compander_inverse(w_eff: jax.Array, *, a: float | jax.Array, b: float | jax.Array) -> jax.Array:
  """The raw weights whose :func:`compander` is ``w_eff``: ``(a / b) artanh(w_eff / a)``, for ``|w_eff| < a``.

  Starts a compander-reparametrized model at a given effective init (e.g. the plain model's), so that the
  reparametrization changes the training dynamics and not the initial function. Shape and dtype of ``w_eff``.

  Raises:
    ValueError: ``a <= 0``, ``b <= 0``, or a concrete ``w_eff`` with an entry ``|w_eff| >= a`` (outside the range).
  """
  check_positive("a", a)
  check_positive("b", b)
  x = jnp.asarray(w_eff).astype(jnp.float32)
  if not isinstance(x, jax.core.Tracer) and not isinstance(a, jax.core.Tracer):
    worst = float(jnp.max(jnp.abs(x))) if x.size else 0.0
    if worst >= float(a):
      raise ValueError(f"w_eff must lie in (-a, a) = (-{float(a)}, {float(a)}) to be inverted, got max |w_eff| = "
                       f"{worst}.")
  a = jnp.asarray(a, jnp.float32)
  return (a / jnp.asarray(b, jnp.float32) * jnp.arctanh(x / a)).astype(jnp.result_type(w_eff))


_CONDITIONER_KINDS = ("row", "column", "row_column")


def _as_matrix(w: jax.Array, name: str) -> jax.Array:
  if jnp.ndim(w) < 2:
    raise ValueError(f"{name} must be a kernel with ndim >= 2 (last axis = output units), got shape {jnp.shape(w)}.")
  return jnp.asarray(w).reshape(-1, w.shape[-1]).astype(jnp.float32)  # (fan_in, out) = the paper's W transposed


def make_conditioner(w: jax.Array, *, kind: str = "row", eps: float = 1e-12) -> tuple[jax.Array, jax.Array]:
  """The diagonal equilibration conditioner of weight conditioning: ``(r, c)`` with ``W_cond = diag(r) W diag(c)``.

  Saratchandran, Wang & Lucey, "Weight Conditioning for Smooth Optimization of Neural Networks", arXiv:2409.03424
  (ECCV 2024). A weight matrix ``W`` (the paper's layout: ``out x in``) is multiplied by a conditioner that narrows
  the spread of its singular values; the conditioner is row equilibration, ``r_i = 1 / ||W_i,:||_2`` (every output
  unit's weight vector scaled to unit norm), the diagonal scaling that by van der Sluis' theorem minimizes
  ``kappa_2(D W)`` over diagonal ``D`` up to a factor ``sqrt(out)`` (for a square ``W``). ``kind="column"``
  equilibrates the columns (``c_j = 1 / ||W_:,j||``) and ``"row_column"`` the rows, then the columns of the
  row-equilibrated matrix. Where the paper's text was not available here the construction follows its description
  of weight conditioning as equilibration (no official code was released).

  ``w`` is a Flax kernel (last axis = output unit; every other axis is flattened into the fan-in), so the paper's
  ``W`` is ``w.reshape(-1, out).T``; the conditioner is computed from the current ``w`` (in float32), not frozen.

  Args:
    w: a kernel with ``ndim >= 2``.
    kind: ``"row"`` (the paper's), ``"column"`` or ``"row_column"``.
    eps: floor of every norm (a zero row stays zero instead of dividing by zero).

  Returns:
    ``(r, c)``: ``r`` of shape ``(out,)``, ``c`` of shape ``(fan_in,)`` (ones where ``kind`` does not scale).

  Raises:
    ValueError: ``kind`` not one of the accepted kinds, ``eps <= 0``, or ``w`` with fewer than 2 axes.
  """
  check_choice("kind", kind, _CONDITIONER_KINDS)
  check_positive("eps", eps)
  m = _as_matrix(w, "w")
  r = jnp.ones((m.shape[1],), jnp.float32)
  c = jnp.ones((m.shape[0],), jnp.float32)
  if kind in ("row", "row_column"):
    r = 1.0 / jnp.maximum(jnp.linalg.norm(m, axis=0), eps)
  if kind in ("column", "row_column"):
    c = 1.0 / jnp.maximum(jnp.linalg.norm(m * r[None, :], axis=1), eps)
  return r, c


def weight_condition(w: jax.Array, *, kind: str = "row", eps: float = 1e-12) -> jax.Array:
  """Weight conditioning: ``W_cond = diag(r) W diag(c)`` with the equilibration conditioner of
  :func:`make_conditioner` (Saratchandran, Wang & Lucey, arXiv:2409.03424; default: row equilibration).

  Used as a reparametrization (``reparametrize(params, weight_condition)``): the raw kernel is trained and the
  layer computes with its conditioned form; gradients flow through the conditioner, which is recomputed from the
  current weights at every call. For ``kind="row"`` this is weight normalization (Salimans & Kingma) with every
  gain fixed at 1. Shape and dtype of ``w``; jittable, differentiable.

  Raises:
    ValueError: as :func:`make_conditioner`.
  """
  r, c = make_conditioner(w, kind=kind, eps=eps)
  m = _as_matrix(w, "w") * c[:, None] * r[None, :]
  return m.reshape(jnp.shape(w)).astype(jnp.result_type(w))
