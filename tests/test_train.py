"""paperlab.train: convergence, vmapped trials equal separate runs, extra args for SAM-style optimizers."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import train
from paperlab.models import MLP


def _mlp(norm=None):
  return lambda rngs: MLP(64, [32], 10, norm=norm, rngs=rngs)


def _scan_run(graphdef, init, step, data, key, num_steps, batch_size=32):
  state = init(key)
  return train.run_steps(step, state, data, key, batch_size=batch_size, num_steps=num_steps)


def test_train_step_converges_on_digits(digits_data, digits_jnp):
  opt = optax.adam(3e-3)
  graphdef, init = train.make_init(_mlp(), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  run = jax.jit(functools.partial(_scan_run, graphdef, init, step, digits_jnp, num_steps=300))
  state, metrics = run(jax.random.key(0))
  assert metrics["loss"][-20:].mean() < 0.2 * metrics["loss"][:5].mean()
  acc = train.evaluate(graphdef, state, digits_data.x_test, digits_data.y_test)["accuracy"]
  assert acc > 0.9
  assert int(state.step) == 300


def test_vmapped_seeds_equal_separate_runs(digits_jnp):
  opt = optax.sgd(0.05, momentum=0.9)
  graphdef, init = train.make_init(_mlp("batch"), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  run = functools.partial(_scan_run, graphdef, init, step, digits_jnp, num_steps=50)
  keys = jax.random.split(jax.random.key(42), 4)
  stacked, stacked_metrics = jax.jit(jax.vmap(run))(keys)
  for i in range(4):
    single, single_metrics = jax.jit(run)(keys[i])
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], stacked), single, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stacked_metrics["loss"][i], single_metrics["loss"], rtol=1e-6, atol=1e-6)


def test_resumed_run_equals_uninterrupted_run(digits_jnp):
  opt = optax.adam(1e-3)
  graphdef, init = train.make_init(_mlp(), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  key = jax.random.key(7)
  run = jax.jit(train.run_steps, static_argnums=0, static_argnames=("batch_size", "num_steps"))
  full, _ = run(step, init(key), digits_jnp, key, batch_size=32, num_steps=40)
  half, _ = run(step, init(key), digits_jnp, key, batch_size=32, num_steps=25)
  resumed, _ = run(step, half, digits_jnp, key, batch_size=32, num_steps=15)
  chex.assert_trees_all_close(full, resumed, rtol=1e-6, atol=1e-7)


def _probe(record):
  """An extra-args transform that returns ``grad_fn(params)`` (or ``value``) as its update."""

  def update(updates, state, params=None, *, grad_fn=None, value=None, **extra):
    del extra
    return (grad_fn(params) if record == "grad_fn" else jax.tree.map(lambda u: jnp.full_like(u, value), updates)), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def test_grad_fn_is_the_gradient_on_the_same_batch(digits_jnp):
  opt = _probe("grad_fn")
  graphdef, init = train.make_init(_mlp(), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  state = init(jax.random.key(0))
  batch = (digits_jnp[0][:16], digits_jnp[1][:16])
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(1))
  # the update was grad_fn(params) == the step's own gradient, so params moved by +grad
  grads = jax.tree.map(lambda a, b: a - b, new_state.params, state.params)
  model_loss = lambda p: train.classification_loss(__import__("flax").nnx.merge(graphdef, p, state.model_state),
                                                   batch, None)[0]
  chex.assert_trees_all_close(grads, jax.grad(model_loss)(state.params), rtol=1e-5, atol=1e-6)
  assert jnp.isfinite(metrics["grad_norm"])


def test_value_is_the_batch_loss(digits_jnp):
  opt = _probe("value")
  graphdef, init = train.make_init(_mlp(), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  state = init(jax.random.key(0))
  new_state, metrics = step(state, (digits_jnp[0][:16], digits_jnp[1][:16]), jax.random.key(1))
  delta = new_state.params["head"]["bias"] - state.params["head"]["bias"]
  np.testing.assert_allclose(delta, metrics["loss"], rtol=1e-6)


def test_batchnorm_statistics_are_updated_and_used_in_eval(digits_data, digits_jnp):
  opt = optax.adam(1e-3)
  graphdef, init = train.make_init(_mlp("batch"), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  state = init(jax.random.key(0))
  new_state, _ = step(state, (digits_jnp[0][:64], digits_jnp[1][:64]), jax.random.key(1))
  assert not np.allclose(new_state.model_state["norms"][0]["mean"], state.model_state["norms"][0]["mean"])
  full = train.evaluate(graphdef, new_state, digits_data.x_test, digits_data.y_test)
  chunked = train.evaluate(graphdef, new_state, digits_data.x_test, digits_data.y_test, batch_size=100)
  chex.assert_trees_all_close(full, chunked, rtol=1e-5)


def test_loss_fn_must_return_a_scalar(digits_jnp):
  opt = optax.sgd(0.1)
  graphdef, init = train.make_init(_mlp(), opt)
  step = train.make_train_step(graphdef, lambda m, b, r: optax.softmax_cross_entropy_with_integer_labels(
      m(b[0]), b[1]), opt)
  with pytest.raises(ValueError, match="scalar loss"):
    step(init(jax.random.key(0)), (digits_jnp[0][:4], digits_jnp[1][:4]), jax.random.key(0))


def test_wrong_batch_shape_is_a_clear_error(digits_jnp):
  opt = optax.sgd(0.1)
  graphdef, init = train.make_init(_mlp(), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  with pytest.raises(ValueError, match="x must have shape"):
    step(init(jax.random.key(0)), (digits_jnp[0][:4, :10], digits_jnp[1][:4]), jax.random.key(0))
  with pytest.raises(ValueError, match="same number of examples"):
    train.evaluate(graphdef, init(jax.random.key(0)), digits_jnp[0][:5], digits_jnp[1][:4])


def test_fit_full_batch_equals_one_run_per_key(digits_jnp):
  data = (digits_jnp[0][:128], digits_jnp[1][:128])
  opt = optax.adam(1e-2)
  loss_fn = train.mean_loss(optax.softmax_cross_entropy_with_integer_labels)
  keys = jax.random.split(jax.random.key(3), 2)
  states, metrics = train.fit_full_batch(_mlp(), opt, loss_fn, data, keys, num_steps=20)
  assert metrics["loss"].shape == (2, 20) and metrics["loss"][0, -1] < metrics["loss"][0, 0]
  graphdef, init = train.make_init(_mlp(), opt)
  step = jax.jit(train.make_train_step(graphdef, loss_fn, opt))
  state = init(keys[1])
  for _ in range(20):
    state, _ = step(state, data, keys[1])
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], states), state, rtol=1e-5, atol=1e-6)
  accs, _ = train.fit_full_batch(_mlp(), opt, loss_fn, data, keys, num_steps=20,
                                 evaluate_fn=lambda g, s: train.evaluate(g, s, *data)["accuracy"])
  assert accs.shape == (2,) and float(accs.min()) > 0.5


def test_per_class_recall_matches_sklearn_and_predict_is_eval_mode():
  from sklearn.metrics import recall_score
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((300, 5)).astype(np.float32)
  labels = rng.integers(0, 4, 300).astype(np.int32)  # class 4 has no examples: recall 0, as sklearn's zero_division=0
  got = jax.jit(train.per_class_recall, static_argnums=2)(jnp.asarray(logits), jnp.asarray(labels), 5)
  want = recall_score(labels, logits.argmax(-1), labels=range(5), average=None, zero_division=0)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  graphdef, init = train.make_init(_mlp(), optax.sgd(0.1))
  state = init(jax.random.key(0))
  x = jnp.asarray(rng.standard_normal((7, 64)), jnp.float32)
  np.testing.assert_allclose(train.predict(graphdef, state, x), _mlp()(nnx.Rngs(0))(x),
                             rtol=1e-5, atol=1e-6)


def test_compare_losses_runs_each_loss_as_fit_full_batch_with_shared_keys(digits_data):
  from paperlab.data import Dataset
  ds = Dataset(digits_data.x_train[:200], digits_data.y_train[:200], digits_data.x_test[:100],
               digits_data.y_test[:100])
  losses = {"ce": optax.softmax_cross_entropy_with_integer_labels,
            "smooth": lambda z, y: optax.softmax_cross_entropy(z, optax.smooth_labels(jax.nn.one_hot(y, 10), 0.1))}
  out = train.compare_losses(losses, ds, widths=(16,), learning_rate=1e-2, num_steps=15, num_seeds=2, seed=3)
  assert list(out) == ["ce", "smooth"]
  keys = jax.random.split(jax.random.PRNGKey(3), 2)
  acc, metrics = train.fit_full_batch(
      lambda rngs: MLP(64, [16], 10, rngs=rngs), optax.adam(1e-2), train.mean_loss(losses["smooth"]),
      (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)), keys, num_steps=15,
      evaluate_fn=lambda g, s: train.evaluate(g, s, ds.x_test, ds.y_test)["accuracy"])
  np.testing.assert_array_equal(out["smooth"][0], acc)
  np.testing.assert_array_equal(out["smooth"][1], metrics["loss"])
  assert out["ce"][1].shape == (2, 15) and out["ce"][1][:, -1].max() < out["ce"][1][:, 0].min()


def test_run_adversarial_steps_trains_on_the_attacked_batches(digits_jnp):
  from paperlab.data import batch_at
  opt = optax.sgd(0.1)
  graphdef, init = train.make_init(_mlp(), opt)
  step = train.make_train_step(graphdef, train.classification_loss, opt)
  keys = tuple(jax.random.split(jax.random.key(5), 3))
  shift = lambda model, x, y, k: x + 0.1 * jax.random.normal(k, x.shape)  # any function of (model, batch, key)
  run = jax.jit(lambda s: train.run_adversarial_steps(
      graphdef, step, s, digits_jnp, keys, attack=shift, batch_size=32, num_steps=6,
      aux_fn=lambda model, xa, y: jnp.mean(jnp.argmax(model(xa), -1) == y)))
  state, (losses, accs) = run(init(jax.random.key(0)))
  ref = init(jax.random.key(0))
  for t in range(6):  # the same steps by hand: batch t of keys[0], attack key fold_in(keys[1], t), rng fold_in(keys[2], t)
    x, y = batch_at(digits_jnp, jnp.int32(t), keys[0], 32)
    x_adv = shift(None, x, y, jax.random.fold_in(keys[1], t))
    model = nnx.merge(graphdef, ref.params, ref.model_state)
    np.testing.assert_allclose(accs[t], jnp.mean(jnp.argmax(model(x_adv), -1) == y), atol=1e-6)
    ref, metrics = step(ref, (x_adv, y), jax.random.fold_in(keys[2], t))
    np.testing.assert_allclose(losses[t], metrics["loss"], rtol=1e-5)
  chex.assert_trees_all_close(state.params, ref.params, rtol=1e-5, atol=1e-6)


def test_evaluate_averages_per_token_metrics_of_a_sequence_model():
  """A sequence model's per-token losses (batch, T) are averaged per example, then over the (padded) dataset."""

  class Seq(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(7, 7, rngs=rngs)

    def __call__(self, x):
      return self.embed(x)  # (batch, T, vocab) logits

  graphdef, init = train.make_init(Seq, optax.sgd(0.1))
  state = init(jax.random.key(0))
  x = jax.random.randint(jax.random.key(1), (10, 5), 0, 7)
  y = jnp.roll(x, -1, axis=1)
  got = train.evaluate(graphdef, state, x, y, batch_size=4)  # 3 chunks, 2 padded examples
  logits = nnx.merge(graphdef, state.params, state.model_state)(x)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  np.testing.assert_allclose(got["loss"], want, rtol=1e-6)
  np.testing.assert_allclose(got["accuracy"], (jnp.argmax(logits, -1) == y).mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="leading batch axis"):
    train.evaluate(graphdef, state, x, y, batch_size=4, metrics_fn=lambda logits, labels: {"s": logits.sum()})
