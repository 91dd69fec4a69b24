"""NOISY-DIGITS: the setting shared by the noisy-label loss reproductions (NCE+RCE [198], comp-sum [167], ALDR-KL [94]).

scikit-learn digits with ``noise_rate`` of the *training* labels flipped uniformly to another class (symmetric
noise; test labels clean), a validation split carved out of the noisy training split (its labels noisy too: the
data a practitioner has; under symmetric noise, noisy-label accuracy is an increasing affine function of clean
accuracy, so it ranks grid points the same way in expectation), and an MLP ``64 -> width -> 10`` trained by
full-batch Adam for ``num_steps`` steps (= epochs), long enough for cross-entropy to memorise the noise.

:func:`compare_losses` runs the shared protocol (:mod:`paperlab.runner.protocol`) over the losses: each gets the
same Adam learning-rate grid, chosen on noisy-validation accuracy, the seeds as one vmapped program per grid point,
and one read of the clean test split per loss::

    comparison = noisy_digits.compare_losses({"ce": ce, "nce_rce": nce_rce}, noise_rate=0.4,
                                             learning_rates=(1e-3, 3e-3, 1e-2), seeds=range(3), ctx=ctx)
    comparison.judge(lambda m, b: m["test_accuracy"] >= b["test_accuracy"] + 0.05, method="nce_rce", baseline="ce")
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from paperlab import data, models, train
from paperlab.runner import protocol

__all__ = ["compare_losses", "noisy_digits"]


def noisy_digits(*, noise_rate: float, seed: int = 0, val_fraction: float = 0.2) -> tuple[tuple, tuple, tuple]:
  """``(fit, val, test)`` as ``(x, y)`` device arrays: digits with ``noise_rate`` symmetric noise on the training
  labels, ``val_fraction`` of the (noisy) training split held out stratified for validation, the test split
  clean."""
  ds = data.with_label_noise(data.digits(seed=seed), rate=noise_rate, kind="symmetric", seed=seed)
  fit, val = data.stratified_split(ds.y_train, val_fraction, seed)
  pair = lambda x, y: (jnp.asarray(x), jnp.asarray(y))
  return pair(ds.x_train[fit], ds.y_train[fit]), pair(ds.x_train[val], ds.y_train[val]), pair(ds.x_test, ds.y_test)


def compare_losses(losses: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]], *, noise_rate: float,
                   learning_rates: Sequence[float], seeds: Sequence[int], width: int = 256, num_steps: int = 300,
                   seed: int = 0, ctx=None) -> protocol.Comparison:
  """The protocol over per-example ``losses`` (name -> ``loss(logits, int_labels)``) on NOISY-DIGITS.

  Every loss is an arm with the grid ``[{"lr": lr} for lr in learning_rates]``; the test metric is the clean
  ``test_accuracy`` per seed. ``seed`` fixes the split and the noise; ``seeds`` the initialisations. With ``ctx``
  the seed-mean training curve of every grid point is logged.
  """
  fit_split, val_split, test_split = noisy_digits(noise_rate=noise_rate, seed=seed)
  model_fn = lambda rngs: models.MLP(fit_split[0].shape[1], [width], 10, rngs=rngs)
  graphdef = train.make_init(model_fn, optax.identity())[0]
  accuracy = jax.jit(jax.vmap(lambda s, x, y: jnp.mean(jnp.argmax(train.predict(graphdef, s, x), -1) == y),
                              (0, None, None)))

  @functools.cache
  def program(name: str):
    """One compiled program per loss: the learning rate is an argument (a traced scalar, the same arithmetic as
    ``optax.adam(lr)`` with ``lr`` a constant), so the grid points share it; the seeds are its vmapped axis."""
    loss_fn = train.mean_loss(losses[name])

    def run(lr, key):
      opt = optax.adam(lr)
      init = train.make_init(model_fn, opt)[1]
      step = train.make_train_step(graphdef, loss_fn, opt)
      return jax.lax.scan(lambda s, _: step(s, fit_split, key), init(key), None, length=num_steps)

    return jax.jit(jax.vmap(run, (None, 0)))

  def fit(arm, hparams, arm_seeds):
    states, curves = program(arm.name)(jnp.float32(hparams["lr"]), jax.vmap(jax.random.key)(jnp.asarray(arm_seeds)))
    if ctx is not None:
      ctx.log_curve(f"{arm.name}/lr={hparams['lr']}/train_loss", np.asarray(curves["loss"]).mean(0),
                    every=max(num_steps // 5, 1))
    return states

  grid = [{"lr": float(lr)} for lr in learning_rates]
  return protocol.compare([protocol.Arm(name, grid) for name in losses], seeds, fit,
                          validate=lambda states: accuracy(states, *val_split),
                          test=lambda states: {"test_accuracy": accuracy(states, *test_split)})
