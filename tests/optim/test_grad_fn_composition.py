"""Composition of the grad_fn users (SAM, GSAM, WSAM, F-SAM, LookSAM, AWP, RWP, EGN) with the rest of optax.

Issue 20: ``optax.chain(clip, sam(base))`` silently dropped the clip, the family crashed under ``optax.masked`` /
``optax.partition``, numeric hyperparameters must be traceable under ``optax.inject_hyperparams`` + ``jit``, and
bf16 params / ``None`` leaves must work. The oracle is :class:`Reference`, a NumPy (float64) transcription of each
update with an SGD base, written from the papers' algorithms as ``pytorch_optimizer`` implements them
(``pytorch_optimizer/optimizer/sam.py``: SAM, GSAM, WSAM, FriendlySAM, LookSAM) and from Wu et al. (AWP,
arXiv:2004.05884, Eq. 9-10), Yu et al. (RWP, arXiv:2205.14826, Alg. 1) and Korbit et al. (EGN, arXiv:2405.14402,
Eq. 6, solved in the primal ``p x p`` form); ``optax.clip_by_global_norm`` is the clip. Gradients come from
``jax.grad`` of the loss (the input of every method, not part of what is tested).
"""

from __future__ import annotations

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from paperlab import models, optim, train

X = jax.random.normal(jax.random.key(0), (8, 3))
Y = jax.random.normal(jax.random.key(1), (8, 2))
PARAMS = {"w": jax.random.normal(jax.random.key(2), (3, 2)) * 0.5, "b": jnp.array([0.1, -0.2])}


def outputs(p):
  return jnp.tanh(X @ p["w"] + p["b"])


def output_loss(out):
  return 0.5 * jnp.sum((out - Y) ** 2) / X.shape[0]


def example_losses(p):
  return 0.5 * jnp.sum((outputs(p) - Y) ** 2, axis=-1)


def loss(p):
  return jnp.mean(example_losses(p))


grad = jax.grad(loss)
C_MIN = float(np.median(np.asarray(example_losses(PARAMS))))  # RWP's LSC filter drops half the examples

# name -> (factory(inner, **hyper), hyperparameters at step 1, at step 2, static_args)
USERS = {
    "sam": (lambda inner, **h: optim.sam(inner, **h), {"rho": 0.3}, {"rho": 0.1}, ()),
    "gsam": (lambda inner, **h: optim.gsam(inner, **h), {"rho": 0.3, "alpha": 0.4}, {"rho": 0.1, "alpha": 0.2}, ()),
    "wsam": (lambda inner, **h: optim.wsam(inner, **h), {"rho": 0.3, "gamma": 0.8}, {"rho": 0.1, "gamma": 0.6}, ()),
    "friendly_sam": (lambda inner, **h: optim.friendly_sam(inner, **h), {"rho": 0.3, "sigma": 1.0, "lmbda": 0.9},
                     {"rho": 0.1, "sigma": 0.5, "lmbda": 0.6}, ()),
    "looksam": (lambda inner, k=1, **h: optim.looksam(inner, k=k, **h), {"rho": 0.3, "alpha": 0.7},
                {"rho": 0.1, "alpha": 0.5}, ("k",)),
    "awp": (lambda inner, **h: optim.awp(inner, **h), {"gamma": 0.2}, {"gamma": 0.05}, ()),
    "rwp": (lambda inner, steps=1, **h: optim.rwp(inner, steps=steps, **h), {"gamma": 0.2, "c_min": C_MIN},
            {"gamma": 0.05, "c_min": 1e9}, ("steps",)),
    "egn": (None, {"damping": 0.5}, {"damping": 0.05}, ()),
}
WITH_INNER = [n for n in USERS if n != "egn"]


def make(name, inner, hyper, lr=None):
  """The transformation under test with base ``inner`` (for EGN: the direction, then ``inner``)."""
  factory, _, _, _ = USERS[name]
  if name == "egn":
    return optax.chain(optim.scale_by_egn(adaptive_damping=False, **hyper), inner)
  if name == "wsam":
    hyper = dict(hyper, learning_rate=lr)
  return factory(inner, **hyper)


