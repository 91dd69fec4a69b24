"""MKOR: Kronecker-factored preconditioning whose factor inverses are kept by rank-1 Sherman-Morrison updates.

Mozaffari et al., "MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using Rank-1 Updates", NeurIPS 2023,
arXiv:2306.01685; official code: github.com/Mohammad-Mozaffari/mkor, ``mkor/mkor.py`` and ``mkor/utils/factors.py``
at commit 3a0e3bb2df346851569e98799d0f340556bad811. For a dense layer with (bias-augmented) input ``a`` and output
gradient ``g``, KFAC approximates the layer's curvature by ``A ⊗ G``; MKOR approximates each factor by the rank-1
outer product of the *batch-mean* vector and keeps only the factor *inverses*, updated in ``O(d²)`` by the
Sherman-Morrison identity, so no matrix is ever inverted.

The transform needs the batch-mean layer inputs and output gradients, which a gradient alone does not carry, so
``update`` takes them as an extra argument ``layer_stats={path: (a, g)}`` (see :func:`scale_by_mkor`). Dense layers
are the leaves named ``kernel`` with two dimensions (Flax layout ``(in, out)``), with the sibling ``bias`` leaf if
there is one; every other leaf passes through unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from paperlab._checks import check_choice, check_non_negative, check_positive, check_range

__all__ = [
    "sherman_morrison_inverse",
    "sherman_morrison_ema_inverse",
    "dense_layer_paths",
    "MKORState",
    "scale_by_mkor",
    "mkor",
]

FACTOR_UPDATES = ("official", "paper")


def sherman_morrison_inverse(inverse: jax.Array, v: jax.Array) -> jax.Array:
  r"""``(F + v vᵀ)⁻¹`` from ``inverse = F⁻¹`` by the Sherman-Morrison identity.

  ``F⁻¹ - (F⁻¹ v)(vᵀ F⁻¹) / (1 + vᵀ F⁻¹ v)``: the official MKOR code's ``sm_inverse`` (``mkor/utils/factors.py``).
  Cost ``O(d²)``.

  Args:
    inverse: ``F⁻¹``, shape ``(d, d)``.
    v: the rank-1 vector, shape ``(d,)``.
  """
  chex.assert_rank(inverse, 2)
  chex.assert_rank(v, 1)
  chex.assert_equal_shape_prefix([inverse, v], 1)
  v = v.astype(inverse.dtype)
  bv, vb = inverse @ v, v @ inverse
  return inverse - jnp.outer(bv, vb) / (1.0 + vb @ v)


def sherman_morrison_ema_inverse(inverse: jax.Array, v: jax.Array, gamma: chex.Numeric) -> jax.Array:
  r"""``(γ F + (1-γ) v vᵀ)⁻¹`` from ``inverse = F⁻¹`` by the Sherman-Morrison identity (the paper's factor update).

  With ``B = F⁻¹ / γ`` and ``u = sqrt(1-γ) v``: ``B - (B u)(uᵀ B) / (1 + uᵀ B u)``. ``F`` must be symmetric positive
  definite (then the denominator is >= 1). Cost ``O(d²)``.

  Args:
    inverse: ``F⁻¹``, shape ``(d, d)``.
    v: the rank-1 vector, shape ``(d,)``.
    gamma: EMA factor in (0, 1].

  References:
    Mozaffari et al., `MKOR <https://arxiv.org/abs/2306.01685>`_, 2023, Algorithm 1 lines 7-8.
  """
  chex.assert_rank(inverse, 2)
  return sherman_morrison_inverse(inverse / gamma, jnp.sqrt(1.0 - gamma) * v.astype(inverse.dtype))


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _path_str(key_path) -> str:
  # nnx.Variable boxes flatten to a trailing ``.value``: not part of the parameter's name.
  keys = [k for k in key_path if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value")]
  return "/".join(_key_name(k) for k in keys)


def _leaves_by_path(tree) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_str(path): leaf for path, leaf in flat}


def _join(prefix: str, name: str) -> str:
  return f"{prefix}/{name}" if prefix else name


def _dense_layers(tree) -> dict[str, tuple[Any, Any]]:
  """``{layer path: (kernel, bias or None)}`` for every 2-D leaf named ``kernel``."""
  leaves = _leaves_by_path(tree)
  layers = {}
  for path, leaf in leaves.items():
    name = path.rsplit("/", 1)[-1]
    if name == "kernel" and jnp.ndim(leaf) == 2:
      prefix = path[:-len("kernel")].rstrip("/")
      bias = leaves.get(_join(prefix, "bias"))
      has_bias = bias is not None and jnp.ndim(bias) == 1 and jnp.shape(bias)[0] == jnp.shape(leaf)[1]
      layers[prefix] = (leaf, bias if has_bias else None)
  return layers


def dense_layer_paths(params: Any) -> list[str]:
  """The ``/``-joined paths of the dense layers MKOR preconditions: parents of 2-D leaves named ``kernel``."""
  return list(_dense_layers(params))


class MKORState(NamedTuple):
  """State of :func:`scale_by_mkor`, per dense layer path.

  Attributes:
    count: steps taken.
    a_inv: inverse input-side factors, ``(in + has_bias, in + has_bias)``.
    g_inv: inverse output-gradient-side factors, ``(out, out)``.
    a_reset, g_reset: (``factor_update="official"``) reset the factor to ``I`` at its next factor update instead of
      a Sherman-Morrison update. Both start ``True`` and are set together, per layer, when either inverse of the
      layer has an entry above ``reset_threshold``; unused (``False``) with ``factor_update="paper"``.
  """

  count: chex.Array
  a_inv: dict
  g_inv: dict
  a_reset: dict
  g_reset: dict


def _mean_vector(name, path, x, size, clip_value, append_one=False):
  """Official statistics: per-example rows (with the bias input 1 appended) clipped, then averaged; a given mean
  is clipped the same way."""
  x = jnp.asarray(x, jnp.float32)
  if x.ndim not in (1, 2) or x.shape[-1] != size:
    raise ValueError(f"layer_stats[{path!r}] {name} must have shape ({size},) (batch mean) or (batch, {size}) "
                     f"(per-example rows), got {x.shape}.")
  if append_one:
    x = jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), jnp.float32)], -1)
  x = jnp.clip(x, -clip_value, clip_value)
  return x.mean(0) if x.ndim == 2 else x


def _max_abs(x):
  return jnp.max(jnp.abs(x))


def scale_by_mkor(gamma: float = 0.95, inv_freq: int = 10, reset_threshold: float = 2.0, reset_weight: float = 0.1,
                  clip_value: float = 100.0, factor_update: str = "official",
                  warmup_steps: int = 0) -> optax.GradientTransformationExtraArgs:
  r"""MKOR's preconditioning of dense layers (Mozaffari et al., arXiv:2306.01685).

  For each dense layer with gradient ``∇ = [∇kernel; ∇bias]`` (bias as an extra input row, Flax layout), at the
  factor-update steps (``count % inv_freq == 0`` or ``count < warmup_steps``) the inverse factors take one rank-1
  update with ``ā = mean [input, 1]`` and ``ḡ = mean output gradient`` (entries clipped to ``±clip_value``, the
  bias input 1 included, as the official hooks do), then
  the update is ``A⁻¹ᵀ ∇ G⁻¹ᵀ`` rescaled by ``(||∇kernel|| + ||∇bias||) / (||P kernel|| + ||P bias||)`` so it keeps
  the gradient's norm (norm-based stabilizer; the raw gradient when the ratio is not finite).

  ``factor_update="official"`` (default) follows the official code (``mkor/mkor.py``, commit 3a0e3bb2d, class
  ``MKOR``: ``_invert_factor``, ``_reset_factors``, ``_set_reset_factor_flags``, ``step``):

  * ``F⁻¹ ← SM(γ F⁻¹ + (1-γ) I, v) = ((γ F⁻¹ + (1-γ) I)⁻¹ + v vᵀ)⁻¹`` (:func:`sherman_morrison_inverse`); the
    official code hard-codes ``γ = 0.95`` (independent of its ``stat_decay``), here ``gamma``;
  * a pending reset replaces that update by ``F⁻¹ ← I``; the flags start set (so the first factor update leaves
    ``I``) and, when an updated inverse has an entry above ``reset_threshold`` (hard-coded 2 officially), both
    flags *of that layer* are set. The input-side factors are updated before the output-side ones, so an
    input-side overflow resets the layer's output-side inverse at the same step. The official
    ``stabilization_factor`` (blend towards ``I``) never takes effect there (its ``module not in factor_dict``
    test is always true), so ``reset_weight`` is unused in this mode.

  ``factor_update="paper"`` follows Algorithm 1 of the paper: a factor whose inverse has an entry above
  ``reset_threshold`` is first blended, ``F⁻¹ ← (1 - reset_weight) F⁻¹ + reset_weight I`` (lines 5-6, ``ζ =
  1 - reset_weight``; the paper leaves the norm open, here the max-abs entry as in the official code), then
  ``F⁻¹ ← (γ F + (1-γ) v vᵀ)⁻¹`` (:func:`sherman_morrison_ema_inverse`; lines 7-8 as printed have sign/power typos,
  this is the exact Sherman-Morrison inverse of the EMA factor they describe). Factors start at ``I`` and are
  updated from step 0.

  Known differences from the official code: factors are float32 (the official default ``half_precision=True``
  keeps them in float16); non-finite rescaling ratios fall back to the raw gradient (official: NaN only).
  With factors that stay ``I`` (e.g. ``inv_freq`` longer than training) it is the identity map, so :func:`mkor`
  reduces to momentum SGD.

  ``update(grads, state, params=None, *, layer_stats)``: ``layer_stats[path] = (a, g)`` for every path of
  :func:`dense_layer_paths`. Either batch means, ``a`` of shape ``(in,)`` the mean of the layer's inputs and ``g``
  of shape ``(out,)`` the mean of the per-example gradients of the *summed* loss with respect to the layer's
  outputs (for a mean loss and a layer with a bias: the bias gradient); or the per-example rows ``(batch, in)`` and
  ``(batch, out)``, which are clipped before averaging, exactly as the official hooks do (for means the clip
  applies to the mean).

  Under ``optax.inject_hyperparams`` the numeric arguments (``gamma``, ``reset_threshold``, ``reset_weight``,
  ``clip_value``, ``warmup_steps``) may be traced; the period ``inv_freq`` must be listed in ``static_args``
  (``factor_update``, a string, is static anyway).

  Args:
    gamma: blend (``"official"``) or EMA (``"paper"``) factor, in (0, 1).
    inv_freq: factor update period (int >= 1; static).
    reset_threshold: largest inverse entry before a reset / blend (> 0).
    reset_weight: weight of ``I`` in the paper's blend, in (0, 1]; unused with ``"official"``.
    clip_value: clipping of the statistics' entries (> 0).
    factor_update: ``"official"`` or ``"paper"`` (static).
    warmup_steps: the first ``warmup_steps`` steps all update the factors (official ``warmup_steps``; int >= 0).

  References:
    Mozaffari et al., `MKOR: Momentum-Enabled Kronecker-Factor-Based Optimizer Using Rank-1 Updates
    <https://arxiv.org/abs/2306.01685>`_, NeurIPS 2023.
  """
  check_range("gamma", gamma, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
  if isinstance(inv_freq, bool) or not isinstance(inv_freq, int) or inv_freq < 1:
    raise ValueError("inv_freq must be a Python integer >= 1 (under optax.inject_hyperparams list it in "
                     f"static_args), got {inv_freq!r}.")
  if isinstance(warmup_steps, (bool, float)):
    raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}.")
  check_non_negative("warmup_steps", warmup_steps)
  check_positive("reset_threshold", reset_threshold)
  check_range("reset_weight", reset_weight, 0.0, 1.0, low_inclusive=False)
  check_positive("clip_value", clip_value)
  check_choice("factor_update", factor_update, FACTOR_UPDATES)

  def init_fn(params):
    layers = _dense_layers(params)
    if not layers:
      raise ValueError("scale_by_mkor found no dense layer (a 2-D leaf named 'kernel') in params.")
    a_inv, g_inv = {}, {}
    for path, (kernel, bias) in layers.items():
      d_in, d_out = kernel.shape
      a_inv[path] = jnp.eye(d_in + (bias is not None), dtype=jnp.float32)
      g_inv[path] = jnp.eye(d_out, dtype=jnp.float32)
    flags = {path: jnp.asarray(factor_update == "official") for path in layers}
    return MKORState(jnp.zeros((), jnp.int32), a_inv, g_inv, flags, dict(flags))

  def official_refresh(a_inv, g_inv, a_reset, g_reset, a_vec, g_vec):
    def one(inv, reset, v):
      eye = jnp.eye(inv.shape[0], dtype=inv.dtype)
      new = jnp.where(reset, eye, sherman_morrison_inverse(gamma * inv + (1.0 - gamma) * eye, v))
      return new, jnp.logical_and(~reset, _max_abs(new) > reset_threshold)

    a_inv, a_big = one(a_inv, a_reset, a_vec)
    g_inv, g_big = one(g_inv, g_reset | a_big, g_vec)  # the input side's overflow flags this layer's G too
    return a_inv, g_inv, a_big | g_big, g_big

  def paper_refresh(a_inv, g_inv, a_reset, g_reset, a_vec, g_vec):
    def one(inv, v):
      eye = jnp.eye(inv.shape[0], dtype=inv.dtype)
      stable = jnp.where(_max_abs(inv) > reset_threshold, (1.0 - reset_weight) * inv + reset_weight * eye, inv)
      return sherman_morrison_ema_inverse(stable, v, gamma)

    return one(a_inv, a_vec), one(g_inv, g_vec), a_reset, g_reset

  refresh = official_refresh if factor_update == "official" else paper_refresh

  def update_fn(updates, state, params=None, *, layer_stats=None, **extra_args):
    del params, extra_args
    if layer_stats is None:
      raise ValueError("scale_by_mkor needs update(grads, state, params, layer_stats={path: (a, g)}) for the dense "
                       f"layers {sorted(state.a_inv)}.")
    missing = sorted(set(state.a_inv) - set(layer_stats))
    if missing:
      raise ValueError(f"layer_stats is missing the dense layers {missing}; got {sorted(layer_stats)}.")
    layers = _dense_layers(updates)
    if set(layers) != set(state.a_inv):
      raise ValueError(f"scale_by_mkor: the dense layers of the updates {sorted(layers)} differ from those of "
                       f"init {sorted(state.a_inv)}.")
    refresh_now = jnp.logical_or(state.count % inv_freq == 0, state.count < warmup_steps)
    new_state = {name: {} for name in ("a_inv", "g_inv", "a_reset", "g_reset")}
    replacements = {}
    for path, (gk, gb) in layers.items():
      has_bias = gb is not None
      a_vec = _mean_vector("a", path, layer_stats[path][0], gk.shape[0], clip_value, append_one=has_bias)
      g_vec = _mean_vector("g", path, layer_stats[path][1], gk.shape[1], clip_value)
      old = (state.a_inv[path], state.g_inv[path], state.a_reset[path], state.g_reset[path])
      new = refresh(*old, a_vec, g_vec)
      for name, o, n in zip(new_state, old, new):
        new_state[name][path] = jnp.where(refresh_now, n, o)

      grad = jnp.concatenate([gk, gb[None]], 0) if has_bias else gk
      grad = grad.astype(jnp.float32)
      pre = new_state["a_inv"][path].T @ grad @ new_state["g_inv"][path].T
      if has_bias:
        grad_norm = jnp.linalg.norm(grad[:-1]) + jnp.linalg.norm(grad[-1])
        pre_norm = jnp.linalg.norm(pre[:-1]) + jnp.linalg.norm(pre[-1])
      else:
        grad_norm, pre_norm = jnp.linalg.norm(grad), jnp.linalg.norm(pre)
      scale = grad_norm / pre_norm
      pre = jnp.where(jnp.isfinite(scale), pre * scale, grad)
      replacements[_join(path, "kernel")] = pre[:gk.shape[0]].astype(gk.dtype)
      if has_bias:
        replacements[_join(path, "bias")] = pre[-1].astype(gb.dtype)

    def swap(key_path, leaf):
      return replacements.get(_path_str(key_path), leaf)

    out = jax.tree_util.tree_map_with_path(swap, updates)
    return out, MKORState(optax.safe_int32_increment(state.count), **new_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mkor(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0,
         gamma: float = 0.95, inv_freq: int = 10, reset_threshold: float = 2.0, reset_weight: float = 0.1,
         clip_value: float = 100.0, factor_update: str = "official",
         warmup_steps: int = 0) -> optax.GradientTransformationExtraArgs:
  """MKOR with momentum SGD on the preconditioned gradient (the official code's default ``optimizer='sgd'``;
  Mozaffari et al., arXiv:2306.01685). Coupled weight decay is added after preconditioning, as ``torch.optim.SGD``
  does inside the official optimizer.

  Call ``update(grads, state, params, layer_stats=...)``; the MKOR arguments are those of :func:`scale_by_mkor`.
  Under ``optax.inject_hyperparams`` pass ``static_args=("inv_freq",)``; ``learning_rate``, ``momentum``,
  ``weight_decay`` and the numeric MKOR arguments may be traced.
  """
  if not callable(learning_rate):
    check_non_negative("learning_rate", learning_rate)
  check_range("momentum", momentum, 0.0, 1.0, high_inclusive=False)
  check_non_negative("weight_decay", weight_decay)
  precondition = scale_by_mkor(gamma, inv_freq, reset_threshold, reset_weight, clip_value, factor_update,
                               warmup_steps)
  return optax.chain(precondition, optax.add_decayed_weights(weight_decay), optax.sgd(learning_rate, momentum))
