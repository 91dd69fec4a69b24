"""Every public optimizer of ``paperlab.optim`` composes like an optax transformation (issue 20).

The table ``TRANSFORMS`` says, for each public optimizer / transform, how to build it (a factory whose numeric
arguments ``optax.inject_hyperparams`` may trace), its ``static_args``, which hyperparameters to change between
steps, the extra ``update`` arguments it needs and whether it takes stacked per-objective gradients.
``NOT_TRANSFORMS`` lists the other public names. ``test_every_public_name_is_classified`` iterates over
``paperlab.optim.__all__``, so a new optimizer cannot be forgotten.

For each transform, five cases; each either works (with the property stated) or raises a ``ValueError`` /
``TypeError`` whose message names what is wrong (a keyword of the case, below). Python's own operand errors
("unsupported operand ...") and other exception types fail:

(a) ``optax.chain(optax.clip_by_global_norm(c), tx)`` with a binding clip: equals ``tx`` on the clipped gradient
    (the definition of a chain); for the ``grad_fn`` users (which recompute the gradient), the clip must change the
    update (with an SGD base: its norm is at most ``lr * c``) or the chain must raise (keywords: "chain", "clip",
    "before", "inside");
(b) ``optax.masked(tx, mask)``: masked-out leaves pass through, the others get what ``tx`` gives on the sub-tree
    (keyword: "mask");
(c) ``optax.inject_hyperparams`` + ``jit``: changing the learning rate (and the weight decay where there is one)
    between steps changes the update; only one compilation (keyword: "static_args");
(d) ``None`` leaves in params and grads stay ``None`` and the other leaves get the same update as without them
    (keyword: "None");
(e) bfloat16 params and grads: finite updates, params stay bfloat16 (keywords: "bfloat16", "dtype").

The model: a dense layer ``x @ kernel + bias`` (Flax names, so MKOR sees a dense layer) with a squared error.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from paperlab import optim

# ----------------------------------------------------------------------------------------------- the problem

_X = jax.random.normal(jax.random.key(0), (8, 6))
_Y = jax.random.normal(jax.random.key(1), (8, 4))


def _params(dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(2))
  return {"dense": {"kernel": (jax.random.normal(k1, (6, 4)) * 0.5).astype(dtype),
                    "bias": (jax.random.normal(k2, (4,)) * 0.1).astype(dtype)}}


def _outputs(p):
  return _X @ p["dense"]["kernel"].astype(jnp.float32) + p["dense"]["bias"].astype(jnp.float32)


def _example_losses(p):
  return jnp.mean((_outputs(p) - _Y) ** 2, axis=-1)


def _loss(p):
  return jnp.mean(_example_losses(p))


def _aux_loss(p):
  return jnp.mean(_outputs(p) ** 2)


def _grad_fn_arg(params, grads):
  """The documented ``grad_fn=`` form: ``grad_fn_at`` (anchored at params) where the package offers it."""
  at = getattr(optim, "grad_fn_at", None)
  fn = jax.grad(_loss)
  return at(fn, params, grads) if at is not None else fn


def _grad_extra(params, grads):
  return {"grad_fn": _grad_fn_arg(params, grads)}


def _rwp_extra(params, grads):
  return {"grad_fn": _grad_fn_arg(params, grads), "example_loss_fn": _example_losses}


def _egn_extra(params, grads):
  return {"output_fn": _outputs, "output_loss": lambda o: jnp.mean((o - _Y) ** 2),
          "grad_fn": _grad_fn_arg(params, grads)}


def _value_extra(params, grads):
  return {"value": _loss(params)}


def _bloop_extra(params, grads):
  return {"aux_grads": jax.grad(_aux_loss)(params)}


def _mkor_extra(params, grads):
  out = _outputs(params)
  return {"layer_stats": {"dense": (_X, 2.0 * (out - _Y) / out.shape[-1])}}


# ----------------------------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Spec:
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict  # values of the factory's arguments (all numeric ones are traced under inject_hyperparams)
  changes: dict = dataclasses.field(default_factory=dict)  # hyperparameter -> second value (case c)
  static_args: tuple = ()
  extra: Callable[[Any, Any], dict] | None = None  # (params, grads) -> extra update arguments
  stacked: bool = False  # takes per-objective gradients stacked on a leading axis
  recomputes_grad: bool = False  # a grad_fn / output_fn user: the incoming gradient is not the step's input
  sgd_base: bool = False  # the step is -learning_rate * (a gradient): the clip bounds its norm (case a)


def _with_sgd_inner(fn):
  """``fn(optax.sgd(learning_rate), **kw)`` with ``fn``'s own arguments in the signature (so they are traced); a
  ``learning_rate`` argument of ``fn`` itself (WSAM's decoupled step) gets the same value."""
  own_lr = "learning_rate" in inspect.signature(fn).parameters

  def factory(learning_rate=0.1, **kw):
    return fn(optax.sgd(learning_rate), **kw, **({"learning_rate": learning_rate} if own_lr else {}))

  params = [inspect.Parameter("learning_rate", inspect.Parameter.KEYWORD_ONLY, default=0.1)]
  params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in inspect.signature(fn).parameters.items()
             if name not in ("inner", "learning_rate")]
  factory.__signature__ = inspect.Signature(params)
  factory.__name__ = fn.__name__
  return factory