def extra_args(name):
  if name == "rwp":
    return {"example_loss_fn": example_losses}
  if name == "egn":
    return {"output_fn": outputs, "output_loss": output_loss}
  return {}


# ------------------------------------------------------------------------------------------------ the oracle


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _norm(tree):
  return np.sqrt(sum(np.sum(x * x) for x in jax.tree.leaves(tree)))


def _g(p, fn=grad):
  return _np(fn(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p)))


def _map(f, *trees):
  return jax.tree.map(f, *trees)


class Reference:
  """One method with an SGD base of learning rate ``lr`` and an optional ``optax.clip_by_global_norm(clip)`` applied
  to the gradient the base receives (the composition ``method(chain(clip, sgd))``), in float64 NumPy."""

  def __init__(self, name, clip=None, owned=("b", "w"), k=1):
    self.name, self.clip, self.owned, self.k, self.t = name, clip, owned, k, 0
    self.m = self.g_v = None

  def _clip(self, g):
    if self.clip is None:
      return g
    clipped, _ = optax.clip_by_global_norm(self.clip).update(jax.tree.map(jnp.asarray, g), None)
    return _np(clipped)

  def _sub(self, tree):  # the owned leaves only (optax.masked: the other leaves are held fixed)
    return {k: tree[k] for k in self.owned}

  def _at(self, p, delta):
    return _map(lambda w, d: w + d, p, {**{k: 0 * v for k, v in p.items()}, **delta})

  def step(self, p, lr, **h):
    name, g_full = self.name, _g(p)
    g = self._sub(g_full)
    if name in ("sam", "gsam", "wsam"):
      e = _map(lambda x: h["rho"] * x / _norm(g), g)
      g_p = self._sub(_g(self._at(p, e)))
      if name == "sam":
        used = g_p
      elif name == "gsam":
        coef = sum(np.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_p))) / _norm(g_p) ** 2
        used = _map(lambda gp, gg: gp - h["alpha"] * (gg - coef * gp), g_p, g)
      else:  # WSAM, decoupled (Yue et al., Alg. 1): the sharpness term bypasses the base optimizer
        a = h["gamma"] / (1 - h["gamma"])
        return _map(lambda gg, gp, gc: -lr * gc - lr * a * (gp - gg), g, g_p, self._clip(g))
    elif name == "friendly_sam":
      d = g if self.m is None else _map(lambda gg, m: gg - h["sigma"] * m, g, self.m)
      self.m = g if self.m is None else _map(lambda m, gg: h["lmbda"] * m + (1 - h["lmbda"]) * gg, self.m, g)
      used = self._sub(_g(self._at(p, _map(lambda x: h["rho"] * x / _norm(d), d))))
    elif name == "looksam":
      if self.t % self.k == 0:
        used = self._sub(_g(self._at(p, _map(lambda x: h["rho"] * x / _norm(g), g))))
        self.g_v = _map(lambda gs, gg: gs - np.linalg.norm(gs) * np.sum(gg * gs) / (np.linalg.norm(gg) *
                        np.linalg.norm(gs)) * gg / np.linalg.norm(gg), used, g)
      else:
        used = _map(lambda gg, v: gg + h["alpha"] * np.linalg.norm(gg) / (np.linalg.norm(v) + 1e-8) * v, g, self.g_v)
    elif name in ("awp", "rwp"):
      d = g
      if name == "rwp":  # one ascent step on the examples below c_min (loss stationary condition)
        keep = np.asarray(example_losses(jax.tree.map(jnp.asarray, p))) < h["c_min"]
        d = self._sub(_g(p, jax.grad(lambda q: jnp.sum(jnp.where(keep, example_losses(q), 0.0)) / len(keep))))
      v = {k: h["gamma"] * np.linalg.norm(p[k]) * d[k] / np.linalg.norm(d[k]) if p[k].ndim > 1 else 0 * d[k]
           for k in d}
      used = self._sub(_g(self._at(p, v)))
    elif name == "egn":  # primal form (J^T Q J + lambda I)^-1 J^T r with Q = I / batch for this output_loss
      sub = self._sub(p)
      flat, unravel = ravel_pytree(jax.tree.map(jnp.asarray, sub))
      f = lambda q: outputs({**jax.tree.map(jnp.asarray, p), **unravel(q)}).reshape(-1)
      jac = np.asarray(jax.jacobian(f)(flat), np.float64)
      r = (np.asarray(f(flat), np.float64) - np.asarray(Y, np.float64).reshape(-1)) / X.shape[0]
      d = np.linalg.solve(jac.T @ jac / X.shape[0] + h["damping"] * np.eye(flat.size), jac.T @ r)
      used = _np(unravel(jnp.asarray(d)))
    self.t += 1
    return _map(lambda x: -lr * x, self._clip(used))


