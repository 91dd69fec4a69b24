"""PD-Quant: post-training quantization with the prediction difference at the network output and distribution
correction of the calibration data (Liu et al., "PD-Quant: Post-Training Quantization based on Prediction Difference
Metric", arXiv:2212.07048, CVPR 2023).

Local reconstruction (AdaRound, BRECQ) makes each layer's output match the full-precision one; PD-Quant adds the
*prediction difference* -- the KL divergence between the full-precision and the quantized network's predictions,
computed with the whole network behind the layer being optimized -- so that the rounding is chosen for what changes
the output, not only the layer's features (Eq. 7-9):

``L = ||O_q - O_fp||^2 + (1 / lambda_r) KL(softmax(z_fp / T) || softmax(z_q / T)) + lambda f_reg(V)``,

``O`` the layer's (block's) output, ``z`` the network's logits with the layers after the current one still in full
precision, ``f_reg`` AdaRound's rounding regulariser. Distribution correction (DC, Eq. 10) adjusts the calibration
inputs so that the batch statistics of the features entering each BatchNorm match its running statistics, with a
penalty that keeps them near the originals:

``x_hat = argmin sum_l ||mu_l(x_hat) - mu_l^BN||^2 + ||sigma_l(x_hat) - sigma_l^BN||^2 + lambda_c ||x_hat - x||^2``.

Defaults follow the official code (github:hustvl/PD-Quant, commit 61cada6, ``main_imagenet.py``,
``quant/block_recon.py``, ``quant/data_utils.py``): ``T = 4``, ``lambda_r = 0.1`` (the KL is divided by it),
AdaRound's ``lambda = 0.01`` and ``beta`` 20 -> 2 after a 20% warm-up, Adam lr 3e-3 on the rounding logits,
20k iterations, mini-batches of 32; DC: Adam lr 1e-3 for 500 iterations, ``lamb_c = 0.02`` whose reciprocal (50)
weights the input penalty, per-sample statistics over the spatial positions, ``sigma = sqrt(var + 1e-6)``.

The rounding variables, the regulariser, the annealing schedule and the grid are :mod:`paperlab.quant.adaround`'s
(the RTN min-max grid of :mod:`paperlab.quant.rtn`); only the objective differs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from paperlab import _checks
from paperlab._tree import path_str
from paperlab.quant import adaround as _ar
from paperlab.quant.rtn import check_bits, check_finite, check_group_size, check_kernel, grouped_rtn

__all__ = ["prediction_difference_loss", "distribution_correction_loss", "distribution_correction",
           "pdquant_loss", "pdquant"]

PyTree = Any


def prediction_difference_loss(logits_fp: jax.Array, logits_q: jax.Array, T: float | jax.Array = 1.0, *,
                               where: jax.Array | None = None) -> jax.Array:
  """The prediction difference ``KL(softmax(z_fp / T) || softmax(z_q / T))`` per example (Liu et al.,
  arXiv:2212.07048, Eq. 8; the official code's ``KLDivLoss(log_softmax(z_q / T), softmax(z_fp / T))``, which uses
  ``T = 4`` for ResNets and ``T = 1`` for MobileNetV2; average over the batch for its ``batchmean``).

  Zero exactly when the two logit vectors differ by a constant; non-negative. Jittable and vmappable.

  Args:
    logits_fp: full-precision logits ``(..., classes)`` (the target distribution).
    logits_q: quantized-network logits of the same shape.
    T: softmax temperature, positive.
    where: optional bool mask ``(...)``; masked-out examples give 0.

  Returns:
    float32 array ``(...)``.
  """
  _checks.check_positive("T", T)
  logits_fp, logits_q = jnp.asarray(logits_fp), jnp.asarray(logits_q)
  if logits_fp.shape != logits_q.shape or logits_fp.ndim < 1:
    raise ValueError(f"logits_fp and logits_q must have the same shape (..., classes), got {logits_fp.shape} and "
                     f"{logits_q.shape}.")
  t = jnp.asarray(T, jnp.float32)
  log_p = jax.nn.log_softmax(logits_fp.astype(jnp.float32) / t, axis=-1)
  log_q = jax.nn.log_softmax(logits_q.astype(jnp.float32) / t, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return kl if where is None else jnp.where(where, kl, 0.0)


def _sample_stats(f: jax.Array, eps: float) -> tuple[jax.Array, jax.Array]:
  """Per-sample, per-channel mean and ``sqrt(var + eps)`` (unbiased variance, as ``torch.var``) over the positions
  between the batch and channel axes (channels last). A ``(batch, channels)`` feature (a BatchNorm after a Dense
  layer) has no positions, and the official per-sample statistic is undefined there; its statistics are taken
  over the batch instead (one row), which is what such a BatchNorm's running statistics estimate."""
  f = f.astype(jnp.float32)
  f = f[None] if f.ndim == 2 else f.reshape(f.shape[0], -1, f.shape[-1])
  return jnp.mean(f, axis=1), jnp.sqrt(jnp.var(f, axis=1, ddof=1) + eps)


