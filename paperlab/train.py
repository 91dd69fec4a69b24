"""A pure train/eval step factory shared by experiments, tests and notebooks.

The model is split once into a static ``graphdef`` and array state (``nnx.split``); every function here is a pure
function of that state, so it can be ``jax.jit``-ed, ``jax.vmap``-ed over a leading trial axis (seeds,
hyperparameters) and sharded over a device mesh.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab.data.batching import batch_at
from paperlab.optim.sharpness import grad_fn_at

LossFn = Callable[[nnx.Module, Any, jax.Array], Any]


class TrainState(NamedTuple):
  """Everything a training run carries between steps (a pytree; checkpoint it as it is).

  Attributes:
    step: int32 scalar, number of steps taken.
    params: trainable parameters (``nnx.Param`` values) as a plain nested dict.
    model_state: the model's other variables (e.g. BatchNorm statistics) as a plain nested dict.
    opt_state: the optimizer state.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: optax.OptState


def make_init(model_fn: Callable[[nnx.Rngs], nnx.Module], optimizer: optax.GradientTransformation
              ) -> tuple[nnx.GraphDef, Callable[[jax.Array], TrainState]]:
  """``(graphdef, init)`` where ``init(key) -> TrainState`` is pure (so ``jax.vmap(init)(keys)`` gives a
  stack of independently initialized trials).

  Args:
    model_fn: builds the model from ``nnx.Rngs``, e.g. ``lambda rngs: MLP(64, [128], 10, rngs=rngs)``.
    optimizer: any optax transformation.
  """
  graphdef = nnx.split(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), nnx.Param, ...)[0]

  def init(key: jax.Array) -> TrainState:
    _, params, rest = nnx.split(model_fn(nnx.Rngs(key)), nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    return TrainState(jnp.zeros((), jnp.int32), params, rest, optimizer.init(params))

  return graphdef, init


def _split_loss_output(out) -> tuple[jax.Array, dict]:
  loss, aux = out if isinstance(out, tuple) else (out, {})
  if not isinstance(aux, dict):
    raise TypeError(f"loss_fn must return a scalar loss or (loss, dict_of_metrics), got aux of type {type(aux)}.")
  if jnp.shape(loss) != ():
    raise ValueError(f"loss_fn must return a scalar loss (mean over the batch), got shape {jnp.shape(loss)}.")
  return loss, aux


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    example_loss_fn: Callable[[nnx.Module, Any, jax.Array], jax.Array] | None = None,
                    output_fn: Callable[[nnx.Module, Any, jax.Array], jax.Array] | None = None,
                    output_loss: Callable[[jax.Array, Any], jax.Array] | None = None,
                    ) -> Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]:
  """Build ``step(state, batch, rng) -> (state, metrics)``, pure and un-jitted (jit, vmap or scan it).

  Args:
    graphdef: the static half of ``nnx.split(model)`` (from :func:`make_init`).
    loss_fn: ``loss_fn(model, batch, rng) -> loss`` or ``-> (loss, metrics)``, where ``loss`` is a scalar;
      the model is in training mode.
    optimizer: any optax transformation. A ``GradientTransformationExtraArgs`` (every ``optax.chain``) also
      receives ``value=loss`` (MoMo, reduce-on-plateau) and ``grad_fn``: ``grad_fn(params) -> grads`` on the
      *same* batch and rng, for methods that need a second gradient (the SAM family, AWP). ``grad_fn`` is a
      :class:`paperlab.optim.GradFnAt` (it also carries the step's params and gradient), so those methods raise
      when something chained before them changed the gradient, and work under ``optax.masked``.
    example_loss_fn: optional ``example_loss_fn(model, batch, rng) -> (batch,)`` per-example losses. When given,
      the optimizer's update also receives ``example_loss_fn=``: ``params -> per-example losses`` on the same
      batch and rng (RWP's loss-stationary-condition filter).
    output_fn: optional ``output_fn(model, batch, rng) -> outputs`` (e.g. the logits or predictions). Given
      together with ``output_loss(outputs, batch) -> scalar``, the update also receives ``output_fn=``:
      ``params -> outputs`` and ``output_loss=``: ``outputs -> scalar`` on the same batch (Gauss-Newton methods
      such as EGN, which need the Jacobian of the outputs and the Hessian of the loss in the outputs).

    These extra arguments are passed only when given, so optimizers that do not use them never see them (every
    ``GradientTransformationExtraArgs`` must ignore extra arguments it does not know, as in ``optax.chain``).

  Returns:
    The step function. ``metrics`` holds ``loss``, ``grad_norm`` and whatever ``loss_fn`` reported.
  """
  pass_extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)
  if (output_fn is None) != (output_loss is None):
    raise ValueError("output_fn and output_loss must be given together (the optimizer needs both), got "
                     f"output_fn={output_fn!r}, output_loss={output_loss!r}.")
  if not pass_extra and (example_loss_fn is not None or output_fn is not None):
    raise TypeError("example_loss_fn / output_fn are passed to the optimizer's update as extra arguments, so the "
                    "optimizer must be an optax.GradientTransformationExtraArgs (e.g. an optax.chain), got "
                    f"{type(optimizer).__name__}.")

  def _model(params, model_state):
    model = nnx.merge(graphdef, params, model_state)
    model.train()
    return model

  def compute_loss(params, model_state, batch, rng):
    model = _model(params, model_state)
    loss, aux = _split_loss_output(loss_fn(model, batch, rng))
    new_model_state = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])
    return loss, (aux, new_model_state)

  def step(state: TrainState, batch, rng: jax.Array) -> tuple[TrainState, dict]:
    (loss, (aux, model_state)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params, state.model_state, batch, rng)
    if pass_extra:
      def grad_fn(params):
        return jax.grad(lambda p: compute_loss(p, state.model_state, batch, rng)[0])(params)
      # Anchored at (params, grads) so the grad_fn users can check that nothing before them changed the gradient
      # and can evaluate grad_fn at the full parameters under optax.masked (paperlab.optim.sharpness's contract).
      grad_fn = grad_fn_at(grad_fn, state.params, grads)
      extra = {}
      if example_loss_fn is not None:
        extra["example_loss_fn"] = lambda params: example_loss_fn(_model(params, state.model_state), batch, rng)
      if output_fn is not None:
        extra["output_fn"] = lambda params: output_fn(_model(params, state.model_state), batch, rng)
        extra["output_loss"] = lambda outputs: output_loss(outputs, batch)
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params, grad_fn=grad_fn, value=loss,
                                            **extra)
    else:
      updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    return TrainState(state.step + 1, params, model_state, opt_state), metrics

  return step


