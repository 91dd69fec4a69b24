"""Elastic quantization (EQ-Net: Xu et al., "EQ-Net: Elastic Quantization Neural Networks", ICCV 2023; no arXiv id
in the catalogue): one set of float weights trained as a *supernet* whose sub-networks are quantization forms drawn
from an elastic space of bit-width {2..8}, granularity {per-tensor, per-channel} and symmetry {sym, asym}.

* :class:`QConfig` / :class:`ElasticSpace`: one quantization form and the space it is drawn from;
* :func:`elastic_fake_quant`: fake quantization of a weight in a given form, straight-through gradient; the grid
  of each form is :func:`paperlab.quant.quantize`'s ``int{b}`` (symmetric) or ``uint{b}`` (asymmetric);
* :func:`sample_configs`: the sandwich rule (largest, random..., smallest) of the supernet step;
  :func:`space_configs`: every form of a space (to evaluate each sub-network);
* :func:`wdr_loss` (weight distribution regularization, with :func:`skewness_kurtosis`) and :func:`gpg_loss`
  (group progressive guidance: each sampled sub-network distils from the one sampled before it).

The catalogue gives no equations for the two losses; where it is silent they follow the official code,
github.com/xuke225/EQ-Net at commit 86b9e417ec906fb87493fd1c00feb22574341285 (``runner/criterion.py``,
``runner/trainer.py``, ``module/qat_model.py``, ``configs/train-supernet.yaml``), as each docstring says.

Layout: a Flax kernel is ``(in, out)`` (a conv kernel ``(..., in, out)``); "per channel" is per output channel,
the last axis, with the statistics taken over all other axes.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab import _checks
from paperlab.quant import qat as _qat
from paperlab.quant import rtn as _rtn

__all__ = ["QConfig", "ElasticSpace", "elastic_fake_quant", "sample_configs", "space_configs", "skewness_kurtosis",
           "wdr_loss", "gpg_loss"]

PyTree = Any


class QConfig(NamedTuple):
  """One quantization form of the elastic space.

  Attributes:
    bits: bit width, 2..8 (a Python int, or an integer array when sampled under ``jit``).
    per_channel: one scale per output channel (last axis) instead of one per tensor.
    symmetric: the symmetric signed grid ``int{bits}`` instead of the asymmetric min-max grid ``uint{bits}``.

  A ``QConfig`` of Python values is hashable, so it can be a static argument of ``jax.jit``; one whose fields are
  arrays of shape ``(n,)`` (:func:`sample_configs`, :func:`space_configs`) holds ``n`` forms.
  """

  bits: Any = 8
  per_channel: Any = True
  symmetric: Any = False


class ElasticSpace(NamedTuple):
  """The elastic space (defaults: EQ-Net's, bits 2..8 x {per-tensor, per-channel} x {sym, asym}; the official
  ``configs/train-supernet.yaml``)."""

  bits: tuple = (2, 3, 4, 5, 6, 7, 8)
  per_channel: tuple = (False, True)
  symmetric: tuple = (False, True)


def _check_space(space: Any) -> ElasticSpace:
  if not isinstance(space, ElasticSpace):
    raise TypeError(f"space must be an ElasticSpace, got {type(space).__name__}.")
  bits = tuple(space.bits)
  if not bits or len(set(bits)) != len(bits) or any(
      isinstance(b, bool) or not isinstance(b, (int, np.integer)) or int(b) not in _rtn.SUPPORTED_BITS for b in bits):
    raise ValueError(f"space.bits must be distinct ints from {list(_rtn.SUPPORTED_BITS)}, got {space.bits!r}.")
  for name in ("per_channel", "symmetric"):
    v = tuple(getattr(space, name))
    if not v or len(set(v)) != len(v) or any(not isinstance(x, (bool, np.bool_)) for x in v):
      raise ValueError(f"space.{name} must be a non-empty tuple of distinct bools, got {getattr(space, name)!r}.")
  return ElasticSpace(tuple(int(b) for b in bits), tuple(bool(x) for x in space.per_channel),
                      tuple(bool(x) for x in space.symmetric))


def _select(flag: Any, on_true: jax.Array, on_false: jax.Array) -> jax.Array:
  if _is_static_bool(flag):
    return on_true if flag else on_false
  return jnp.where(flag, on_true, on_false)


def _grid(w32: jax.Array, bits: Any, per_channel: Any, symmetric: Any) -> jax.Array:
  """The value of ``w32`` on :func:`paperlab.quant.quantize`'s ``int{bits}`` / ``uint{bits}`` grid (float32 scale).

  Both grids are written as ``(clip(round(w / s) + z, 0, 2^b - 1) - z) s``: the symmetric one with
  ``s = max|w| / (2^(b-1) - 1)`` and ``z = 2^(b-1)`` (the same integers as ``clip(round(w / s), -2^(b-1),
  2^(b-1) - 1)``), so a traced form is a ``where`` between statistics, not between quantized tensors."""
  def stats(axes):
    return (jnp.min(w32, axis=axes, keepdims=True), jnp.max(w32, axis=axes, keepdims=True),
            jnp.max(jnp.abs(w32), axis=axes, keepdims=True))

  channel = stats(tuple(range(w32.ndim - 1))) if per_channel is not False else None
  tensor = stats(None) if per_channel is not True else None
  mn, mx, amax = (channel if per_channel is True else tensor if per_channel is False else
                  tuple(jnp.where(per_channel, c, t) for c, t in zip(channel, tensor)))
  bits = jnp.asarray(bits, jnp.float32)
  maxq = jnp.exp2(bits) - 1.0
  half = jnp.exp2(bits - 1.0)
  lo, hi = jnp.minimum(mn, 0.0), jnp.maximum(mx, 0.0)
  s_asym = jnp.where(hi > lo, (hi - lo) / maxq, 1.0)
  s_sym = jnp.where(amax > 0, amax / (half - 1.0), 1.0)
  s = _select(symmetric, s_sym, s_asym)
  z = _select(symmetric, jnp.broadcast_to(half, s_sym.shape), jnp.clip(jnp.round(-lo / s_asym), 0.0, maxq))
  return (jnp.clip(jnp.round(w32 / s) + z, 0.0, maxq) - z) * s


def _is_static_bool(x: Any) -> bool:
  return isinstance(x, (bool, np.bool_))


def _check_flag(name: str, x: Any) -> Any:
  if _is_static_bool(x):
    return bool(x)
  if isinstance(x, (jax.Array, np.ndarray)) and jnp.ndim(x) == 0 and (
      jnp.issubdtype(x.dtype, jnp.bool_) or jnp.issubdtype(x.dtype, jnp.integer)):
    return x
  raise ValueError(f"cfg.{name} must be a bool (or a scalar bool/int array under jit), got {x!r}.")


def _check_cfg_bits(bits: Any) -> Any:
  if isinstance(bits, jax.core.Tracer):
    if jnp.ndim(bits) != 0:
      raise ValueError(f"cfg.bits must be a scalar, got a traced array of shape {jnp.shape(bits)}.")
    return bits  # traced: not checked (a value outside 2..8 gives that grid, not an error)
  if isinstance(bits, (jax.Array, np.ndarray)):
    ok = (bits.ndim == 0 and not jnp.issubdtype(bits.dtype, jnp.bool_) and float(bits) == int(bits)
          and int(bits) in _rtn.SUPPORTED_BITS)
  else:
    ok = not isinstance(bits, bool) and isinstance(bits, (int, np.integer)) and int(bits) in _rtn.SUPPORTED_BITS
  if not ok:
    raise ValueError(f"cfg.bits must be one of {list(_rtn.SUPPORTED_BITS)}, got {bits!r}.")
  return bits


def elastic_fake_quant(w: jax.Array, cfg: QConfig) -> jax.Array:
  """Fake-quantize ``w`` in the quantization form ``cfg`` with the straight-through estimator (EQ-Net's elastic
  quantizer, Xu et al., ICCV 2023, section 3; STE of Bengio et al., arXiv:1308.3432).

  Forward, in float32 (``b = cfg.bits``; statistics per tensor, or per output channel = over all axes but the last):

  * ``cfg.symmetric``: ``s = max|w| / (2^(b-1) - 1)``, ``w_hat = s clip(round(w / s), -2^(b-1), 2^(b-1) - 1)``;
  * asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``s = (hi - lo) / (2^b - 1)``,
    ``z = round(-lo / s)``, ``w_hat = s (clip(round(w / s) + z, 0, 2^b - 1) - z)``;

  i.e. ``paperlab.quant.quantize(w, f"int{b}" or f"uint{b}", axis=..., scale_dtype=float32).dequantize()``
  (an all-zero slab gets ``s = 1``). Backward: ``dL/dw = dL/dw_hat`` (the min-max grid clips no weight). The grid
  is recomputed from the current ``w`` at every call; EQ-Net's official code learns one LSQ step per form,
  initialized by an MSE search -- that is not done here.

  Args:
    w: floating weight; ``ndim >= 2`` when per channel.
    cfg: a :class:`QConfig`. Static Python values compile one form. Under ``jit`` ``bits`` may be traced (one
      program serves every width), and so may ``per_channel`` / ``symmetric`` (scalar bool or int arrays): both
      grids are one formula (see ``_grid``), so a traced form only selects between per-tensor and per-channel
      statistics and between two scales and zero points -- one quantized tensor is computed, never four.

  Returns:
    The fake-quantized ``w`` in ``w``'s dtype and shape.

  Raises:
    ValueError: ``cfg.bits`` outside 2..8 (when concrete), a non-bool ``per_channel`` / ``symmetric``, a per-channel
      form of a 0-D or 1-D ``w``, or non-finite concrete ``w``.
    TypeError: ``cfg`` is not a :class:`QConfig`, or ``w`` is not floating.
  """
  if not isinstance(cfg, QConfig):
    raise TypeError(f"cfg must be a QConfig, got {type(cfg).__name__}.")
  if not (hasattr(w, "dtype") and jnp.issubdtype(w.dtype, jnp.floating)):
    raise TypeError(f"w must be a floating array, got {getattr(w, 'dtype', type(w).__name__)}.")
  w = jnp.asarray(w)
  _rtn.check_finite("w", w)
  bits = _check_cfg_bits(cfg.bits)
  per_channel = _check_flag("per_channel", cfg.per_channel)
  symmetric = _check_flag("symmetric", cfg.symmetric)
  if per_channel is not False and w.ndim < 2:
    raise ValueError(f"a per-channel form needs w with ndim >= 2 (channels on the last axis), got shape {w.shape}.")
  w_hat = _grid(w.astype(jnp.float32), bits, per_channel, symmetric)
  return _qat._straight_through(w, w_hat.astype(w.dtype))


def sample_configs(rng: jax.Array, space: ElasticSpace = ElasticSpace(), n: int = 3) -> QConfig:
  """``n`` forms for one supernet step by the sandwich rule (EQ-Net, section 3; the official ``QuantSuperNetTrainer``
  with ``num_subnet: 3``, the default here): the first has the largest bit width, the last the smallest, those in
  between a bit width drawn uniformly from ``space.bits``; granularity and symmetry are drawn uniformly for every
  form, the largest and smallest included (as the official ``set_biggest_subnet`` / ``set_smallest_subnet`` do).

  The official code draws a form per layer (and keeps the first and last layers at 8 bits); a :class:`QConfig`
  here is one form, to be used for every layer the caller quantizes (or drawn per layer by calling this again).

  Args:
    rng: a JAX PRNG key.
    space: the :class:`ElasticSpace`.
    n: forms per step (static, >= 1; ``n = 1`` is the largest only, ``n = 2`` largest and smallest).

  Returns:
    A :class:`QConfig` of arrays of shape ``(n,)``: ``bits`` int32, ``per_channel`` and ``symmetric`` bool.
    Jittable (``space`` and ``n`` static).

  Raises:
    ValueError: an invalid ``space`` or ``n``.
  """
  space = _check_space(space)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be a positive int, got {n!r}.")
  k_bits, k_pc, k_sym = jax.random.split(rng, 3)
  bits = jax.random.choice(k_bits, jnp.asarray(space.bits, jnp.int32), (n,))
  bits = bits.at[0].set(max(space.bits))
  if n >= 2:
    bits = bits.at[-1].set(min(space.bits))
  pc = jax.random.choice(k_pc, jnp.asarray(space.per_channel, bool), (n,))
  sym = jax.random.choice(k_sym, jnp.asarray(space.symmetric, bool), (n,))
  return QConfig(bits, pc, sym)


def space_configs(space: ElasticSpace = ElasticSpace()) -> QConfig:
  """Every form of ``space`` (bits major, then granularity, then symmetry) as a :class:`QConfig` of arrays of shape
  ``(len(bits) * len(per_channel) * len(symmetric),)``; index it (``jax.tree.map(lambda a: a[i], cfgs)``) or
  ``vmap`` over it to evaluate each sub-network. Host function."""
  space = _check_space(space)
  rows = list(itertools.product(space.bits, space.per_channel, space.symmetric))
  return QConfig(jnp.asarray([r[0] for r in rows], jnp.int32), jnp.asarray([r[1] for r in rows], bool),
                 jnp.asarray([r[2] for r in rows], bool))


def skewness_kurtosis(w: jax.Array, *, ddof: int = 1) -> tuple[jax.Array, jax.Array]:
  """Sample skewness ``mean(z^3)`` and kurtosis ``mean(z^4)`` (not excess) of all elements of ``w``, with
  ``z = (w - mean(w)) / std(w)`` and ``std`` computed with ``ddof`` (default 1: ``torch.std``, as EQ-Net's
  ``SkewnessLossCalc`` / ``KurtosisLossCalc`` in ``runner/criterion.py``). ``ddof=0`` gives the moment ratios
  ``m3 / m2^1.5`` and ``m4 / m2^2`` (``scipy.stats.skew`` / ``kurtosis(fisher=False)``). A constant ``w``
  (``std = 0``) gives ``(0, 0)`` instead of NaN. float32 (float64 for float64 input); jittable."""
  w = jnp.asarray(w)
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise TypeError(f"w must be a floating array, got {w.dtype}.")
  if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof not in (0, 1):
    raise ValueError(f"ddof must be 0 or 1, got {ddof!r}.")
  if w.size <= ddof:
    raise ValueError(f"w needs more than ddof={ddof} elements, got {w.size}.")
  dt = jnp.promote_types(w.dtype, jnp.float32)
  x = w.astype(dt).reshape(-1)
  d = x - jnp.mean(x)
  std = jnp.sqrt(jnp.sum(d * d) / (x.size - ddof))
  z = d / jnp.where(std > 0, std, 1.0)
  return jnp.mean(z ** 3), jnp.mean(z ** 4)


def wdr_loss(params: PyTree, *, skewness_weight: float | jax.Array = 1.0, kurtosis_weight: float | jax.Array = 0.015,
             skewness_target: float | jax.Array = 0.0, kurtosis_target: float | jax.Array = 1.8,
             ddof: int = 1) -> jax.Array:
  """EQ-Net's weight distribution regularization (WDR-Loss; Xu et al., ICCV 2023, section 3): every weight tensor is
  pulled toward a quantization-friendly shape, zero skewness and a flat (uniform-like) kurtosis, so one set of
  weights suits every form of the elastic space.

  ``L = mean_l [ lambda_s (skew(W_l) - s*)^2 + lambda_k (kurt(W_l) - k*)^2 ]``

  with :func:`skewness_kurtosis` per tensor (all its elements; ``std`` with Bessel's correction by default). The
  catalogue states no equation ("skewness and kurtosis toward a quantization-friendly shape"); the form, targets
  and weights are the official code's (``runner/criterion.py``: ``SkewnessLoss`` with target 0 and
  ``KurtosisLoss`` with target 1.8, the uniform distribution's kurtosis as in KURE, squared, averaged over the
  layers; ``configs/train-supernet.yaml``: ``skew_rate: 1.0``, ``kurt_rate: 0.015``). Where the paper is
  ambiguous: the official trainer leaves the first quantized layer out of both averages (pass only the leaves to
  regularize), and ``kurtosis_target=3`` makes a Gaussian the zero-loss shape instead of the uniform one.

  Args:
    params: pytree of floating weight arrays (each with more than ``ddof`` elements); every leaf is regularized.
    skewness_weight, kurtosis_weight: ``lambda_s``, ``lambda_k`` (>= 0).
    skewness_target, kurtosis_target: ``s*``, ``k*``.
    ddof: 1 (``torch.std``, official) or 0 (moment ratios).

  Returns:
    float32 scalar, differentiable in the weights. Jittable.

  Raises:
    ValueError: an empty pytree, a negative concrete weight, a bad ``ddof`` or a leaf with too few elements.
    TypeError: a non-floating leaf.
  """
  _checks.check_non_negative("skewness_weight", skewness_weight)
  _checks.check_non_negative("kurtosis_weight", kurtosis_weight)
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError("params must hold at least one weight array, got an empty pytree.")
  terms = []
  for w in leaves:
    skew, kurt = skewness_kurtosis(w, ddof=ddof)
    terms.append(jnp.asarray(skewness_weight, jnp.float32) * jnp.square(skew - skewness_target)
                 + jnp.asarray(kurtosis_weight, jnp.float32) * jnp.square(kurt - kurtosis_target))
  return jnp.mean(jnp.stack([t.astype(jnp.float32) for t in terms]))


def gpg_loss(logits_by_bits: Sequence[jax.Array] | jax.Array, labels: jax.Array | None = None, *,
             alpha: float | jax.Array = 0.5, temperature: float | jax.Array = 1.0,
             where: jax.Array | None = None) -> jax.Array:
  """EQ-Net's group progressive guidance (GPG-Loss; Xu et al., ICCV 2023, section 3): the sub-networks of one
  supernet step, ordered from the highest bit width down (the sandwich order of :func:`sample_configs`), each
  distil from the one before them, whose logits are a fixed target (no gradient):

  ``L = sum_{i=1}^{n-1} [ alpha T^2 KL(softmax(z_{i-1} / T) || softmax(z_i / T)) + (1 - alpha) CE(z_i, y) ]``

  per example, or ``T^2 sum_i KL(...)`` without ``labels``. This is the official ``QuantSuperNetTrainer`` (the soft
  label is the previous sub-network's detached output) with ``KLLossSoft`` (``runner/criterion.py``; alpha 0.5 as
  the trainer passes it, T = 1). The highest-bit sub-network's own loss (cross entropy on the labels) is not part
  of it: the step loss is ``CE(z_0, y) + gpg_loss(z, y)``. "Group" in the paper's name: sub-networks are guided
  group by group from high to low bit width; the catalogue describes it as "higher-bit subnets' logits supervise
  lower-bit ones via KL", which is what the chain does.

  Args:
    logits_by_bits: ``n >= 2`` logits arrays ``(..., classes)`` of the same shape, or one array ``(n, ..., classes)``.
    labels: optional integer labels ``(...)``.
    alpha: weight of the distillation term in [0, 1] (used with ``labels`` only).
    temperature: ``T > 0``.
    where: optional mask over examples ``(...)``; masked examples give 0.

  Returns:
    Per-example loss, shape ``(...)``, float32. Jittable.

  Raises:
    ValueError: fewer than two logits arrays, mismatched shapes, labels of the wrong shape, ``alpha`` outside
      [0, 1], non-positive ``temperature``, or a ``where`` that does not broadcast to the examples.
  """
  z = [jnp.asarray(a) for a in logits_by_bits]
  if len(z) < 2:
    raise ValueError(f"logits_by_bits must hold at least two sub-networks' logits, got {len(z)}.")
  if any(a.shape != z[0].shape for a in z) or z[0].ndim < 1:
    raise ValueError(f"logits_by_bits must have one shape (..., classes), got {[a.shape for a in z]}.")
  if any(not jnp.issubdtype(a.dtype, jnp.floating) for a in z):
    raise TypeError(f"logits must be floating, got {[str(a.dtype) for a in z]}.")
  _checks.check_range("alpha", alpha, 0.0, 1.0)
  _checks.check_positive("temperature", temperature)
  batch = z[0].shape[:-1]
  if labels is not None:
    labels = jnp.asarray(labels)
    if labels.shape != batch or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be integers of shape {batch}, got {labels.dtype} {labels.shape}.")
  t = jnp.asarray(temperature, jnp.float32)
  total = jnp.zeros(batch, jnp.float32)
  for teacher, student in zip(z[:-1], z[1:]):
    log_p = jax.lax.stop_gradient(jax.nn.log_softmax(teacher.astype(jnp.float32) / t, axis=-1))
    log_q = jax.nn.log_softmax(student.astype(jnp.float32) / t, axis=-1)
    p = jnp.exp(log_p)
    kl = t * t * jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    if labels is None:
      total = total + kl
    else:
      ce = -jnp.take_along_axis(jax.nn.log_softmax(student.astype(jnp.float32), axis=-1), labels[..., None],
                                axis=-1)[..., 0]
      a = jnp.asarray(alpha, jnp.float32)
      total = total + a * kl + (1.0 - a) * ce
  if where is None:
    return total
  where = jnp.asarray(where, bool)
  try:
    if jnp.broadcast_shapes(where.shape, batch) != batch:
      raise ValueError
  except ValueError:
    raise ValueError(f"where must be a mask broadcastable to the examples' shape {batch}, got {where.shape}.") from None
  return jnp.where(where, total, 0.0)