def distribution_correction_loss(x_hat: jax.Array, x: jax.Array, features: Sequence[jax.Array],
                                 bn_stats: Sequence[tuple[jax.Array, jax.Array]], lam: float | jax.Array = 50.0,
                                 eps: float = 1e-6) -> jax.Array:
  """DC's objective (Liu et al., arXiv:2212.07048, Eq. 10), as the official ``GetDcFpLayerInpOut``:

  ``sum_l (||mu_l - mu_l^BN||^2 + ||sigma_l - sqrt(var_l^BN + eps)||^2) / B + lam * mean(sum_c (x_hat - x)^2)``

  with ``mu_l, sigma_l`` the per-sample channel statistics of the features ``features[l]`` (``(B, ..., C)``,
  channels last: the inputs of BatchNorm ``l`` computed from ``x_hat``; ``(B, C)`` features use batch statistics,
  ``B = 1``), ``B`` the batch size, and the penalty
  summed over the last axis of ``x`` and averaged over the others (BRECQ's ``lp_loss``). ``lam`` is the official
  ``1 / lamb_c`` (50). Returns a float32 scalar."""
  if len(features) != len(bn_stats):
    raise ValueError(f"features and bn_stats must have one entry per BatchNorm, got {len(features)} and "
                     f"{len(bn_stats)}.")
  loss = jnp.float32(0.0)
  for f, (mean, var) in zip(features, bn_stats):
    mu, sigma = _sample_stats(f, eps)
    b = mu.shape[0]
    loss = loss + jnp.sum(jnp.square(mu - mean)) / b
    loss = loss + jnp.sum(jnp.square(sigma - jnp.sqrt(jnp.asarray(var, jnp.float32) + eps))) / b
  penalty = jnp.mean(jnp.sum(jnp.square(x_hat.astype(jnp.float32) - x.astype(jnp.float32)), axis=-1))
  return loss + jnp.asarray(lam, jnp.float32) * penalty


def _check_steps(name: str, steps: Any) -> int:
  if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
    raise ValueError(f"{name} must be a positive int, got {steps!r}.")
  return steps


def distribution_correction(x_calib: jax.Array, apply_fn: Callable[[jax.Array], Sequence[jax.Array]],
                            bn_stats: Sequence[tuple[jax.Array, jax.Array]], *, lam: float = 50.0,
                            steps: int = 500, lr: float = 1e-3, eps: float = 1e-6,
                            optimizer: optax.GradientTransformation | None = None) -> jax.Array:
  """Distribution correction of calibration inputs (Liu et al., arXiv:2212.07048, Sec. 3.3, Eq. 10): ``steps``
  optimizer steps on :func:`distribution_correction_loss` from ``x_hat = x_calib``.

  Args:
    x_calib: calibration inputs ``(B, ...)``.
    apply_fn: ``x -> [f_1, ..., f_L]``, the inputs of the network's BatchNorm layers (``(B, ..., C)`` each,
      channels last) in the full-precision network; differentiable in ``x``.
    bn_stats: ``[(running_mean, running_var), ...]`` of those BatchNorms, ``(C,)`` each.
    lam: weight of ``||x_hat - x||^2`` (official ``1 / lamb_c`` = 50); larger keeps the inputs closer, and as
      ``lam -> inf`` the inputs are returned unchanged.
    steps: iterations (official 500). lr: Adam step (official ``bn_lr`` 1e-3; the official ReduceLROnPlateau with
      patience 100 is not applied). eps: variance epsilon (1e-6).
    optimizer: an optax transformation replacing ``optax.adam(lr)``.

  Returns:
    ``x_hat`` of ``x_calib``'s shape and dtype. One jitted ``lax.scan`` (jittable itself with a static
    ``apply_fn``).
  """
  x = jnp.asarray(x_calib)
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 2:
    raise ValueError(f"x_calib must be a floating array (batch, ...), got {x.dtype} {x.shape}.")
  check_finite("x_calib", x)
  _checks.check_non_negative("lam", lam)
  _checks.check_positive("lr", lr)
  steps = _check_steps("steps", steps)
  bn_stats = [(jnp.asarray(m, jnp.float32), jnp.asarray(v, jnp.float32)) for m, v in bn_stats]
  return _dc(x.astype(jnp.float32), tuple(bn_stats), jnp.float32(lam), jnp.float32(lr), apply_fn=apply_fn,
             tx=optimizer, steps=steps, eps=float(eps)).astype(x.dtype)


