"""paperlab.train.make_train_step's opt-in extra arguments: per-example losses (RWP) and outputs (EGN)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import train
from paperlab.models import MLP


def _mlp(rngs):
  return MLP(64, [16], 10, rngs=rngs)


def _per_example_ce(model, batch, rng):
  del rng
  return optax.softmax_cross_entropy_with_integer_labels(model(batch[0]), batch[1])


def _logits(model, batch, rng):
  del rng
  return model(batch[0])


def _mean_ce(logits, batch):
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()


def _recorder(names):
  """An extra-args transform whose update is zero and whose state records what the named extra args returned."""

  def init(params):
    return {}

  def update(updates, state, params=None, **extra):
    record = {}
    if "example_loss_fn" in names:
      record["example_losses"] = extra["example_loss_fn"](params)
    if "output_fn" in names:
      outputs = extra["output_fn"](params)
      record["outputs"] = outputs
      record["output_loss"] = extra["output_loss"](outputs)
    record["keys"] = jnp.asarray(sorted(k for k in extra if k not in ("grad_fn", "value")) == sorted(names))
    return jax.tree.map(jnp.zeros_like, updates), record

  return optax.GradientTransformationExtraArgs(init, update)


@pytest.fixture
def batch(digits_jnp):
  return digits_jnp[0][:12], digits_jnp[1][:12]


def test_example_loss_fn_gives_the_per_example_losses_whose_mean_is_the_step_loss(batch):
  names = ("example_loss_fn",)
  opt = _recorder(names)
  graphdef, init = train.make_init(_mlp, opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt, example_loss_fn=_per_example_ce)
  state = init(jax.random.key(0))
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(1))
  losses = new_state.opt_state["example_losses"]
  assert losses.shape == (12,)
  np.testing.assert_allclose(losses.mean(), metrics["loss"], rtol=1e-6)
  assert bool(new_state.opt_state["keys"])


def test_output_fn_and_output_loss_reproduce_the_model_and_its_loss(batch):
  names = ("output_fn", "output_loss")
  opt = _recorder(names)
  graphdef, init = train.make_init(_mlp, opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt, output_fn=_logits, output_loss=_mean_ce)
  state = init(jax.random.key(0))
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(1))
  model = nnx.merge(graphdef, state.params, state.model_state)
  chex.assert_trees_all_close(new_state.opt_state["outputs"], model(batch[0]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(new_state.opt_state["output_loss"], metrics["loss"], rtol=1e-6)
  assert bool(new_state.opt_state["keys"])


def test_without_the_new_arguments_only_grad_fn_and_value_are_passed(batch):
  opt = _recorder(())
  graphdef, init = train.make_init(_mlp, opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  new_state, _ = step(init(jax.random.key(0)), batch, jax.random.key(1))
  assert bool(new_state.opt_state["keys"])


def test_extra_args_flow_through_optax_chain_to_the_transform_that_uses_them(batch):
  # optax.chain hands every extra argument to each extra-args member; plain members (sgd) never see them.
  opt = optax.chain(optax.sgd(0.1, momentum=0.9), _recorder(("example_loss_fn",)))
  graphdef, init = train.make_init(_mlp, opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt, example_loss_fn=_per_example_ce)
  new_state, metrics = jax.jit(step)(init(jax.random.key(0)), batch, jax.random.key(1))
  np.testing.assert_allclose(new_state.opt_state[1]["example_losses"].mean(), metrics["loss"], rtol=1e-6)


def test_output_fn_without_output_loss_is_an_error():
  opt = optax.chain(optax.sgd(0.1))
  graphdef, _ = train.make_init(_mlp, opt)
  with pytest.raises(ValueError, match="output_loss"):
    train.make_train_step(graphdef, train.classification_loss, opt, output_fn=_logits)


def test_extra_functions_need_an_extra_args_optimizer():
  opt = optax.scale(-0.1)  # a plain GradientTransformation
  graphdef, _ = train.make_init(_mlp, opt)
  with pytest.raises(TypeError, match="GradientTransformationExtraArgs"):
    train.make_train_step(graphdef, train.classification_loss, opt, example_loss_fn=_per_example_ce)


def test_rwp_through_the_train_step_equals_awp_when_every_example_is_kept(batch):
  # RWP with c_min = inf and one ascent step is AWP (Yu et al., arXiv:2205.14826); only RWP needs the
  # per-example losses, which make_train_step now provides.
  from paperlab import optim

  states = []
  for opt, kwargs in [(optim.rwp(optax.sgd(0.1), gamma=0.05, c_min=float("inf"), steps=1),
                       {"example_loss_fn": _per_example_ce}),
                      (optim.awp(optax.sgd(0.1), gamma=0.05), {})]:
    graphdef, init = train.make_init(_mlp, opt)
    step = train.make_train_step(graphdef, train.classification_loss, opt, **kwargs)
    states.append(jax.jit(step)(init(jax.random.key(0)), batch, jax.random.key(1))[0].params)
  chex.assert_trees_all_close(states[0], states[1], rtol=1e-5, atol=1e-6)


def test_grad_fn_is_anchored_at_the_step_params_and_gradient(batch):
  # The grad_fn users check (by identity, at trace time) that the updates they receive are the gradient grad_fn
  # gave at params; that needs make_train_step to pass the very arrays it hands the optimizer.
  from paperlab import optim

  seen = {}

  def update(updates, state, params=None, *, grad_fn=None, **extra):
    seen["anchored"] = isinstance(grad_fn, optim.GradFnAt)
    seen["same_grads"] = all(a is b for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(grad_fn.grads)))
    seen["same_params"] = all(a is b for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(grad_fn.params)))
    diff = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), grad_fn(params), updates)
    # the state records how far grad_fn(params) is from the step's gradient (same batch and rng: 0)
    return jax.tree.map(jnp.zeros_like, updates), jnp.max(jnp.stack(jax.tree.leaves(diff)))

  opt = optax.GradientTransformationExtraArgs(lambda params: jnp.zeros(()), update)
  graphdef, init = train.make_init(_mlp, opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  new_state, _ = jax.jit(step)(init(jax.random.key(0)), batch, jax.random.key(1))
  assert seen == {"anchored": True, "same_grads": True, "same_params": True}
  assert float(new_state.opt_state) < 1e-6