def _scale_by_projection(weight_decay=0.1, delta=0.1, wd_ratio=0.1, eps=1e-8):
  return optax.chain(optim.scale_by_projection(optax.scale_by_adam(), delta=delta, wd_ratio=wd_ratio, eps=eps,
                                               weight_decay=weight_decay), optax.scale(-0.1))


def _sam_family(name, **kwargs):
  return Spec(_with_sgd_inner(getattr(optim, name)), dict(learning_rate=0.1, **kwargs), {"learning_rate": 0.3},
              extra=_grad_extra, recomputes_grad=True, sgd_base=True)


LR = {"learning_rate": 3e-2}
LR_WD = {"learning_rate": 3e-2, "weight_decay": 0.5}

TRANSFORMS: dict[str, Spec] = {
    # projection.py
    "scale_by_projection": Spec(_scale_by_projection, {"weight_decay": 0.1}, {"weight_decay": 0.5}),
    "adamp": Spec(optim.adamp, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD),
    "independent_weight_decay": Spec(optim.independent_weight_decay, {"weight_decay": 0.1}, {"weight_decay": 0.5}),
    "sgdp": Spec(optim.sgdp, {"learning_rate": 1e-2, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1}, LR_WD),
    # adaptive.py
    "adafactor_paper": Spec(optim.adafactor_paper, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD,
                            static_args=("min_dim_size_to_factor",)),
    "adamw_paper": Spec(optim.adamw_paper, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD),
    "sgdw": Spec(optim.sgdw, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD),
    # momentum.py
    "scale_by_grams": Spec(optim.scale_by_grams, {"b1": 0.9}, {"b1": 0.5}),
    "grams": Spec(optim.grams, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD),
    # scale_by_gravity's learning_rate only scales V_0 at init (the alias applies the step): change beta.
    "scale_by_gravity": Spec(optim.scale_by_gravity, {"key": 0, "learning_rate": 0.1}, {"beta": 0.5},
                             static_args=("key",)),
    "gravity": Spec(optim.gravity, {"key": 0, "learning_rate": 0.1, "weight_decay": 0.1}, LR_WD,
                    static_args=("key",)),
    "scale_by_momo": Spec(optim.scale_by_momo, {"learning_rate": 1.0}, {"learning_rate": 0.3}, extra=_value_extra),
    "momo": Spec(optim.momo, {"learning_rate": 1.0, "weight_decay": 0.1}, {"learning_rate": 0.3, "weight_decay": 0.5},
                 extra=_value_extra),
    "momo_adam": Spec(optim.momo_adam, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD, extra=_value_extra),
    "scale_by_complex_momentum": Spec(optim.scale_by_complex_momentum, {"beta_abs": 0.9}, {"beta_abs": 0.5}),
    "complex_momentum": Spec(optim.complex_momentum, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD),
    "scale_by_complex_adam": Spec(optim.scale_by_complex_adam, {"b1_abs": 0.8}, {"b1_abs": 0.5}),
    "complex_adam": Spec(optim.complex_adam, {"learning_rate": 1e-2, "weight_decay": 0.1}, LR_WD),
    # conflict.py (per-objective gradients stacked on a leading axis, except m_config / bloop)
    "scale_by_pcgrad": Spec(optim.scale_by_pcgrad, {"key": 0}, static_args=("key",), stacked=True),
    "pcgrad": Spec(optim.pcgrad, {"learning_rate": 1e-2, "key": 0}, LR, static_args=("key",), stacked=True),
    "scale_by_config": Spec(optim.scale_by_config, {}, stacked=True),
    "config_multi": Spec(optim.config_multi, {"learning_rate": 1e-2}, LR, stacked=True),
    "scale_by_m_config": Spec(optim.scale_by_m_config, {"num_losses": 2, "b1": 0.9}, {"b1": 0.5},
                              static_args=("num_losses",)),  # losses taken in turn (loss_index=None)
    "m_config": Spec(optim.m_config, {"learning_rate": 1e-2, "num_losses": 2}, LR, static_args=("num_losses",)),
    "scale_by_bloop": Spec(optim.scale_by_bloop, {"aux_weight": 0.1}, {"aux_weight": 0.5}, extra=_bloop_extra),
    "bloop": Spec(optim.bloop, {"learning_rate": 1e-2}, LR, extra=_bloop_extra),
    # batch_size.py
    "scale_by_adagrad_norm": Spec(optim.scale_by_adagrad_norm, {"b0": 0.01}, {"b0": 0.5}),
    "adagrad_norm": Spec(optim.adagrad_norm, {"learning_rate": 1e-2}, LR),
    # lowrank.py
    "scale_by_galore": Spec(optim.scale_by_galore, {"rank": 2, "update_proj_gap": 2, "scale": 0.25}, {"scale": 1.0},
                            static_args=("rank", "update_proj_gap")),
    "galore": Spec(optim.galore, {"learning_rate": 1e-2, "rank": 2, "update_proj_gap": 2, "weight_decay": 0.1},
                   LR_WD, static_args=("rank", "update_proj_gap")),
    "scale_by_frugal": Spec(optim.scale_by_frugal, {"density": 0.5, "update_proj_gap": 2}, {},
                            static_args=("density", "update_proj_gap", "projection", "rank")),
    "frugal": Spec(optim.frugal, {"learning_rate": 1e-2, "density": 0.5, "update_proj_gap": 2}, LR,
                   static_args=("density", "update_proj_gap", "projection", "rank")),
    "scale_by_online_subspace_descent": Spec(optim.scale_by_online_subspace_descent, {"rank": 2}, {},
                                             static_args=("rank",)),
    "online_subspace_descent": Spec(optim.online_subspace_descent, {"learning_rate": 1e-2, "rank": 2,
                                                                    "weight_decay": 0.1}, LR_WD,
                                    static_args=("rank",)),
    # kronecker.py
    "scale_by_mkor": Spec(optim.scale_by_mkor, {"inv_freq": 1}, {}, static_args=("inv_freq",), extra=_mkor_extra),
    "mkor": Spec(optim.mkor, {"learning_rate": 1e-2, "inv_freq": 1, "weight_decay": 0.1}, LR_WD,
                 static_args=("inv_freq",), extra=_mkor_extra),
    # sharpness.py / perturbation.py / curvature.py: grad_fn (or output_fn) users
    "sam": _sam_family("sam"),
    "gsam": _sam_family("gsam"),
    "wsam": _sam_family("wsam"),
    "friendly_sam": _sam_family("friendly_sam"),
    "looksam": dataclasses.replace(_sam_family("looksam", k=2), static_args=("k",)),
    "awp": _sam_family("awp"),
    "rwp": dataclasses.replace(_sam_family("rwp", steps=2), static_args=("steps",), extra=_rwp_extra),
    "scale_by_egn": Spec(optim.scale_by_egn, {"damping": 1e-2}, {"damping": 1.0}, extra=_egn_extra,
                         recomputes_grad=True),
    "egn": Spec(optim.egn, {"learning_rate": 0.5, "line_search": False}, {"learning_rate": 0.25},
                static_args=("max_backtracking_steps",), extra=_egn_extra, recomputes_grad=True),
}

