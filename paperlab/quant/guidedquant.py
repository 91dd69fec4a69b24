"""GuidedQuant: GPTQ on an end-loss-guided layer objective (Kim et al., "GuidedQuant: Large Language Model
Quantization via Exploiting End Loss Guidance", arXiv:2505.07004, ICML 2025).

Layer-wise PTQ minimizes ``||X W - X W_hat||^2``, which treats every output activation as equally important for the
model's loss. GuidedQuant weights the error of output ``j`` on token ``n`` by the squared end-loss gradient
``g_nj = d loss / d z_nj`` (a Fisher approximation of the loss change, Sec. 3, Eq. 5):

    ``sum_n sum_j g_nj^2 (dw_j^T x_n)^2 = sum_j dw_j^T H_j dw_j``,  ``H_j = sum_n g_nj^2 x_n x_n^T``.

It keeps the cross terms between the weights of one output channel and drops those between channels (a block-
diagonal Fisher). To store fewer Hessians, the output channels are split into ``G`` contiguous groups and
``g_nj^2`` is averaged within a group (the *saliency* ``s_ng``), giving ``G`` Hessians per layer; each group of
output channels is then quantized by GPTQ with its own Hessian. The steps follow the official code
(github.com/snu-mllab/GuidedQuant, commit dbe3e68):

* :func:`guided_saliency` is ``get_gradients``'s ``grad_hook`` (``any_precision/quantization/gradients.py``): the
  gradient of the calibration loss w.r.t. each linear layer's output, squared, averaged over contiguous channel
  groups (``view(bsz, seq_len, num_groups, group_size).mean(-1)``), from one backward pass of the full-precision
  model;
* :func:`guided_hessian` is ``GPTQGuided.add_batch`` (``spin_quant/eval_utils/gptq_guided_utils.py``):
  ``H[:, :, g] += einsum("ni,njg->ijg", X, einsum("nj,ng->njg", X, S))``;
* :func:`guided_gptq_layer` is ``GPTQGuided.fasterquant``: the rows (output channels) of group ``g`` go through the
  GPTQ loop with ``H_g`` (dead inputs, damping ``0.01 * mean(diag H_g)``, lazy blocks), built here on
  :func:`paperlab.quant.gptq_layer`.

Differences: the official hook multiplies the gradient by ``1e3`` (for bfloat16 range) and leaves ``H`` unnormalized;
GPTQ's result does not depend on the scale of ``H`` (the damping is relative), and here ``H_g = 2 / N * sum_n s_ng x_n
x_n^T`` so that with ``s = 1`` and ``G = 1`` it is GPTQ's :func:`~paperlab.quant.hessian` and the result is GPTQ's
bit for bit. The paper's own non-uniform quantizer LNQ is not implemented here.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab.quant.gptq import gptq_layer
from paperlab.quant.rtn import QuantizedWeight, check_finite, check_kernel

__all__ = ["guided_saliency", "guided_hessian", "guided_gptq_layer", "guided_objective", "guidedquant_model"]

_PROBES: dict | None = None  # trace-time state of the probed forward pass: output shapes and added deltas


def _check_groups(n_groups: Any, out: int, what: str) -> int:
  if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 1:
    raise ValueError(f"n_groups must be a positive int, got {n_groups!r}.")
  if out % int(n_groups):
    raise ValueError(f"n_groups={n_groups} must divide the {out} output channels of {what}; accepted: a divisor "
                     f"of {out}.")
  return int(n_groups)


def guided_hessian(x: jax.Array, saliency: jax.Array) -> jax.Array:
  """GuidedQuant's grouped Hessians ``H_g = 2 / N * sum_n s_ng x_n x_n^T`` (arXiv:2505.07004, Eq. 6), float32.

  Args:
    x: layer inputs ``(N, in)`` (tokens flattened).
    saliency: ``(N, G)`` non-negative weights, e.g. :func:`guided_saliency` (mean squared output gradient of each
      channel group on each token).

  Returns:
    ``(G, in, in)`` float32; with ``saliency = 1`` and ``G = 1``, ``[hessian(x)]`` exactly. Jittable.

  Raises:
    ValueError: shapes that do not match, negative or non-finite values (when concrete).
  """
  x, saliency = jnp.asarray(x), jnp.asarray(saliency)
  if x.ndim != 2 or saliency.ndim != 2 or saliency.shape[0] != x.shape[0]:
    raise ValueError(f"x must be (N, in) and saliency (N, G) with the same N, got shapes {tuple(x.shape)} and "
                     f"{tuple(saliency.shape)}.")
  check_finite("x", x)
  check_finite("saliency", saliency)
  if not isinstance(saliency, jax.core.Tracer) and bool(jnp.any(saliency < 0)):
    raise ValueError("saliency must be non-negative (squared gradients).")
  x = x.astype(jnp.float32)
  s = saliency.astype(jnp.float32)
  # one matmul per group, the same expression as gptq.hessian (so s = 1 reproduces it bit for bit)
  return jnp.stack([2.0 / x.shape[0] * ((x * s[:, g:g + 1]).T @ x) for g in range(s.shape[1])])


def guided_gptq_layer(w: jax.Array, h: jax.Array, **gptq_kwargs: Any) -> QuantizedWeight:
  """GPTQ with one Hessian per contiguous group of output channels (GuidedQuant, arXiv:2505.07004, Sec. 3.2).

  Output channel ``j`` of group ``g = j // (out / G)`` is quantized by :func:`~paperlab.quant.gptq_layer` with
  ``h[g]`` (the official ``GPTQGuided.fasterquant`` row partition). Columns of a kernel are independent given
  their Hessian, so ``G = 1`` is plain GPTQ.

  Args:
    w: kernel ``(in, out)``.
    h: ``(G, in, in)`` grouped Hessians (:func:`guided_hessian`), ``G`` dividing ``out``; a single ``(in, in)``
      Hessian is ``G = 1``.
    **gptq_kwargs: :func:`~paperlab.quant.gptq_layer`'s options (``bits``, ``group_size``, ``percdamp``...).

  Returns:
    :class:`~paperlab.quant.rtn.QuantizedWeight` of the whole kernel.

  Raises:
    ValueError: ``h`` not ``(G, in, in)`` with ``G`` dividing ``out``; ``act_order`` without ``static_groups``
      together with grouped quantization and ``G > 1`` (each group would order its inputs differently, so the
      input-row groups ``g_idx`` would differ between output channels); :func:`gptq_layer`'s errors.
  """
  w = check_kernel("w", w)
  h = jnp.asarray(h)
  if h.ndim == 2:
    h = h[None]
  if h.ndim != 3 or tuple(h.shape[1:]) != (w.shape[0], w.shape[0]):
    raise ValueError(f"h must have shape (G, {w.shape[0]}, {w.shape[0]}) for w of shape {tuple(w.shape)}, got "
                     f"{tuple(h.shape)}.")
  n_groups = _check_groups(h.shape[0], w.shape[1], "w")
  grouped = gptq_kwargs.get("group_size") not in (None, -1, w.shape[0])
  if (n_groups > 1 and grouped and gptq_kwargs.get("act_order") and not gptq_kwargs.get("static_groups")):
    raise ValueError("act_order=True with group_size and n_groups > 1 needs static_groups=True: each channel "
                     "group orders its inputs by its own Hessian, so input groups would differ per channel.")
  width = w.shape[1] // n_groups
  parts = [gptq_layer(w[:, g * width:(g + 1) * width], h[g], **gptq_kwargs) for g in range(n_groups)]
  if n_groups == 1:
    return parts[0]
  cat = lambda name: jnp.concatenate([getattr(p, name) for p in parts], axis=1)
  return QuantizedWeight(cat("w_hat"), cat("codes"), cat("scale"), cat("zero"), parts[0].g_idx)


def guided_objective(w: jax.Array, w_hat: jax.Array, h: jax.Array) -> jax.Array:
  """The guided layer objective ``sum_g sum_{j in g} (w_j - w_hat_j)^T H_g (w_j - w_hat_j)`` (arXiv:2505.07004,
  Eq. 6; the official ``objective_function`` up to its mean over rows).

  Args:
    w, w_hat: kernels ``(in, out)``.
    h: ``(G, in, in)`` (or ``(in, in)`` for ``G = 1``), ``G`` dividing ``out``.

  Returns:
    a float32 scalar. Jittable.
  """
  w, w_hat, h = jnp.asarray(w, jnp.float32), jnp.asarray(w_hat, jnp.float32), jnp.asarray(h, jnp.float32)
  if h.ndim == 2:
    h = h[None]
  if w.shape != w_hat.shape or w.ndim != 2 or h.ndim != 3 or tuple(h.shape[1:]) != (w.shape[0],) * 2:
    raise ValueError(f"w and w_hat must be (in, out) kernels of one shape and h (G, in, in), got {tuple(w.shape)}, "
                     f"{tuple(w_hat.shape)} and {tuple(h.shape)}.")
  n_groups = _check_groups(h.shape[0], w.shape[1], "w")
  d = (w - w_hat).T.reshape(n_groups, w.shape[1] // n_groups, w.shape[0])  # (G, rows of g, in)
  return jnp.einsum("gri,gij,grj->", d, h, d)


class _Probe(nnx.Module):
  """Wraps a layer; adds the trace-time delta of its path to the output and records the output's shape."""

  def __init__(self, layer: nnx.Module, path: str):
    self.layer = layer
    self.path = path

  def __call__(self, x, *args, **kwargs):
    y = self.layer(x, *args, **kwargs)
    if _PROBES is not None:
      if self.path in _PROBES["shapes"]:
        raise ValueError(f"layer {self.path!r} is called more than once per forward pass; guided_saliency needs "
                         "one output per layer.")
      _PROBES["shapes"][self.path] = jax.ShapeDtypeStruct(y.shape, jnp.float32)
      if self.path in _PROBES["deltas"]:
        y = y + _PROBES["deltas"][self.path].astype(y.dtype)
    return y