def run_steps(step_fn: Callable, state: TrainState, data, key: jax.Array, *, batch_size: int, num_steps: int
              ) -> tuple[TrainState, dict]:
  """Take ``num_steps`` steps as one ``lax.scan``; returns the final state and per-step metrics.

  The batch and rng of step ``s`` are pure functions of ``(key, s)`` (:func:`paperlab.data.batch_at`), so a
  run resumed from a checkpoint at step ``s`` continues exactly as an uninterrupted run would. Jit it with
  ``batch_size`` and ``num_steps`` static; vmap it over stacked states and keys to run trials together.
  """
  data_key, step_key = jax.random.split(key)

  def body(state, _):
    batch = batch_at(data, state.step, data_key, batch_size)
    return step_fn(state, batch, jax.random.fold_in(step_key, state.step))

  return jax.lax.scan(body, state, None, length=num_steps)


def run_adversarial_steps(graphdef: nnx.GraphDef, step_fn: Callable, state: TrainState, data,
                          keys: tuple[jax.Array, jax.Array, jax.Array], *,
                          attack: Callable[[nnx.Module, jax.Array, jax.Array, jax.Array], jax.Array],
                          batch_size: int, num_steps: int,
                          aux_fn: Callable[[nnx.Module, jax.Array, jax.Array], Any] | None = None
                          ) -> tuple[TrainState, tuple[jax.Array, Any]]:
  """Adversarial training (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
  arXiv:1706.06083, Eq. 2.1): every step replaces its batch's inputs by ``attack(model, x, y, key)`` at the current
  weights (e.g. :func:`paperlab.optim.pgd_linf`) and takes ``step_fn`` on ``(x_adv, y)``; one ``lax.scan``.

  ``keys = (data_key, attack_key, rng_key)``: step ``t`` trains on :func:`paperlab.data.batch_at`'s batch ``t`` of
  ``data_key``, attacks with ``fold_in(attack_key, t)`` and steps with ``fold_in(rng_key, t)``.
  ``aux_fn(model, x_adv, y)`` (optional) is recorded per step at the pre-step weights. Returns the final state and
  ``(per-step losses, per-step aux or None)``. Jittable and vmappable over states and keys.
  """
  data_key, attack_key, rng_key = keys

  def body(state, t):
    x, y = batch_at(data, t, data_key, batch_size)
    model = nnx.merge(graphdef, state.params, state.model_state)
    x_adv = attack(model, x, y, jax.random.fold_in(attack_key, t))
    aux = None if aux_fn is None else aux_fn(model, x_adv, y)
    state, metrics = step_fn(state, (x_adv, y), jax.random.fold_in(rng_key, t))
    return state, (metrics["loss"], aux)

  return jax.lax.scan(body, state, jnp.arange(num_steps))