def run_reference(name, hypers, lrs, clip=None, owned=("b", "w"), k=1):
  ref, p = Reference(name, clip, owned, k), _np(PARAMS)
  for h, lr in zip(hypers, lrs):
    u = ref.step(p, lr, **h)
    p = {key: p[key] + u[key] if key in u else p[key] for key in p}
  return p


def run_ours(tx, steps, params=PARAMS, name=None, jit=False):
  state = tx.init(params)

  def update(state, params):
    g = grad(params)
    return tx.update(g, state, params, grad_fn=optim.grad_fn_at(grad, params, g), **extra_args(name))

  update = jax.jit(update) if jit else update
  for _ in range(steps):
    u, state = update(state, params)
    params = optax.apply_updates(params, u)
  return params


def assert_close(ours, ref, rtol=2e-4, atol=1e-6):
  for key in ref:
    np.testing.assert_allclose(np.asarray(ours[key], np.float64), ref[key], rtol=rtol, atol=atol, err_msg=key)


# ------------------------------------------------------------------------------------- item 1: chain(clip, X)


def _mlp(rngs):
  return models.MLP(4, [8], 3, rngs=rngs)


def _train_step_kwargs(name):
  if name == "rwp":
    return {"example_loss_fn": lambda m, b, r: optax.softmax_cross_entropy_with_integer_labels(m(b[0]), b[1])}
  if name == "egn":
    return {"output_fn": lambda m, b, r: m(b[0]),
            "output_loss": lambda o, b: optax.softmax_cross_entropy_with_integer_labels(o, b[1]).mean()}
  return {}


def _composed(name, before):
  h = USERS[name][1]
  if name == "egn":
    return optax.chain(*before, optim.egn(damping=h["damping"], line_search=False))
  return optax.chain(*before, make(name, optax.sgd(0.1), h, lr=0.1))


@pytest.mark.parametrize("name", list(USERS))
def test_chaining_a_clip_before_a_grad_fn_user_in_the_train_step_is_an_error_naming_the_fix(name):
  tx = _composed(name, [optax.clip_by_global_norm(1e-3)])
  graphdef, init = train.make_init(_mlp, tx)
  step = train.make_train_step(graphdef, train.classification_loss, tx, **_train_step_kwargs(name))
  batch = (jax.random.normal(jax.random.key(1), (6, 4)), jnp.arange(6) % 3)
  fix = "after it" if name == "egn" else "inside it"
  with pytest.raises(ValueError, match=f"{name}.*not the gradient grad_fn gave.*{fix}"):
    jax.jit(step)(init(jax.random.key(0)), batch, jax.random.key(2))


@pytest.mark.parametrize("name", list(USERS))
def test_the_train_step_still_works_when_nothing_changes_the_gradient_before_it(name):
  tx = _composed(name, [optax.identity()])
  graphdef, init = train.make_init(_mlp, tx)
  step = train.make_train_step(graphdef, train.classification_loss, tx, **_train_step_kwargs(name))
  batch = (jax.random.normal(jax.random.key(1), (6, 4)), jnp.arange(6) % 3)
  state = init(jax.random.key(0))
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(2))
  assert bool(jnp.isfinite(metrics["loss"]))
  assert not all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(new_state.params),
                                                          jax.tree.leaves(state.params)))