@functools.partial(jax.jit, static_argnames=("apply_fn", "tx", "steps", "eps"))
def _dc(x, bn_stats, lam, lr, *, apply_fn, tx, steps, eps):
  tx = optax.adam(lr) if tx is None else tx  # built inside so that a new lr does not recompile

  def loss_fn(x_hat):
    return distribution_correction_loss(x_hat, x, list(apply_fn(x_hat)), bn_stats, lam, eps)

  def step(carry, _):
    x_hat, opt = carry
    g = jax.grad(loss_fn)(x_hat)
    upd, opt = tx.update(g, opt, x_hat)
    return (optax.apply_updates(x_hat, upd), opt), None

  (x_hat, _), _ = jax.lax.scan(step, (x, tx.init(x)), None, length=steps)
  return x_hat


def _replace(params: PyTree, path: str, leaf: jax.Array) -> PyTree:
  return jax.tree_util.tree_map_with_path(lambda p, a: leaf.astype(a.dtype) if path_str(p) == path else a, params)


def _leaf(params: PyTree, path: str) -> jax.Array:
  found = [a for p, a in jax.tree_util.tree_flatten_with_path(params)[0] if path_str(p) == path]
  if len(found) != 1:
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ValueError(f"kernel_paths: {path!r} is not a leaf of params; leaves are {paths}.")
  return found[0]


def pdquant_loss(v: jax.Array, params: PyTree, path: str, w: jax.Array, scale: jax.Array, zero: jax.Array,
                 apply_fn: Callable, x: jax.Array, feature_target: jax.Array, logits_fp: jax.Array, *,
                 bits: int | jax.Array, T: float | jax.Array = 4.0, lam_r: float | jax.Array = 0.1,
                 lam: float | jax.Array = 0.01, beta: float | jax.Array = 20.0,
                 reg_on: float | jax.Array = 1.0) -> jax.Array:
  """PD-Quant's objective for one layer (arXiv:2212.07048, Eq. 9; official ``LossFunction``):
  ``mean_batch sum (O_q - O_target)^2 + KL_batchmean(T) / lam_r + reg_on * lam * f_reg(V)``, where the kernel at
  ``path`` of ``params`` is AdaRound's soft-quantized ``w`` (:func:`paperlab.quant.soft_quantized_kernel`) and
  ``apply_fn(params, x) -> (logits, features)`` runs the whole network; ``features[path]`` is that layer's output
  ``O_q``."""
  w_soft = _ar.soft_quantized_kernel(w, v, scale, zero, bits)
  logits_q, feats = apply_fn(_replace(params, path, w_soft), x)
  o = feats[path].astype(jnp.float32)
  rec = jnp.mean(jnp.sum(jnp.square(o - feature_target).reshape(o.shape[0], -1), axis=-1))
  pd = jnp.mean(prediction_difference_loss(logits_fp, logits_q, T))
  return rec + pd / lam_r + reg_on * lam * _ar.rounding_regularizer(v, beta)


@functools.partial(jax.jit, static_argnames=("path", "apply_fn", "iters", "batch_size", "warmup", "beta"))
def _optimize(v0, params, w, scale, zero, x, feature_target, logits_fp, key, bits, T, lam_r, lam, lr, *, path,
              apply_fn, iters, batch_size, warmup, beta):
  tx = optax.adam(lr)

  def step(carry, count):
    v, opt, key = carry
    key, sub = jax.random.split(key)
    # without replacement, as paperlab.quant.adaround_optimize (official: torch.randint, with replacement)
    idx = jax.random.permutation(sub, x.shape[0])[:batch_size]
    b, on = _ar.annealed_beta(count, iters, beta=beta, warmup=warmup)
    loss, g = jax.value_and_grad(pdquant_loss)(v, params, path, w, scale, zero, apply_fn, x[idx],
                                               feature_target[idx], logits_fp[idx], bits=bits, T=T, lam_r=lam_r,
                                               lam=lam, beta=b, reg_on=on)
    upd, opt = tx.update(g, opt, v)
    return (optax.apply_updates(v, upd), opt, key), loss

  (v, _, _), losses = jax.lax.scan(step, (v0, tx.init(v0), key), jnp.arange(1, iters + 1))
  return v, losses


