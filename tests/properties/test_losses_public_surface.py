"""Every public name of ``paperlab.losses`` under bfloat16/float16 inputs and logits-shaped masks.

For each loss a builder makes its arguments around one differentiable primary input ``x`` (logits, scores,
predictions, embeddings...). Oracle: the same loss in float32 (``optax.losses`` convention: the output has the
input's dtype). In bfloat16 and float16, at ordinary (scale 3) and extreme (scale 40) inputs, each loss must

* return the primary input's dtype;
* give a finite value wherever the float32 value is finite and representable in that dtype;
* give a finite gradient (of the float32 sum of its outputs) wherever the float32 gradient is finite;

and, when it takes ``where``, accept a mask shaped like the logits (optax.losses' class mask: a masked class is
left out of the softmax and of the sums over classes; an example without kept classes has loss 0) or refuse it
with a ValueError/TypeError that names ``where``.

A new public name without a builder (or an entry in NOT_A_LOSS with the reason) fails
``test_every_public_name_has_a_builder``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.losses as pl

N, C = 6, 5
DTYPES = [jnp.bfloat16, jnp.float16]
SCALES = [3.0, 40.0]

NOT_A_LOSS = {  # public names that take no floating input to differentiate: the reason
    "Balancer": "NamedTuple of (init, update)",
    "CoBaState": "state NamedTuple",
    "GapBalancingState": "state NamedTuple",
    "LossFreeBalancerState": "state NamedTuple",
    "USKDSoftLabels": "result NamedTuple",
    "active_passive": "combinator factory; its products are built below (apl_nce_rce, apl_nfl_mae)",
    "add_norm_loss_gradient": "optax GradientTransformation factory",
    "max_norm": "optax GradientTransformation factory",
    "coba": "balancer factory (state machine over float32 task losses)",
    "improvable_gap_balancing": "balancer factory",
    "loss_free_balancer": "balancer factory",
    "class_balanced_weights": "weights from integer class counts",
    "focal_prior_bias": "returns a Python float",
    "init_log_vars": "initialiser",
    "siglip_init": "initialiser",
    "power_law_token_weights": "weights from integer token counts",
    "sample_calibrated_derivative": "returns a function of a PRNG key (built below as ensloss_random_cdf)",
    "expert_load": "integer expert ids in, counts out",
    "hl_gauss_target": "float32 targets of a float32 regression target (built below through hl_gauss_loss)",
    "two_hot_target": "float32 targets of a float32 regression target",
}


def _rng(seed=0):
  return np.random.default_rng(seed)


def _labels(n=N, c=C):
  return np.arange(n, dtype=np.int32) % c


def _onehot(n=N, c=C):
  return np.eye(c, dtype=np.float32)[_labels(n, c)]


def _case(fn, x, where=False):
  return fn, np.asarray(x, np.float32), where


def _logits(scale, shape=(N, C)):
  return scale * _rng(1).normal(size=shape)


def _int_label_loss(loss, **kw):
  return lambda scale: _case(lambda x, **w: loss(x, _labels(), **kw, **w), _logits(scale), True)


def _soft_label_loss(loss, labels=None, **kw):
  labels = _onehot() if labels is None else labels
  return lambda scale: _case(lambda x, **w: loss(x, labels.astype(x.dtype), **kw, **w), _logits(scale), True)


def _regression(loss, positive=False, **kw):
  def build(scale):
    x = _rng(2).normal(size=(N, 3)) * scale
    t = _rng(3).normal(size=(N, 3)).astype(np.float32)
    if positive:
      x, t = np.abs(x) + 0.1, np.abs(t) + 0.1
    return _case(lambda p, **w: loss(p, t.astype(p.dtype), **kw, **w), x, "where" in _params(loss))
  return build


def _params(fn):
  import inspect
  return inspect.signature(fn).parameters


def _probs(scale):
  return np.asarray(jax.nn.softmax(_logits(scale).astype(np.float32)))


def _emb(scale, seed=4, d=8):
  return scale * _rng(seed).normal(size=(N, d))


MULTI = (_rng(5).random((N, C)) < 0.4).astype(np.float32)
NUMBER_IDS = np.array([1, 2, 3], np.int32)
NUMBER_VALUES = np.array([0.0, 1.0, 2.0], np.float32)
TOKEN_LABELS = np.array([1, 2, 0, 3, 4, 1], np.int32)


def _vat(scale):
  w = (_rng(6).normal(size=(4, C)) * 0.5).astype(np.float32)
  fn = lambda x, **kw: pl.vat_loss(lambda v: v @ w.astype(v.dtype), x, jax.random.PRNGKey(0), epsilon=1.0, **kw)
  return _case(fn, _rng(7).normal(size=(N, 4)) * scale / 3, True)


def _vat_direction(scale):
  w = (_rng(6).normal(size=(4, C)) * 0.5).astype(np.float32)
  fn = lambda x: pl.vat_direction(lambda v: v @ w.astype(v.dtype), x, jax.random.PRNGKey(0))
  return _case(fn, _rng(7).normal(size=(N, 4)) * scale / 3)


BUILDERS = {
    # classification
    "sigmoid_focal_loss": lambda s: _case(lambda x: pl.sigmoid_focal_loss(x, MULTI.astype(x.dtype)), _logits(s)),
    "softmax_focal_loss": _soft_label_loss(pl.softmax_focal_loss),
    "softmax_focal_loss_with_integer_labels": _int_label_loss(pl.softmax_focal_loss_with_integer_labels),
    "poly_loss_cross_entropy": _soft_label_loss(pl.poly_loss_cross_entropy),
    "poly_loss_cross_entropy_with_integer_labels": _int_label_loss(pl.poly_loss_cross_entropy_with_integer_labels),
    "poly1_sigmoid_focal_loss": _soft_label_loss(pl.poly1_sigmoid_focal_loss, labels=MULTI),
    "squentropy": _soft_label_loss(pl.squentropy),
    "squentropy_with_integer_labels": _int_label_loss(pl.squentropy_with_integer_labels),
    "z_loss_with_integer_labels": _int_label_loss(pl.z_loss_with_integer_labels),
    "logsumexp_penalty": lambda s: _case(lambda x, **w: pl.logsumexp_penalty(x, **w), _logits(s), True),
    "encouraging_loss": _soft_label_loss(pl.encouraging_loss),
    "encouraging_loss_with_integer_labels": _int_label_loss(pl.encouraging_loss_with_integer_labels),
    "one_vs_rest_loss_with_integer_labels": _int_label_loss(pl.one_vs_rest_loss_with_integer_labels),
    "switching_ovr_loss_with_integer_labels": _int_label_loss(pl.switching_ovr_loss_with_integer_labels),
    "ensloss_surrogate": lambda s: _case(lambda x, **w: pl.ensloss_surrogate(x[:, 0], jax.random.PRNGKey(0), **w),
                                         _logits(s), False),
    "ensloss_boxcox_derivatives": lambda s: _case(
        lambda x: pl.ensloss_boxcox_derivatives(x[:, 0], jnp.asarray(_rng(8).normal(size=N), x.dtype)), _logits(s)),
    # robust
    "normalized_cross_entropy_with_integer_labels": _int_label_loss(pl.normalized_cross_entropy_with_integer_labels),
    "reverse_cross_entropy_with_integer_labels": _int_label_loss(pl.reverse_cross_entropy_with_integer_labels),
    "mae_with_integer_labels": _int_label_loss(pl.mae_with_integer_labels),
    "normalized_focal_loss_with_integer_labels": _int_label_loss(pl.normalized_focal_loss_with_integer_labels),
    "nce_rce_with_integer_labels": _int_label_loss(pl.nce_rce_with_integer_labels),
    "apl_nce_rce": _int_label_loss(pl.active_passive(pl.normalized_cross_entropy_with_integer_labels,
                                                     pl.reverse_cross_entropy_with_integer_labels)),
    "apl_nfl_mae": _int_label_loss(pl.active_passive(pl.normalized_focal_loss_with_integer_labels,
                                                     pl.mae_with_integer_labels, alpha=10.0, beta=0.1)),
    "comp_sum_loss_with_integer_labels": _int_label_loss(pl.comp_sum_loss_with_integer_labels, tau=0.5),
    "generalized_cross_entropy_with_integer_labels": _int_label_loss(
        pl.generalized_cross_entropy_with_integer_labels),
    "ldr_kl_loss_with_integer_labels": _int_label_loss(pl.ldr_kl_loss_with_integer_labels, margin=0.1),
    "aldr_kl_lambda": lambda s: _case(lambda x: pl.aldr_kl_lambda(x, _labels()), _logits(s)),
    "aldr_kl_loss_with_integer_labels": _int_label_loss(pl.aldr_kl_loss_with_integer_labels),
    # multilabel
    "asymmetric_loss": _soft_label_loss(pl.asymmetric_loss, labels=MULTI),
    "sparsemax": lambda s: _case(lambda x: pl.sparsemax(x), _logits(s)),
    "sparsemax_loss": _soft_label_loss(pl.sparsemax_loss, labels=MULTI / np.maximum(MULTI.sum(-1, keepdims=True), 1)),
    "self_adjusting_dice_loss": _soft_label_loss(pl.self_adjusting_dice_loss, labels=MULTI, alpha=0.5),
    "self_adjusting_dice_loss_softmax": _soft_label_loss(pl.self_adjusting_dice_loss, alpha=0.5,
                                                         activation="softmax"),
    # metric / contrastive
    "circle_loss": lambda s: _case(lambda x: pl.circle_loss(jnp.tanh(x[:, :2]), jnp.tanh(x[:, 2:])), _logits(s)),
    "circle_loss_with_integer_labels": lambda s: _case(
        lambda x, **w: pl.circle_loss_with_integer_labels(jnp.tanh(x), _labels(), **w), _logits(s), True),
    "circle_loss_from_embeddings": lambda s: _case(
        lambda x, **w: pl.circle_loss_from_embeddings(x, _labels() % 2, **w), _emb(s), False),
    "clip_softmax_loss": lambda s: _case(
        lambda x, **w: pl.clip_softmax_loss(x, jnp.asarray(_emb(1.0, 9), x.dtype), jnp.log(10.0), **w), _emb(s),
        False),
    "sigmoid_contrastive_loss": lambda s: _case(
        lambda x, **w: pl.sigmoid_contrastive_loss(x, jnp.asarray(_emb(1.0, 9), x.dtype), jnp.log(10.0), -10.0,
                                                   **w), _emb(s), False),
    "info_nce_loss": lambda s: _case(lambda x: pl.info_nce_loss(x, jnp.asarray(_emb(1.0, 9), x.dtype)), _emb(s)),
    "tiled_contrastive_loss": lambda s: _case(
        lambda x: pl.tiled_contrastive_loss(x, jnp.asarray(_emb(1.0, 9), x.dtype), tile_size=2), _emb(s)),
    # regression
    "squared_error": _regression(pl.squared_error),
    "huber_loss": _regression(pl.huber_loss),
    "log_cosh": _regression(pl.log_cosh),
    "absolute_error": _regression(pl.absolute_error),
    "pinball_loss": _regression(pl.pinball_loss, quantile=0.3),
    "squared_log_error": _regression(pl.squared_log_error, positive=True),
    "absolute_percentage_error": _regression(pl.absolute_percentage_error, positive=True),
    "symmetric_absolute_percentage_error": _regression(pl.symmetric_absolute_percentage_error, positive=True),
    "histogram_mean": lambda s: _case(lambda x: pl.histogram_mean(x, -1.0, 1.0), _logits(s)),
    "hl_gauss_loss": lambda s: _case(
        lambda x, **w: pl.hl_gauss_loss(x, jnp.linspace(-1.5, 1.5, N), v_min=-1.0, v_max=1.0, **w), _logits(s), True),
    # ranking
    "neural_sort": lambda s: _case(lambda x, **w: pl.neural_sort(x, **w), _logits(s), True),
    "sinkhorn_normalize": lambda s: _case(lambda x: pl.sinkhorn_normalize(x),
                                          np.abs(_logits(s, (N, C, C))) + 0.01),
    "neural_ndcg_loss": lambda s: _case(
        lambda x, **w: pl.neural_ndcg_loss(x, jnp.asarray(np.abs(_logits(1.0)).round(), x.dtype), **w),
        _logits(s), True),
    # distillation
    "topk_kl": lambda s: _case(lambda x, **w: pl.topk_kl(jnp.asarray(_logits(2.0, (N, C)) * 0.5, x.dtype), x, k=2,
                                                         w_tail=0.5, **w), _logits(s), True),
    "kd_loss": lambda s: _case(lambda x, **w: pl.kd_loss(x, jnp.asarray(_logits(2.0, (N, C)) * 0.5, x.dtype), **w),
                               _logits(s), True),
    "normalized_kd_loss_with_integer_labels": lambda s: _case(
        lambda x, **w: pl.normalized_kd_loss_with_integer_labels(x, jnp.asarray(_logits(1.0), x.dtype), _labels(),
                                                                **w), _logits(s), True),
    "uskd_rank_scores": lambda s: _case(lambda x: pl.uskd_rank_scores(jnp.asarray(_logits(1.0), x.dtype), x,
                                                                      _labels()), _logits(s)),
    "uskd_soft_labels": lambda s: _case(lambda x, **w: pl.uskd_soft_labels(
        x, pl.uskd_rank_scores(jnp.asarray(_logits(1.0), x.dtype), x, _labels()), _labels(), **w), _logits(s), True),
    "uskd_loss_with_integer_labels": lambda s: _case(lambda x, **w: pl.uskd_loss_with_integer_labels(
        x, jnp.asarray(_logits(1.0), x.dtype), _labels(), **w), _logits(s), True),
    # calibration
    "expected_calibration_error": lambda s: _case(
        lambda x, **w: pl.expected_calibration_error(x, _labels(), **w), _probs(s), True),
    "max_calibration_error": lambda s: _case(
        lambda x, **w: pl.max_calibration_error(x, _labels(), **w), _probs(s), True),
    "classwise_ece": lambda s: _case(lambda x, **w: pl.classwise_ece(x, _labels(), **w), _probs(s), True),
    "brier_score": lambda s: _case(lambda x, **w: pl.brier_score(x, _labels(), **w), _probs(s), True),
    "fit_temperature": lambda s: _case(lambda x, **w: pl.fit_temperature(x, _labels(), num_iters=20, **w),
                                       _logits(s), True),
    # sequence
    "tldr_weights": lambda s: _case(lambda x: pl.tldr_weights(jnp.abs(x)), _logits(s)),
    "tldr_weighted_loss": lambda s: _case(lambda x, **w: pl.tldr_weighted_loss(jnp.abs(x), **w), _logits(s), True),
    "number_token_loss": lambda s: _case(lambda x, **w: pl.number_token_loss(x, TOKEN_LABELS, NUMBER_IDS,
                                                                             NUMBER_VALUES, **w), _logits(s), True),
    "cross_entropy_plus_number_token_loss": lambda s: _case(
        lambda x, **w: pl.cross_entropy_plus_number_token_loss(x, TOKEN_LABELS, NUMBER_IDS, NUMBER_VALUES, **w),
        _logits(s), True),
    # regularizers
    "vat_loss": _vat,
    "vat_direction": _vat_direction,
    "entropy_minimization": lambda s: _case(lambda x, **w: pl.entropy_minimization(x, **w), _logits(s), True),
    "oblique_norm_penalty": lambda s: _case(lambda x: pl.oblique_norm_penalty({"w": x}), _logits(s)),
    # balancing and combinators
    "weighted_softmax_cross_entropy_with_integer_labels": _int_label_loss(
        pl.weighted_softmax_cross_entropy_with_integer_labels, class_weights=np.linspace(0.5, 2.0, C)),
    "logit_adjusted_softmax_cross_entropy_with_integer_labels": _int_label_loss(
        pl.logit_adjusted_softmax_cross_entropy_with_integer_labels, log_priors=np.log(np.full(C, 1.0 / C))),
    "posthoc_logit_adjustment": lambda s: _case(
        lambda x: pl.posthoc_logit_adjustment(x, np.log(np.linspace(1, 2, C) / np.linspace(1, 2, C).sum())),
        _logits(s)),
    "loss_based_weights": lambda s: _case(lambda x, **w: pl.loss_based_weights(jnp.abs(x[:, 0]), **w), _logits(s)),
    "apply_weights": lambda s: _case(lambda x, **w: pl.apply_weights(jnp.abs(x[:, 0]), np.linspace(0, 1, N), **w),
                                     _logits(s)),
    "biased_topk_route": lambda s: _case(lambda x: pl.biased_topk_route(x, np.zeros(C, np.float32), 2), _logits(s)),
    "max_violation": lambda s: _case(lambda x: pl.max_violation(jnp.abs(x[0])), _logits(s)),
    "switch_aux_loss": lambda s: _case(lambda x, **w: pl.switch_aux_loss(jax.nn.softmax(x), _labels()[:, None], **w),
                                       _logits(s), True),
    "weighted_sum": lambda s: _case(lambda x: pl.weighted_sum({"a": x[:, 0], "b": x[:, 1]}, {"a": 1.0, "b": 0.5}),
                                    _logits(s)),
    "uncertainty_weighted": lambda s: _case(lambda x: pl.uncertainty_weighted(
        {"a": jnp.abs(x[:, 0]).mean(), "b": jnp.abs(x[:, 1]).mean()}, {"a": jnp.zeros((), x.dtype),
                                                                       "b": jnp.zeros((), x.dtype)}), _logits(s)),
}
ALIASES = {"apl_nce_rce", "apl_nfl_mae", "self_adjusting_dice_loss_softmax"}  # extra builders, not public names


def test_every_public_name_has_a_builder():
  public = set(pl.__all__)
  missing = public - set(BUILDERS) - set(NOT_A_LOSS)
  assert not missing, f"public names of paperlab.losses without an argument builder here: {sorted(missing)}"
  stale = (set(BUILDERS) - ALIASES - public) | (set(NOT_A_LOSS) - public)
  assert not stale, f"builders for names that are not public: {sorted(stale)}"
  callables = {n for n in dir(pl) if not n.startswith("_") and callable(getattr(pl, n))
               and getattr(getattr(pl, n), "__module__", "").startswith(("paperlab.losses", "optax"))}
  assert callables <= public | {"LOG_ZERO"}, f"public callables missing from __all__: {sorted(callables - public)}"


def _floating_leaves(out):
  return [o for o in jax.tree.leaves(out) if jnp.issubdtype(jnp.asarray(o).dtype, jnp.floating)]


def _total(fn, x, **kw):
  return sum(jnp.sum(o.astype(jnp.float32)) for o in _floating_leaves(fn(x, **kw)))


def _representable(v, dtype):
  return np.isfinite(v) & (np.abs(v) < float(jnp.finfo(dtype).max) / 2)


def _check(fn, x32, dtype, **kw):
  ref_out = [np.asarray(o, np.float32) for o in _floating_leaves(fn(jnp.asarray(x32), **kw))]
  ref_grad = np.asarray(jax.grad(lambda x: _total(fn, x, **kw))(jnp.asarray(x32)))
  x = jnp.asarray(x32, dtype)
  out = _floating_leaves(fn(x, **kw))
  assert len(out) == len(ref_out)
  for o, r in zip(out, ref_out):
    assert o.dtype == dtype, f"output dtype {o.dtype} for {jnp.dtype(dtype).name} input"
    o = np.asarray(o, np.float32)
    ok = _representable(r, dtype)
    assert np.all(np.isfinite(o[ok])), f"non-finite values {o[ok]} where float32 gives {r[ok]}"
  grad = jax.grad(lambda v: _total(fn, v, **kw))(x)
  assert grad.dtype == dtype
  grad = np.asarray(grad, np.float32)
  ok = _representable(ref_grad, dtype)
  assert np.all(np.isfinite(grad[ok])), f"non-finite gradient {grad[ok]} where float32 gives {ref_grad[ok]}"


CASES = sorted(BUILDERS)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("scale", SCALES)
def test_low_precision_input(name, dtype, scale):
  fn, x32, _ = BUILDERS[name](scale)
  _check(fn, x32, dtype)


def _logits_mask(shape):
  """Keeps each example's label class (column ``i % C`` of row ``i``) and a random half of the others; the last
  row keeps no class."""
  mask = _rng(11).random(shape) < 0.5
  if len(shape) == 2 and shape[1] == C:
    mask[np.arange(shape[0]), _labels(shape[0])] = True
  mask[-1] = False
  return mask


@pytest.mark.parametrize("name", [n for n in CASES if BUILDERS[n](3.0)[2]])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_logits_shaped_where_works_or_is_refused_naming_where(name, dtype):
  fn, x32, _ = BUILDERS[name](3.0)
  mask = _logits_mask(x32.shape)
  try:
    out = fn(jnp.asarray(x32, dtype), where=mask)
  except (ValueError, TypeError) as e:
    assert "where" in str(e), f"the error does not name `where`: {e}"
    return
  for o in _floating_leaves(out):
    assert o.dtype == dtype
    assert np.all(np.isfinite(np.asarray(o, np.float32)))
  if dtype == jnp.float32:
    _check(fn, x32, jnp.float32, where=mask)