@pytest.mark.parametrize("name", list(USERS))
def test_a_hand_call_with_an_anchored_grad_fn_is_checked_too(name):
  tx = _composed(name, [optax.clip_by_global_norm(1e-3)])
  with pytest.raises(ValueError, match="not the gradient grad_fn gave"):
    run_ours(tx, 1, name=name)
  g = grad(PARAMS)
  scaled = jax.tree.map(lambda x: x * 1.0, g)  # equal values, different arrays: still a modified gradient
  with pytest.raises(ValueError, match="first difference at"):
    tx.update(scaled, tx.init(PARAMS), PARAMS, grad_fn=optim.grad_fn_at(grad, PARAMS, g), **extra_args(name))


def test_multisteps_around_sam_is_an_error():
  """optax.MultiSteps hands the base an average over micro-batches, which grad_fn (one batch) cannot reproduce."""
  tx = optax.MultiSteps(optim.sam(optax.sgd(0.1)), every_k_schedule=1)
  with pytest.raises(ValueError, match="MultiSteps"):
    run_ours(tx, 1)


@pytest.mark.parametrize("name", list(USERS))
def test_clip_inside_matches_the_two_pass_reference_with_the_clip_on_the_second_gradient(name):
  clip, lr = 0.05, 0.1
  h = USERS[name][1]
  if name == "egn":
    tx = make(name, optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr)), h)
  else:
    tx = make(name, optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr)), h, lr=lr)
  ref = run_reference(name, [h, h], [lr, lr], clip=clip)
  unclipped = run_reference(name, [h, h], [lr, lr])
  assert np.max(np.abs(ref["w"] - unclipped["w"])) > 1e-3  # the clip is active, so the test can fail
  assert_close(run_ours(tx, 2, name=name), ref)


# -------------------------------------------------------------------------------- item 2: masked, partition


@pytest.mark.parametrize("name", list(USERS))
def test_under_masked_only_the_selected_leaves_are_perturbed_and_updated(name):
  """``optax.masked(X(sgd), {w: True, b: False})``: ``w`` gets X's step with the perturbation on ``w`` only (``b``
  held at its value in grad_fn), ``b`` keeps its raw gradient as its update (optax.masked's convention)."""
  lr, h = 0.1, USERS[name][1]
  tx = optax.masked(make(name, optax.sgd(lr), h, lr=lr), {"w": True, "b": False})
  ours = run_ours(tx, 1, name=name)
  ref = run_reference(name, [h], [lr], owned=("w",))
  ref["b"] = _np(PARAMS)["b"] + _np(grad(PARAMS))["b"]
  assert_close(ours, ref)


@pytest.mark.parametrize("name", list(USERS))
def test_under_partition_each_group_gets_its_own_transform(name):
  lr, h = 0.1, USERS[name][1]
  tx = optax.partition({"x": make(name, optax.sgd(lr), h, lr=lr), "adam": optax.adam(0.01)}, {"w": "x", "b": "adam"})
  ours = run_ours(tx, 1, name=name)
  ref = run_reference(name, [h], [lr], owned=("w",))
  adam_b, _ = optax.adam(0.01).update(grad(PARAMS)["b"], optax.adam(0.01).init(PARAMS["b"]))
  ref["b"] = _np(PARAMS)["b"] + np.asarray(adam_b, np.float64)
  assert_close(ours, ref)


def test_masked_with_a_plain_grad_fn_is_a_clear_error():
  tx = optax.masked(optim.sam(optax.sgd(0.1)), {"w": True, "b": False})
  with pytest.raises(ValueError, match="grad_fn_at"):
    tx.update(grad(PARAMS), tx.init(PARAMS), PARAMS, grad_fn=grad)


