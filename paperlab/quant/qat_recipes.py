"""QAT recipes: EfficientQAT (Block-AP, then E2E-QP) and QA-LoRA.

* EfficientQAT (Chen et al., "EfficientQAT: Efficient Quantization-Aware Training for Large Language Models",
  arXiv:2407.11062): a learnable asymmetric group quantizer (step ``s`` and zero point ``z`` per group, straight-
  through rounding; the ``UniformAffineQuantizer`` of the official code, github:OpenGVLab/EfficientQAT
  ``quantize/quantizer.py``), trained block by block together with all weights on the MSE to the full-precision
  block output (Block-AP, :func:`block_ap`), then frozen to integer codes whose step sizes alone are trained end to
  end on the task loss (E2E-QP, :func:`e2e_qp_freeze` + :func:`e2e_qp_optimizer`).
* QA-LoRA (Xu et al., "QA-LoRA: Quantization-Aware Low-Rank Adaptation of Large Language Models",
  arXiv:2309.14717): the LoRA input is average-pooled over the quantization groups, so the adapter's update is
  constant within a group and merges into the zero points (:func:`qalora_merge`) -- the merged weight keeps its
  integer codes. Transcribed from the official code (github:yuhuixu1993/qa-lora, commit 91604c71,
  ``peft_utils.py``: ``AvgPool1d(group_size)`` before ``lora_A``; ``merge.py``: ``qzeros -= (B A)^T * scale /
  group_size / scales``). The adapter arrays are :mod:`paperlab.peft`'s LoRA arrays (``lora_A (r, in/g)``,
  ``lora_B (out, r)``, scale ``alpha / r``).

Layout: Flax kernels ``(in, out)``, groups of ``group_size`` consecutive input rows (as in
:mod:`paperlab.quant.rtn`); scales and zero points ``(in // group_size, out)``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from paperlab import peft as _peft
from paperlab.quant import qarray as _qa
from paperlab.quant import rtn as _rtn
from paperlab.quant.qat import clip_open, round_ste

__all__ = [
    "CLIPMIN", "CLIPMAX", "efficientqat_init", "affine_fake_quantize", "block_ap_optimizer", "block_ap",
    "e2e_qp_freeze", "e2e_qp_dequantize", "e2e_qp_labels", "e2e_qp_optimizer", "e2e_qp_export",
    "qalora_init", "qalora_pool", "qalora_apply", "qalora_merge", "qlora_merge_requant",
]

PyTree = Any
CLIPMIN = 1e-4
"""Smallest step size of EfficientQAT's quantizer (``CLIPMIN`` of the official ``quantizer.py``)."""
CLIPMAX = 1e4
"""Largest step size of EfficientQAT's quantizer."""