def mean_loss(per_example_loss: Callable[[jax.Array, jax.Array], jax.Array]) -> LossFn:
  """Adapt an ``optax.losses``-style ``loss(logits, labels) -> per-example`` to a ``loss_fn(model, (x, y), rng)``
  that returns the batch mean."""
  return lambda model, batch, rng: jnp.mean(per_example_loss(model(batch[0]), batch[1]))


def fit_full_batch(model_fn: Callable[[nnx.Rngs], nnx.Module], optimizer: optax.GradientTransformation,
                   loss_fn: LossFn, data, keys: jax.Array, *, num_steps: int,
                   evaluate_fn: Callable[[nnx.GraphDef, TrainState], Any] | None = None) -> tuple[Any, dict]:
  """Train one model per key on the whole of ``data`` for ``num_steps`` steps, all keys as one vmapped program.

  The loop of the small reproductions: key ``k`` initializes its model and is the step rng throughout. Returns
  ``(evaluate_fn(graphdef, final_state) or final_state, per-step metrics)``, each with a leading key axis;
  ``evaluate_fn`` runs inside the same compiled program.
  """
  graphdef, init = make_init(model_fn, optimizer)
  step = make_train_step(graphdef, loss_fn, optimizer)

  @jax.jit
  def run(key):
    state, metrics = jax.lax.scan(lambda s, _: step(s, data, key), init(key), None, length=num_steps)
    return (state if evaluate_fn is None else evaluate_fn(graphdef, state)), metrics

  return jax.vmap(run)(keys)


def compare_losses(per_example_losses: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]], dataset, *,
                   widths: Sequence[int] = (256,), learning_rate: float = 3e-3, num_steps: int = 300,
                   num_seeds: int = 2, seed: int = 0,
                   evaluate_fn: Callable[[nnx.GraphDef, TrainState], Any] | None = None) -> dict[str, tuple]:
  """The loss-comparison loop of the reproductions: per loss, an MLP ``in -> widths -> classes`` trained by
  full-batch Adam on ``dataset``'s train split for ``num_steps`` steps, ``num_seeds`` seeds as one vmapped program
  (:func:`fit_full_batch`; the seeds' keys are ``jax.random.split(PRNGKey(seed), num_seeds)`` for every loss, so
  the arms share initializations).

  Args:
    per_example_losses: name -> ``loss(logits, labels) -> (batch,)`` (optax.losses style).
    dataset: a :class:`paperlab.data.Dataset` (inputs ``(N, features)``).
    widths, learning_rate, num_steps, num_seeds, seed: the model, optimizer and seeds.
    evaluate_fn: ``evaluate_fn(graphdef, state)``, run in the compiled program; default: the test accuracy.

  Returns:
    name -> ``(evaluation, train_losses)`` as NumPy: the evaluation per seed (leading axis ``num_seeds``) and the
    per-step training losses ``(num_seeds, num_steps)``.
  """
  from paperlab.models import MLP  # pylint: disable=g-import-not-at-top
  x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  if evaluate_fn is None:
    evaluate_fn = lambda graphdef, state: evaluate(graphdef, state, dataset.x_test, dataset.y_test)["accuracy"]
  model_fn = lambda rngs: MLP(x.shape[-1], list(widths), dataset.num_classes, rngs=rngs)
  keys = jax.random.split(jax.random.PRNGKey(seed), num_seeds)
  out = {}
  for name, loss in per_example_losses.items():
    result, metrics = fit_full_batch(model_fn, optax.adam(learning_rate), mean_loss(loss), (x, y), keys,
                                     num_steps=num_steps, evaluate_fn=evaluate_fn)
    out[name] = (jax.tree.map(np.asarray, result), np.asarray(metrics["loss"]))
  return out