def _probed_copy(model: nnx.Module, paths: Sequence[str]) -> nnx.Module:
  """A copy of ``model`` (same arrays) whose ``nnx.Linear`` layers at ``paths`` are wrapped in :class:`_Probe`."""
  copy = nnx.merge(*nnx.split(model))
  wanted = set(paths)
  for path, layer in [(p, m) for p, m in nnx.iter_modules(copy)
                      if isinstance(m, nnx.Linear) and "/".join(map(str, p)) in wanted]:
    parent = copy
    for part in path[:-1]:
      parent = parent[part] if isinstance(part, int) else getattr(parent, part)
    probe = _Probe(layer, "/".join(map(str, path)))
    if isinstance(path[-1], int):
      parent[path[-1]] = probe
    else:
      setattr(parent, path[-1], probe)
  return copy


def _forward(graphdef, state, batch, deltas):
  global _PROBES
  saved, _PROBES = _PROBES, {"shapes": {}, "deltas": deltas}
  try:
    out = nnx.merge(graphdef, state)(batch)
    shapes = _PROBES["shapes"]
  finally:
    _PROBES = saved
  return out, shapes


@functools.lru_cache(maxsize=16)
def _saliency_fn(graphdef, loss_fn, groups: tuple):
  groups = dict(groups)

  @jax.jit
  def run(state, batch, labels):
    shapes = jax.eval_shape(lambda: _forward(graphdef, state, batch, {})[1])
    deltas = {p: jnp.zeros(s.shape, jnp.float32) for p, s in shapes.items()}
    grads = jax.grad(lambda d: loss_fn(_forward(graphdef, state, batch, d)[0], labels))(deltas)
    out = {}
    for p, g in grads.items():
      g = g.reshape(-1, g.shape[-1]).astype(jnp.float32)
      out[p] = jnp.square(g).reshape(g.shape[0], groups[p], -1).mean(axis=-1)
    return out
  return run