# Public names that are not optimizers: NamedTuple states, pure helpers, schedules and batch-size rules.
NOT_TRANSFORMS = {
    "ScaleByProjectionState", "projection_direction", "IndependentWeightDecayState",
    "SAMState", "sam_perturbation", "sam_gradient", "GSAMState", "gsam_rho_schedule", "WSAMState",
    "FriendlySAMState", "LookSAMState", "GradFnAt", "grad_fn_at",
    "AWPState", "awp_perturbation", "awp_gradient", "rwp_perturbation", "RWPState", "pgd_linf",
    "adafactor_relative_step", "normalized_weight_decay", "state_size",
    "GramsState", "GravityState", "gravity_zeta", "MomoState", "ComplexMomentumState", "ComplexAdamState",
    "subspace_rank", "galore_basis", "to_subspace", "from_subspace", "split_gradient", "online_pca_loss",
    "online_pca_step", "LowRankState", "stable_rank", "welore_ranks", "low_rank_factorize",
    "objective_grads", "stack_objectives", "gram_matrix", "project_out", "pcgrad_direction", "PCGradState",
    "config_direction", "MConfigState", "bloop_direction", "BloopState",
    "gauss_newton_system", "egn_direction", "EGNState",
    "sherman_morrison_ema_inverse", "sherman_morrison_inverse", "dense_layer_paths", "MKORState", "FULL_RANK_PATTERN",
    "one_cycle", "one_cycle_momentum", "LRRangeTestResult", "lr_range_test", "COOLDOWN_TYPES", "cooldown_factor",
    "wsd_schedule", "power_schedule", "last_iterate_bound", "optimal_base_lr", "regime_adaptation", "effective_lr",
    "angular_update", "equilibrium_angular_update",
    "adam_sqrt_scaling", "rmsprop_sqrt_scaling", "sqrt_scaling", "sgd_linear_scaling", "sqrt_lr_scaling",
    "ghost_batch_norm", "BatchSizeTest", "norm_test", "coordinatewise_norm_test", "inner_product_test",
    "next_batch_size", "AdaGradNormState",
}