def pdquant(params: PyTree, apply_fn: Callable[[PyTree, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]],
            x_calib: jax.Array, kernel_paths: Sequence[str], *, bits: int = 2, group_size: int | None = None,
            symmetric: bool = False, iters: int = 20_000, T: float = 4.0, lam_r: float = 0.1, lam: float = 0.01,
            beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, lr: float = 3e-3, batch_size: int = 32,
            x_target: jax.Array | None = None, key: jax.Array | None = None) -> tuple[PyTree, dict]:
  """PD-Quant weight rounding (Liu et al., arXiv:2212.07048; module docstring), layer by layer in forward order.

  For each kernel in ``kernel_paths``: the earlier kernels are already hard-rounded, the later ones stay in full
  precision (the official ``find_unquantized_module``), and AdaRound's rounding logits ``V`` of this kernel
  (:func:`paperlab.quant.init_rounding_logits` on the RTN min-max grid) minimize :func:`pdquant_loss` by Adam on
  mini-batches of ``x_calib``: the local feature MSE against the full-precision layer output on ``x_target``
  (the distribution-corrected inputs of :func:`distribution_correction`; default ``x_calib``) plus the prediction
  difference against the full-precision logits on ``x_calib``, plus the rounding regulariser under AdaRound's
  ``beta`` annealing. Then the rounding is made hard (``h = 1[V >= 0]``). Activation quantization, if any, is part
  of ``apply_fn`` (the official code also learns the activation step sizes; that is not done here).

  Args:
    params: parameter pytree (nested dicts or ``nnx.State``); kernels are ``(in, out)``.
    apply_fn: ``apply_fn(params, x) -> (logits, features)`` with ``features[path]`` the output of the layer whose
      kernel is at ``path`` (pre-activation); static (hashable), differentiable in ``params``.
    x_calib: calibration inputs ``(N, ...)``.
    kernel_paths: ``/``-joined paths of the kernels to quantize, in forward order.
    bits, group_size, symmetric: the grid (2..8 bits; ``None`` group size = per output channel).
    iters: Adam steps per layer (official 20k). T, lam_r: temperature (4) and KL divisor (0.1). lam, beta, warmup:
      AdaRound's regulariser weight (0.01), ``(start, end)`` temperature (20, 2) and warm-up fraction (0.2).
    lr: Adam step on ``V`` (official 3e-3). batch_size: calibration samples per step (32).
    x_target: distribution-corrected inputs for the local targets, ``x_calib``'s shape. key: PRNG key.

  Returns:
    ``(quantized_params, {path: w_hat})``: ``params`` with each selected kernel replaced by its hard-rounded
    dequantized value (its dtype kept). Host loop over layers; one jitted ``lax.scan`` per layer.

  Raises:
    ValueError: unknown or non-2-D kernels, bad ``bits``/``group_size``/``iters``/``batch_size``, non-positive
      ``T``/``lam_r``/``lr``, negative ``lam``, ``warmup`` outside [0, 1), mismatched or non-finite inputs.
  """
  bits = check_bits(bits)
  iters = _check_steps("iters", iters)
  x = jnp.asarray(x_calib)
  check_finite("x_calib", x)
  x_t = x if x_target is None else jnp.asarray(x_target)
  if x_t.shape != x.shape:
    raise ValueError(f"x_target must have x_calib's shape {x.shape}, got {x_t.shape}.")
  check_finite("x_target", x_t)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= x.shape[0]:
    raise ValueError(f"batch_size must be an int in [1, {x.shape[0]}] (the calibration size), got {batch_size!r}.")
  _checks.check_positive("T", T)
  _checks.check_positive("lam_r", lam_r)
  _checks.check_positive("lr", lr)
  _checks.check_non_negative("lam", lam)
  _checks.check_range("warmup", warmup, 0.0, 1.0, high_inclusive=False)
  if not (isinstance(beta, (tuple, list)) and len(beta) == 2 and all(float(b) > 0 for b in beta)):
    raise ValueError(f"beta must be a (start, end) pair of positive temperatures, got {beta!r}.")
  if isinstance(kernel_paths, str) or not kernel_paths:
    raise ValueError(f"kernel_paths must be a non-empty sequence of paths, got {kernel_paths!r}.")
  key = jax.random.key(0) if key is None else key
  logits_fp, _ = apply_fn(params, x)
  current, out = params, {}
  for i, path in enumerate(kernel_paths):
    w = check_kernel(f"kernel {path!r}", _leaf(params, path))
    g = check_group_size(group_size, w.shape[0])
    grid = grouped_rtn(w, bits, g, bool(symmetric))
    target = apply_fn(params, x_t)[1][path].astype(jnp.float32)  # the full-precision layer output
    v0 = _ar.init_rounding_logits(w, grid.scale)
    v, _ = _optimize(v0, current, w.astype(jnp.float32), grid.scale, grid.zero, x, target, logits_fp,
                     jax.random.fold_in(key, i), jnp.float32(bits), jnp.float32(T), jnp.float32(lam_r),
                     jnp.float32(lam), jnp.float32(lr), path=path, apply_fn=apply_fn, iters=iters,
                     batch_size=batch_size, warmup=float(warmup), beta=(float(beta[0]), float(beta[1])))
    w_hat = _ar.soft_quantized_kernel(w, v, grid.scale, grid.zero, bits, hard=True).astype(w.dtype)
    current = _replace(current, path, w_hat)
    out[path] = w_hat
  return current, out