def test_masked_sam_inside_the_train_step():
  tx = optax.masked(optim.sam(optax.sgd(0.1)), lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  graphdef, init = train.make_init(_mlp, tx)
  step = train.make_train_step(graphdef, train.classification_loss, tx)
  state = init(jax.random.key(0))
  new_state, metrics = jax.jit(step)(state, (jax.random.normal(jax.random.key(1), (6, 4)), jnp.arange(6) % 3),
                                     jax.random.key(2))
  assert bool(jnp.isfinite(metrics["loss"]))


def test_awp_mask_pytree_under_masked():
  tx = optax.masked(optim.awp(optax.sgd(0.1), gamma=0.2, mask={"w": True, "b": False}), {"w": True, "b": False})
  ref = run_reference("awp", [{"gamma": 0.2}], [0.1], owned=("w",))
  ref["b"] = _np(PARAMS)["b"] + _np(grad(PARAMS))["b"]
  assert_close(run_ours(tx, 1), ref)


# -------------------------------------------------------------------- item 4: inject_hyperparams + jit


def _set(state, **values):
  """Set the injected hyperparameters named in ``values`` (in every inject_hyperparams state, and nowhere else)."""
  if hasattr(state, "hyperparams") and hasattr(state, "inner_state"):
    hyper = {k: jnp.asarray(values[k], v.dtype) if k in values else v for k, v in state.hyperparams.items()}
    return state._replace(hyperparams=hyper, inner_state=_set(state.inner_state, **values))
  if isinstance(state, tuple) and hasattr(state, "_fields"):
    return type(state)(*(_set(x, **values) for x in state))
  if isinstance(state, (tuple, list)):
    return type(state)(_set(x, **values) for x in state)
  if isinstance(state, dict):
    return {k: _set(v, **values) for k, v in state.items()}
  return state


@pytest.mark.parametrize("name", list(USERS))
def test_hyperparameters_are_traceable_under_inject_hyperparams_and_jit(name):
  _, h1, h2, static = USERS[name]
  lr1, lr2 = 0.1, 0.03
  if name == "egn":
    tx = optax.inject_hyperparams(optim.egn, static_args=("max_backtracking_steps",))(
        learning_rate=lr1, adaptive_damping=False, line_search=False, **h1)
  else:
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=lr1)
    kwargs = dict(h1, learning_rate=lr1) if name == "wsam" else h1
    if name == "looksam":
      kwargs = dict(kwargs, k=2)
    if name == "rwp":
      kwargs = dict(kwargs, steps=1)
    tx = optax.inject_hyperparams(getattr(optim, name), static_args=static)(inner, **kwargs)
  params, state = PARAMS, tx.init(PARAMS)

  traces = []

  @jax.jit
  def update(state, params):
    traces.append(1)  # once per trace, i.e. per compilation
    g = grad(params)
    return tx.update(g, state, params, grad_fn=optim.grad_fn_at(grad, params, g), **extra_args(name))

  for h, lr in [(h1, lr1), (h2, lr2)]:
    state = _set(state, learning_rate=lr, **h)
    u, state = update(state, params)
    params = optax.apply_updates(params, u)
  assert len(traces) == 1  # one compilation: the hyperparameters were traced, not baked in
  ref = run_reference(name, [h1, h2], [lr1, lr2], k=2 if name == "looksam" else 1)
  assert_close(params, ref)


@pytest.mark.parametrize("make_tx,arg", [
    (lambda: optax.inject_hyperparams(optim.looksam)(optax.sgd(0.1)), "k"),
    (lambda: optax.inject_hyperparams(optim.rwp)(optax.sgd(0.1)), "steps"),
    (lambda: optax.inject_hyperparams(optim.egn)(), "max_backtracking_steps"),
])
def test_integer_counts_must_be_static_args_and_the_error_says_so(make_tx, arg):
  with pytest.raises(ValueError, match=f"static_args=\\('{arg}',\\)"):
    make_tx().init(PARAMS)