NAMES = sorted(TRANSFORMS)


def test_every_public_name_is_classified():
  public = set(optim.__all__)
  unclassified = public - set(TRANSFORMS) - NOT_TRANSFORMS
  assert not unclassified, f"add these public names to TRANSFORMS or NOT_TRANSFORMS: {sorted(unclassified)}"
  assert not set(TRANSFORMS) & NOT_TRANSFORMS
  missing = set(TRANSFORMS) - public
  assert not missing, f"TRANSFORMS names that paperlab.optim does not export: {sorted(missing)}"


def test_non_transforms_are_not_gradient_transformations():
  """A name listed as a helper must not be an optimizer that escaped the table (factories are not called; the
  check is on their return annotation)."""
  for name in sorted(NOT_TRANSFORMS & set(optim.__all__)):
    obj = getattr(optim, name)
    if inspect.isfunction(obj):
      ret = str(inspect.signature(obj).return_annotation)
      assert "GradientTransformation" not in ret, f"{name} returns a GradientTransformation: add it to TRANSFORMS"


# ----------------------------------------------------------------------------------------------- helpers


def _build(spec: Spec, **overrides) -> optax.GradientTransformation:
  return optax.with_extra_args_support(spec.factory(**{**spec.kwargs, **overrides}))


def _grads(spec: Spec, params):
  if spec.stacked:
    gs = [jax.grad(_loss)(params), jax.grad(_aux_loss)(params)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *gs)
  return jax.grad(_loss)(params)


def _update(tx, grads, state, params, spec: Spec):
  """One jitted update; the extra arguments are built inside (``GradFnAt`` is not a pytree)."""

  @jax.jit
  def step(grads, state, params):
    extra = spec.extra(params, grads) if spec.extra else {}
    return tx.update(grads, state, params, **extra)

  return step(grads, state, params)