def _grouped(w: jax.Array, g: int) -> jax.Array:
  return w.reshape(w.shape[0] // g, g, w.shape[1])


def _clamp_ste(x: jax.Array, lo: float, hi: float) -> jax.Array:
  """Forward ``clip(x, lo, hi)``, gradient identity (EfficientQAT's ``clamp_ste``)."""
  return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def efficientqat_init(w: jax.Array, *, bits: int = 2, group_size: int = 64) -> dict[str, jax.Array]:
  """EfficientQAT's quantizer initialization (official ``UniformAffineQuantizer.__init__``): per group,
  ``s = clip((max - min) / (2^b - 1), 1e-4, 1e4)`` and ``z = round(-clip(min / s, -1e4, 1e4))`` (the raw group
  min/max, not widened to include 0 as RTN's grid is). Paper settings: W2/W3/W4 with group 64 or 128.

  Returns:
    ``{"scale": (in // g, out), "zero": (in // g, out)}`` float32.

  Raises:
    ValueError: bad ``bits``, ``group_size`` or kernel.
  """
  w = _rtn.check_kernel("w", w)
  bits = _rtn.check_bits(bits)
  g = _rtn.check_group_size(group_size, w.shape[0])
  wg = _grouped(w.astype(jnp.float32), g)
  xmin, xmax = wg.min(axis=1), wg.max(axis=1)
  scale = jnp.clip((xmax - xmin) / (2.0 ** bits - 1.0), CLIPMIN, CLIPMAX)
  zero = jnp.round(-jnp.clip(xmin / scale, -1e4, 1e4))
  return {"scale": scale, "zero": zero}


def affine_fake_quantize(w: jax.Array, scale: jax.Array, zero: jax.Array, *, bits: int = 2) -> jax.Array:
  """EfficientQAT's learnable asymmetric group fake quantizer (arXiv:2407.11062, eq. 1; official
  ``UniformAffineQuantizer.fake_quant``):

  ``w_hat = (clip(round(w / s') + z', 0, 2^b - 1) - z') s'`` with ``s' = clamp(s, 1e-4, 1e4)`` and
  ``z' = clamp(round(z), 0, 2^b - 1)``, every ``round`` and ``clamp`` straight-through, so ``w``, ``s`` and ``z``
  all get gradients (LSQ-like for ``s``, without LSQ's gradient scale). The group size is read from the shapes:
  ``scale`` and ``zero`` are ``(in // g, out)``.

  Returns:
    float32 kernel of ``w``'s shape. Jittable.
  """
  w = jnp.asarray(w)
  scale, zero = jnp.asarray(scale, jnp.float32), jnp.asarray(zero, jnp.float32)
  if w.ndim != 2 or scale.ndim != 2 or scale.shape != zero.shape or scale.shape[1] != w.shape[1] \
      or w.shape[0] % scale.shape[0]:
    raise ValueError(f"w must be (in, out) and scale/zero (in // group_size, out); got w {w.shape}, scale "
                     f"{scale.shape}, zero {zero.shape}.")
  bits = _rtn.check_bits(bits)
  qmax = 2.0 ** bits - 1.0
  g = w.shape[0] // scale.shape[0]
  s = _clamp_ste(scale, CLIPMIN, CLIPMAX)[:, None]
  z = _clamp_ste(round_ste(zero), 0.0, qmax)[:, None]
  q = clip_open(round_ste(_grouped(w.astype(jnp.float32), g) / s) + z, 0.0, qmax)
  return ((q - z) * s).reshape(w.shape)


def block_ap_optimizer(num_steps: int, *, weight_lr: float = 2e-5, quant_lr: float = 1e-4,
                       min_lr_factor: float = 20.0, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Block-AP's optimizer (official ``quantize/block_ap.py`` and ``examples/block_ap`` scripts): AdamW with two
  parameter groups, the weights at ``weight_lr`` (2e-5) and the quantization parameters at ``quant_lr`` (1e-4),
  each on a cosine schedule down to ``lr / min_lr_factor``. Applies to a pytree ``{"params": ..., "quant": ...}``."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps!r}.")

  def adamw(lr):
    sched = optax.cosine_decay_schedule(lr, num_steps, alpha=1.0 / min_lr_factor)
    return optax.adamw(sched, weight_decay=weight_decay)

  return optax.multi_transform({"params": adamw(weight_lr), "quant": adamw(quant_lr)},
                               {"params": "params", "quant": "quant"})


def block_ap(block_fn: Callable[[PyTree, jax.Array], jax.Array], params: Mapping[str, jax.Array],
             x_in: jax.Array, y_fp: jax.Array, *, bits: int = 2, group_size: int = 64, num_steps: int = 100,
             batch_size: int | None = None, key: jax.Array | None = None, weight_lr: float = 2e-5,
             quant_lr: float = 1e-4, quantize: str = r".*kernel") -> tuple[dict, dict, jax.Array]:
  """Block-wise training of all parameters with quantization (EfficientQAT Block-AP, arXiv:2407.11062, section
  3.2): the kernels whose path matches ``quantize`` are fake-quantized with :func:`affine_fake_quantize` from
  :func:`efficientqat_init`, and the block's weights and the steps/zero points are trained with
  :func:`block_ap_optimizer` on ``mean((block_fn(params_q, x_in) - y_fp)^2)``, where ``x_in`` are the block's
  inputs from the already-quantized previous blocks and ``y_fp`` the full-precision block's outputs.

  Args:
    block_fn: ``block_fn(params, x) -> y``, pure; ``params`` is a flat ``{path: array}`` dict.
    params: the block's parameters ``{path: array}``.
    x_in, y_fp: inputs and targets, leading axis = samples.
    bits, group_size: the grid (paper: W2/W3/W4, g64/g128).
    num_steps: optimizer steps (paper: 2 epochs over 4096 samples).
    batch_size: samples per step (``None``: all); needs ``key``.
    key: PRNG key for the minibatches.
    weight_lr, quant_lr: the official defaults 2e-5 and 1e-4 (W2 Llama scripts).
    quantize: ``re.fullmatch`` pattern selecting the kernels to quantize.

  Returns:
    ``(params, quant, losses)``: trained float params, ``{path: {"scale", "zero"}}``, per-step losses.
  """
  import re  # pylint: disable=g-import-not-at-top

  rx = re.compile(quantize)
  qpaths = [p for p in params if rx.fullmatch(p)]
  if not qpaths:
    raise ValueError(f"quantize={quantize!r} matches none of the block's parameters {sorted(params)}.")
  quant = {p: efficientqat_init(params[p], bits=bits, group_size=group_size) for p in qpaths}
  if batch_size is not None and key is None:
    raise ValueError("batch_size needs a PRNG key.")
  tx = block_ap_optimizer(num_steps, weight_lr=weight_lr, quant_lr=quant_lr)
  tree = {"params": dict(params), "quant": quant}
  n = x_in.shape[0]

  def loss_fn(tree, xb, yb):
    p = dict(tree["params"])
    for path, q in tree["quant"].items():
      p[path] = affine_fake_quantize(p[path], q["scale"], q["zero"], bits=bits).astype(p[path].dtype)
    return jnp.mean(jnp.square(block_fn(p, xb).astype(jnp.float32) - yb.astype(jnp.float32)))

  def step(carry, k):
    tree, opt = carry
    if batch_size is None:
      xb, yb = x_in, y_fp
    else:
      idx = jax.random.randint(k, (batch_size,), 0, n)
      xb, yb = x_in[idx], y_fp[idx]
    loss, grads = jax.value_and_grad(loss_fn)(tree, xb, yb)
    updates, opt = tx.update(grads, opt, tree)
    return (optax.apply_updates(tree, updates), opt), loss

  keys = jax.random.split(jax.random.key(0) if key is None else key, num_steps)
  (tree, _), losses = jax.jit(lambda t, o, ks: jax.lax.scan(step, (t, o), ks))(tree, tx.init(tree), keys)
  return tree["params"], tree["quant"], losses


def e2e_qp_freeze(w: jax.Array, scale: jax.Array, zero: jax.Array, *, bits: int = 2) -> dict[str, jax.Array]:
  """Freeze a Block-AP result to EfficientQAT's integer form for E2E-QP: ``{"codes", "scale", "zero"}`` with
  ``codes = clip(round(w / s') + z', 0, 2^b - 1)`` (float32 holding integers), ``s'`` and ``z'`` clamped/rounded as
  in :func:`affine_fake_quantize`; :func:`e2e_qp_dequantize` of it equals :func:`affine_fake_quantize` bit for
  bit."""
  bits = _rtn.check_bits(bits)
  qmax = 2.0 ** bits - 1.0
  s = jnp.clip(jnp.asarray(scale, jnp.float32), CLIPMIN, CLIPMAX)
  z = jnp.clip(jnp.round(jnp.asarray(zero, jnp.float32)), 0.0, qmax)
  g = w.shape[0] // s.shape[0]
  codes = jnp.clip(jnp.round(_grouped(jnp.asarray(w, jnp.float32), g) / s[:, None]) + z[:, None], 0.0, qmax)
  return {"codes": codes.reshape(w.shape), "scale": s, "zero": z}


def e2e_qp_dequantize(qw: Mapping[str, jax.Array]) -> jax.Array:
  """``(codes - zero) * scale`` per group: the kernel of an E2E-QP weight, differentiable in ``scale`` (and
  ``zero``); the codes are constants."""
  codes, s, z = jax.lax.stop_gradient(qw["codes"]), qw["scale"], qw["zero"]
  g = codes.shape[0] // s.shape[0]
  return ((_grouped(codes, g) - z[:, None]) * s[:, None]).reshape(codes.shape)


def e2e_qp_labels(tree: PyTree, *, train_zero: bool = False) -> PyTree:
  """``"train"`` for every ``scale`` leaf (and ``zero`` with ``train_zero``) of a pytree holding E2E-QP weights,
  ``"freeze"`` for everything else (codes, biases, norms...): the labels of :func:`e2e_qp_optimizer`."""
  names = ("scale", "zero") if train_zero else ("scale",)

  def label(path, _):
    last = path[-1]
    key = getattr(last, "key", getattr(last, "name", None))
    return "train" if key in names else "freeze"

  return jax.tree_util.tree_map_with_path(label, tree)


def e2e_qp_optimizer(learning_rate: float | optax.Schedule = 2e-5, tree: PyTree = None, *,
                     train_zero: bool = False, max_grad_norm: float = 0.3) -> optax.GradientTransformation:
  """E2E-QP (EfficientQAT, arXiv:2407.11062, section 3.3): end-to-end training of the step sizes only, the integer
  codes (and everything else) frozen. ``optax.multi_transform`` of AdamW (no weight decay; official defaults
  lr 2e-5, gradient clipping 0.3 from ``examples/e2e_qp``) on the ``scale`` leaves and ``set_to_zero`` on the rest,
  with labels from :func:`e2e_qp_labels` (``tree`` gives the structure; pass the parameters the loss differentiates).
  """
  if tree is None:
    raise ValueError("tree must be the parameter pytree (its scale leaves are trained).")
  labels = e2e_qp_labels(tree, train_zero=train_zero)
  return optax.multi_transform({"train": optax.chain(optax.clip_by_global_norm(max_grad_norm),
                                                     optax.adamw(learning_rate, weight_decay=0.0)),
                                "freeze": optax.set_to_zero()}, labels)


def e2e_qp_export(qw: Mapping[str, jax.Array], *, bits: int = 2) -> _qa.QArray:
  """An E2E-QP weight as a packed ``uint{bits}`` :class:`~paperlab.quant.QArray` (float32 scales, the integer
  zero points); ``dequantize()`` equals :func:`e2e_qp_dequantize` bit for bit. Host function.

  Raises:
    ValueError: zero points that are not integers in ``[0, 2^b - 1]`` (trained with ``train_zero``).
  """
  bits = _rtn.check_bits(bits)
  z = jnp.asarray(qw["zero"], jnp.float32)
  if not bool(jnp.all((z == jnp.round(z)) & (z >= 0) & (z <= 2 ** bits - 1))):
    raise ValueError(f"zero points must be integers in [0, {2 ** bits - 1}] to be stored in a QArray.")
  w_hat = e2e_qp_dequantize(qw)
  g = w_hat.shape[0] // z.shape[0]
  return _qa.quantize(w_hat, f"uint{bits}", axis=0, group_size=g, scale=jnp.asarray(qw["scale"], jnp.float32),
                      zero=z.astype(jnp.uint8))


# ----------------------------------------------------------------------------------------------------------------
# QA-LoRA


def _check_qw(qw: Any) -> int:
  if not isinstance(qw, _rtn.QuantizedWeight):
    raise TypeError(f"qw must be a paperlab.quant.QuantizedWeight (from quantize_rtn / gptq), got "
                    f"{type(qw).__name__}.")
  rows = qw.codes.shape[0]
  g = rows // qw.scale.shape[0]
  if g * qw.scale.shape[0] != rows:
    raise ValueError(f"qw's scale shape {qw.scale.shape} does not divide its {rows} input rows into groups.")
  return g


def qalora_init(key: jax.Array, qw: _rtn.QuantizedWeight, *, r: int, a_init: str = "kaiming_uniform"
                ) -> dict[str, jax.Array]:
  """QA-LoRA adapter for a group-quantized kernel: :func:`paperlab.peft.lora_init` on the pooled input size,
  ``{"lora_A": (r, in // g), "lora_B": (out, r)}`` with ``lora_B = 0`` (the adapted model starts equal to the
  quantized base). Paper: rank 64, group 32 (arXiv:2309.14717, section 4.1); the official code draws ``lora_A``
  with ``xavier_uniform_``, peft's default is kept here."""
  g = _check_qw(qw)
  shape = (qw.codes.shape[0] // g, qw.codes.shape[1])
  return _peft.lora_init(key, {"w": jnp.zeros(shape, jnp.float32)}, include="^w$", r=r, a_init=a_init)["w"]


def qalora_pool(x: jax.Array, group_size: int) -> jax.Array:
  """Average pooling of the last axis over groups of ``group_size`` (the official ``nn.AvgPool1d(group_size)``):
  ``(..., in) -> (..., in // group_size)``."""
  x = jnp.asarray(x)
  if x.shape[-1] % group_size:
    raise ValueError(f"group_size={group_size} must divide the input size {x.shape[-1]}.")
  return jnp.mean(x.reshape(x.shape[:-1] + (x.shape[-1] // group_size, group_size)), axis=-1)


def qalora_apply(x: jax.Array, qw: _rtn.QuantizedWeight, adapter: Mapping[str, jax.Array], *,
                 alpha: float = _peft.DEFAULT_ALPHA) -> jax.Array:
  """QA-LoRA forward (arXiv:2309.14717, eq. 4; official ``peft_utils.py``):
  ``y = x W_hat + (alpha / r) pool(x) A^T B^T`` with ``pool`` the group mean of :func:`qalora_pool`, ``W_hat`` the
  dequantized base. Jittable; gradients reach ``adapter`` only through the LoRA term."""
  g = _check_qw(qw)
  x = jnp.asarray(x)
  base = x.astype(jnp.float32) @ jax.lax.stop_gradient(qw.w_hat.astype(jnp.float32))
  delta = _peft.lora_delta(adapter["lora_A"], adapter["lora_B"], alpha)
  return base + qalora_pool(x.astype(jnp.float32), g) @ delta


def qalora_merge(qw: _rtn.QuantizedWeight, adapter: Mapping[str, jax.Array], *,
                 alpha: float = _peft.DEFAULT_ALPHA) -> _rtn.QuantizedWeight:
  """Merge a QA-LoRA adapter into the zero points (official ``merge.py``:
  ``qzeros -= (B A)^T * scale / group_size / scales``): ``z' = z - D / (g s)`` with ``D = (alpha / r) A^T B^T``
  of shape ``(in // g, out)``. The codes are unchanged (still in ``[0, 2^b - 1]``); the zero points become
  floats, so the result is a :class:`~paperlab.quant.QuantizedWeight` with ``w_hat = s (q - z')`` and
  ``x @ w_hat`` equals :func:`qalora_apply` up to float rounding."""
  g = _check_qw(qw)
  delta = _peft.lora_delta(adapter["lora_A"], adapter["lora_B"], alpha)
  scale = qw.scale.astype(jnp.float32)
  zero = qw.zero.astype(jnp.float32) - delta / (g * scale)
  w_hat = _rtn.dequantize_codes(_grouped(qw.codes, g), scale[:, None], zero[:, None]).reshape(qw.codes.shape)
  return _rtn.QuantizedWeight(w_hat.astype(qw.w_hat.dtype), qw.codes, qw.scale, zero, qw.g_idx)


def qlora_merge_requant(qw: _rtn.QuantizedWeight, adapter: Mapping[str, jax.Array], *, bits: int = 4,
                        alpha: float = _peft.DEFAULT_ALPHA, symmetric: bool = False) -> _rtn.QuantizedWeight:
  """QA-LoRA's baseline (arXiv:2309.14717, section 3.2): a QLoRA-style adapter (Dettmers et al., arXiv:2305.14314)
  with a full-input ``lora_A (r, in)`` merged into the dequantized base in float, ``W' = W_hat + (alpha / r)
  A^T B^T``, then re-quantized by RTN on the base's groups (the lossy step QA-LoRA avoids).

  Raises:
    ValueError: adapter shapes that do not match the kernel ``(in, out)``.
  """
  g = _check_qw(qw)
  d_in, d_out = qw.codes.shape
  a, b = adapter["lora_A"], adapter["lora_B"]
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != d_in or b.shape != (d_out, a.shape[0]):
    raise ValueError(f"adapter must hold lora_A (r, {d_in}) and lora_B ({d_out}, r); got {a.shape} and {b.shape}.")
  merged = qw.w_hat.astype(jnp.float32) + _peft.lora_delta(a, b, alpha)
  return _rtn.quantize_rtn(merged, bits=bits, group_size=g, symmetric=symmetric)