def per_class_recall(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Recall of the argmax prediction per class, ``(num_classes,)`` (0 for a class with no examples); its mean is
  the balanced accuracy. Jittable."""
  hits = jax.ops.segment_sum((jnp.argmax(logits, -1) == labels).astype(jnp.float32), labels, num_classes)
  return hits / jnp.maximum(jax.ops.segment_sum(jnp.ones_like(labels, jnp.float32), labels, num_classes), 1.0)


def predict(graphdef: nnx.GraphDef, state: TrainState, x: jax.Array) -> jax.Array:
  """The model's outputs on ``x`` in evaluation mode (jittable, vmappable over stacked states)."""
  model = nnx.merge(graphdef, state.params, state.model_state)
  model.eval()
  return model(x)


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict:
  """Per-example cross-entropy and correctness, reduced by :func:`evaluate`."""
  return {
      "loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      "accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
  }


def evaluate(graphdef: nnx.GraphDef, state: TrainState, x: jax.Array, y: jax.Array, *,
             metrics_fn: Callable[[jax.Array, jax.Array], dict] = classification_metrics,
             batch_size: int = 1024) -> dict:
  """Mean of ``metrics_fn(model(x), y)`` over a dataset, in evaluation mode, in chunks of ``batch_size``.

  ``metrics_fn`` returns per-example values of shape ``(batch,)``, or with trailing axes (e.g. ``(batch, T)``
  per-token losses of a sequence model), which are averaged per example first: every example weighs the same.
  Jittable (``metrics_fn`` and ``batch_size`` static) and vmappable over stacked states.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must have the same number of examples, got {x.shape[0]} and {y.shape[0]}.")
  n = x.shape[0]
  chunks = -(-n // batch_size)
  pad = chunks * batch_size - n
  xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(chunks, batch_size, *x.shape[1:])
  ys = jnp.pad(y, [(0, pad)] + [(0, 0)] * (y.ndim - 1)).reshape(chunks, batch_size, *y.shape[1:])
  model = nnx.merge(graphdef, state.params, state.model_state)
  model.eval()
  per_chunk = jax.lax.map(lambda xy: metrics_fn(model(xy[0]), xy[1]), (xs, ys))
  valid = (jnp.arange(chunks * batch_size) < n).astype(jnp.float32)

  def mean(m):
    if m.shape[:2] != (chunks, batch_size):
      raise ValueError(f"metrics_fn must return per-example values with a leading batch axis of {batch_size}, "
                       f"got shape {m.shape[1:]}.")
    per_example = m.reshape(chunks * batch_size, -1).mean(axis=-1)
    return jnp.sum(per_example * valid) / n

  return jax.tree.map(mean, per_chunk)


def classification_loss(model: nnx.Module, batch, rng: jax.Array) -> tuple[jax.Array, dict]:
  """Mean softmax cross-entropy of ``model(x)`` on a batch ``(x, y)`` of integer labels, plus accuracy."""
  x, y = batch
  logits = model(x)
  m = classification_metrics(logits, y)
  return m["loss"].mean(), {"accuracy": m["accuracy"].mean()}