def _run(tx, spec: Spec, params, steps: int = 2):
  grads, state = _grads(spec, params), tx.init(params)
  for _ in range(steps):
    updates, state = _update(tx, grads, state, params, spec)
  return updates, state


_GENERIC = ("unsupported operand", "object has no attribute", "not subscriptable", "is not iterable",
            "takes from", "positional argument")


def _works_or_clear_error(run: Callable[[], Any], keywords: tuple[str, ...]):
  """``run()``'s value, or ``None`` when it raised a ValueError/TypeError naming one of ``keywords``."""
  try:
    return run()
  except (ValueError, TypeError) as e:
    msg = str(e)
    if any(k in msg for k in keywords) and not any(g in msg for g in _GENERIC):
      return None
    raise AssertionError(f"not a clear error (expected one of {keywords} in the message): "
                         f"{type(e).__name__}: {msg[:500]}") from e


def _assert_finite(tree):
  for leaf in jax.tree.leaves(tree):
    assert bool(jnp.all(jnp.isfinite(jnp.asarray(leaf, jnp.float32)))), "non-finite update"


# ----------------------------------------------------------------------------------------------- the cases


@pytest.mark.parametrize("name", NAMES)
def test_a_chain_after_clip(name):
  spec = TRANSFORMS[name]
  params, c = _params(), 1e-3
  grads = _grads(spec, params)
  assert float(optax.global_norm(grads)) > 10 * c  # the clip binds

  def run():
    chained = optax.chain(optax.clip_by_global_norm(c), _build(spec))
    return _update(chained, grads, chained.init(params), params, spec)[0]

  chained = _works_or_clear_error(run, ("chain", "clip", "before", "inside"))
  if chained is None:
    assert spec.recomputes_grad, f"{name} refuses a clip before it, but it uses the incoming gradient"
    return
  _assert_finite(chained)
  tx = _build(spec)
  unclipped = _update(tx, grads, tx.init(params), params, spec)[0]
  if spec.recomputes_grad:
    differs = any(not bool(jnp.allclose(a, b)) for a, b in zip(jax.tree.leaves(chained), jax.tree.leaves(unclipped)))
    assert differs, f"{name}: the clip chained before it is silently ignored"
    if spec.sgd_base:
      lr = spec.kwargs["learning_rate"]
      assert float(optax.global_norm(chained)) <= lr * c * (1 + 1e-4), f"{name}: the step is not the clipped one"
  else:
    clipped = jax.tree.map(lambda g: g * (c / optax.global_norm(grads)), grads)
    expected = _update(tx, clipped, tx.init(params), params, spec)[0]
    chex.assert_trees_all_close(chained, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_b_masked(name):
  spec = TRANSFORMS[name]
  params = _params()
  grads = _grads(spec, params)
  mask = {"dense": {"kernel": True, "bias": False}}

  def run():
    masked = optax.masked(_build(spec), mask)
    return _update(masked, grads, masked.init(params), params, spec)[0]

  updates = _works_or_clear_error(run, ("mask",))
  if updates is None:
    return
  chex.assert_trees_all_equal(updates["dense"]["bias"], grads["dense"]["bias"])  # passed through
  _assert_finite(updates)
  # The kernel gets what the transform gives when the bias is not among its parameters (held fixed).
  bias = params["dense"]["bias"]
  sub_params = {"dense": {"kernel": params["dense"]["kernel"]}}
  full = lambda p: {"dense": {"kernel": p["dense"]["kernel"], "bias": bias}}
  sub_spec = dataclasses.replace(spec, extra=_sub_extra(spec, full))
  sub_grads = jax.tree.map(lambda g: g, {"dense": {"kernel": grads["dense"]["kernel"]}})
  tx = _build(spec)
  expected = _update(tx, sub_grads, tx.init(sub_params), sub_params, sub_spec)[0]
  chex.assert_trees_all_close(updates["dense"]["kernel"], expected["dense"]["kernel"], rtol=1e-5, atol=1e-7)


def _sub_extra(spec: Spec, full: Callable):
  """The extra arguments for the kernel-only problem (the bias held at its value)."""
  if spec.extra is None:
    return None
  sub = lambda tree: {"dense": {"kernel": tree["dense"]["kernel"]}}

  def extra(params, grads):
    out = spec.extra(full(params), None)
    if "grad_fn" in out:
      fn = lambda p: sub(jax.grad(_loss)(full(p)))
      at = getattr(optim, "grad_fn_at", None)
      out["grad_fn"] = at(fn, params, grads) if at is not None else fn
    if "example_loss_fn" in out:
      out["example_loss_fn"] = lambda p: _example_losses(full(p))
    if "output_fn" in out:
      out["output_fn"] = lambda p: _outputs(full(p))
    if "aux_grads" in out:
      out["aux_grads"] = sub(out["aux_grads"])
    return out

  return extra


@pytest.mark.parametrize("name", NAMES)
def test_c_inject_hyperparams_under_jit(name):
  spec = TRANSFORMS[name]
  params = _params()
  grads = _grads(spec, params)
  traces = []

  def run():
    tx = optax.inject_hyperparams(spec.factory, static_args=spec.static_args)(**spec.kwargs)
    tx = optax.with_extra_args_support(tx)

    @jax.jit
    def step(grads, state, params):
      traces.append(1)
      extra = spec.extra(params, grads) if spec.extra else {}
      return tx.update(grads, state, params, **extra)

    state = tx.init(params)
    _, state = step(grads, state, params)
    return step, state

  out = _works_or_clear_error(run, ("static_args",))
  if out is None:
    return
  step, state = out
  base, _ = step(grads, state, params)
  _assert_finite(base)
  for hparam, value in spec.changes.items():
    assert hparam in state.hyperparams, f"{name}: {hparam} is not injected"
    changed = state._replace(hyperparams={**state.hyperparams,
                                          hparam: jnp.asarray(value, state.hyperparams[hparam].dtype)})
    other, _ = step(grads, changed, params)
    _assert_finite(other)
    differs = any(not bool(jnp.allclose(a, b, rtol=1e-6, atol=0))
                  for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(base)))
    assert differs, f"{name}: changing {hparam} under jit does not change the update"
  assert len(traces) == 1, f"{name}: the step was traced {len(traces)} times"