def _default_loss(outputs: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()


def guided_saliency(model, batches: Iterable[Any], labels: Iterable[Any], *,
                    loss_fn: Callable[[jax.Array, Any], jax.Array] | None = None, n_groups: int = 4,
                    include: str | None = None, exclude: str | None = None) -> dict[str, jax.Array]:
  """GuidedQuant's saliency ``s_ng = mean_{j in g} (d loss / d z_nj)^2`` of every Dense layer (arXiv:2505.07004,
  Sec. 3.2): one backward pass of the model per calibration batch, through a zero added to each layer's output.

  Args:
    model: a Flax NNX model (not modified); ``model(batch)`` returns what ``loss_fn`` takes.
    batches: calibration inputs.
    labels: one label array per batch (next tokens for a language model, classes for a classifier).
    loss_fn: ``(outputs, labels) -> scalar``; default: mean softmax cross entropy with integer labels (the
      official code's language-model loss; a constant factor does not change GuidedQuant's result).
    n_groups: ``G``, contiguous output-channel groups per layer (must divide every selected layer's width; the
      paper uses 1, 2 or 4).
    include, exclude: regexes on the layer path.

  Returns:
    ``{path: (tokens, G) float32}``, the rows in the order :func:`~paperlab.quant.capture_inputs` stacks them.

  Raises:
    ValueError: no layer selected, no batch, ``n_groups`` not dividing a layer's width, a layer called more than
      once per forward pass, different numbers of batches and labels, non-finite saliency.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  batches, labels = list(batches), list(labels)
  if not batches or len(batches) != len(labels):
    raise ValueError(f"batches and labels must be non-empty and of equal length, got {len(batches)} batches and "
                     f"{len(labels)} labels.")
  paths = calibration.linear_paths(model, include=include, exclude=exclude)
  if not paths:
    raise ValueError(f"no nnx.Linear layer matches include={include!r}, exclude={exclude!r}.")
  widths = {"/".join(map(str, p)): m.out_features for p, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)}
  groups = tuple((p, _check_groups(n_groups, widths[p], f"layer {p!r}")) for p in paths)
  graphdef, state = nnx.split(_probed_copy(model, paths))
  run = _saliency_fn(graphdef, loss_fn or _default_loss, groups)
  acc: dict = {}
  for batch, lab in zip(batches, labels):
    for p, s in run(state, batch, lab).items():
      acc.setdefault(p, []).append(s)
  out = {p: jnp.concatenate(v, axis=0) for p, v in acc.items()}
  for p, v in out.items():
    check_finite(f"saliency of layer {p!r}", v)
  return out


def guidedquant_model(model, batches: Iterable[Any], labels: Iterable[Any], *,
                      loss_fn: Callable[[jax.Array, Any], jax.Array] | None = None, n_groups: int = 4,
                      include: str | None = None, exclude: str | None = None, true_sequential: bool = True,
                      **gptq_kwargs: Any):
  """GuidedQuant + GPTQ over the Dense layers of a Flax NNX model (arXiv:2505.07004, Algorithm 1 with GPTQ).

  The saliency comes from the full-precision model once (:func:`guided_saliency`); the layers are then quantized
  in forward order, each on the inputs of the model whose earlier layers are already quantized (GPTQ's
  ``--true-sequential``, as the official ``gptq_fwrd``), with :func:`guided_hessian` of those inputs and
  :func:`guided_gptq_layer`.

  Args:
    model: an ``nnx.Module``; not modified.
    batches, labels, loss_fn, n_groups, include, exclude: as :func:`guided_saliency`.
    true_sequential: measure each layer's inputs on the partially quantized model (default) or all on the
      full-precision one.
    **gptq_kwargs: :func:`~paperlab.quant.gptq_layer`'s options (``bits``, ``group_size``, ``percdamp``...).

  Returns:
    ``(quantized_model, {path: QuantizedWeight})``.
  """
  from paperlab.quant import calibration  # pylint: disable=g-import-not-at-top

  batches = list(batches)
  saliency = guided_saliency(model, batches, labels, loss_fn=loss_fn, n_groups=n_groups, include=include,
                             exclude=exclude)

  def solve(path, kernel, x):
    return guided_gptq_layer(kernel, guided_hessian(x, saliency[path]), **gptq_kwargs)

  return calibration.sequential(model, batches, solve, statistic="inputs", include=include, exclude=exclude,
                                true_sequential=true_sequential)