# ----------------------------------------------------------------------------------- bf16 and None leaves


@pytest.mark.parametrize("name", list(USERS))
def test_none_leaves_are_kept(name):
  params = {**PARAMS, "frozen": None}
  lr, h = 0.1, USERS[name][1]
  tx = make(name, optax.sgd(lr), h, lr=lr)
  g = grad(params)
  assert g["frozen"] is None
  u, _ = tx.update(g, tx.init(params), params, grad_fn=optim.grad_fn_at(grad, params, g), **extra_args(name))
  assert u["frozen"] is None
  ref = run_reference(name, [h], [lr])
  assert_close(optax.apply_updates(PARAMS, {k: u[k] for k in PARAMS}), ref)


@pytest.mark.parametrize("name", list(USERS))
def test_bfloat16_params_give_bfloat16_updates_close_to_float32(name):
  lr, h = 0.1, USERS[name][1]
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
    g = grad(params)
    tx = make(name, optax.sgd(lr), h, lr=lr)
    u, _ = jax.jit(lambda s, p, g: tx.update(g, s, p, grad_fn=optim.grad_fn_at(grad, p, g), **extra_args(name)))(
        tx.init(params), params, g)
    assert all(x.dtype == dtype for x in jax.tree.leaves(u)), jax.tree.map(lambda x: x.dtype, u)
    results[dtype] = np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(u)])
  assert np.all(np.isfinite(results[jnp.bfloat16]))
  rel = np.linalg.norm(results[jnp.bfloat16] - results[jnp.float32]) / np.linalg.norm(results[jnp.float32])
  assert rel < 0.05


# ------------------------------------------------------------------------------------ item 3: nnx.Optimizer


def test_sam_docstring_example_with_nnx_optimizer_runs():
  """The example in ``optim.sam``'s docstring, executed as a doctest."""
  parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  test = parser.get_doctest(optim.sam.__doc__, {}, "sam", None, 0)
  assert test.examples, "sam's docstring lost its nnx.Optimizer example"
  result = runner.run(test, out=lambda s: None)
  assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed"


@pytest.mark.parametrize("anchored", [False, True])
def test_nnx_optimizer_with_a_grad_fn_returning_nnx_grad_output(anchored):
  """nnx.Optimizer passes the pure nnx.State of its wrt params; grad_fn may return nnx.grad's nnx.State."""
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  model.kernel.set_value(PARAMS["w"])
  model.bias.set_value(PARAMS["b"])
  optimizer = nnx.Optimizer(model, optim.sam(optax.sgd(0.1), rho=0.3), wrt=nnx.Param)
  loss_fn = lambda m: 0.5 * jnp.mean(jnp.sum((jnp.tanh(m(X)) - Y) ** 2, axis=-1))

  @nnx.jit
  def train_step(model, optimizer):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    grad_fn = lambda p: nnx.grad(loss_fn)(nnx.merge(graphdef, p, rest))
    grads = nnx.grad(loss_fn)(model)
    if anchored:
      grad_fn = optim.grad_fn_at(grad_fn, nnx.state(model, nnx.Param), grads)
    optimizer.update(model, grads, grad_fn=grad_fn)

  train_step(model, optimizer)
  ref = run_reference("sam", [{"rho": 0.3}], [0.1])
  assert_close({"w": model.kernel.get_value(), "b": model.bias.get_value()}, ref)


def test_nnx_optimizer_with_a_clip_before_sam_is_an_error():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1e-3), optim.sam(optax.sgd(0.1))),
                            wrt=nnx.Param)
  loss_fn = lambda m: jnp.mean(m(X) ** 2)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  grads = nnx.grad(loss_fn)(model)
  grad_fn = optim.grad_fn_at(lambda p: nnx.grad(loss_fn)(nnx.merge(graphdef, p, rest)), nnx.state(model, nnx.Param),
                             grads)
  with pytest.raises(ValueError, match="inside it"):
    optimizer.update(model, grads, grad_fn=grad_fn)