@pytest.mark.parametrize("name", NAMES)
def test_d_none_leaves(name):
  spec = TRANSFORMS[name]
  params = _params()
  with_none = {**params, "frozen": None}

  def run():
    return _run(_build(spec), spec, with_none)[0]

  updates = _works_or_clear_error(run, ("None",))
  if updates is None:
    return
  assert updates["frozen"] is None
  expected = _run(_build(spec), spec, params)[0]
  chex.assert_trees_all_close(updates["dense"], expected["dense"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_e_bfloat16_params(name):
  spec = TRANSFORMS[name]
  params = _params(jnp.bfloat16)

  def run():
    tx = _build(spec)
    grads, state = _grads(spec, params), tx.init(params)
    p = params
    for _ in range(2):
      updates, state = _update(tx, grads, state, p, spec)
      p = optax.apply_updates(p, updates)
    return updates, p

  out = _works_or_clear_error(run, ("bfloat16", "dtype"))
  if out is None:
    return
  updates, new_params = out
  _assert_finite(updates)
  _assert_finite(new_params)
  for leaf in jax.tree.leaves(new_params):
    assert leaf.dtype == jnp.bfloat16


def test_paper_aliases_take_learning_rate_like_optax():
  """``adamw_paper`` / ``sgdw`` name the paper's alpha ``learning_rate`` (issue 20), with the paper's default."""
  for fn in (optim.adamw_paper, optim.sgdw):
    params = inspect.signature(fn).parameters
    assert next(iter(params)) == "learning_rate" and "alpha" not in params
  assert inspect.signature(optim.adamw_paper).parameters["learning_rate"].default == 1e-3  # arXiv:1711.05101
  assert inspect.signature(optim.adamp).parameters["learning_rate"].default == 1e-3  # arXiv:2006.08217
  with pytest.raises(ValueError, match="learning_rate"):
    optim.adamw_paper(learning_rate=-1.0)
