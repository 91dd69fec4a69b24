"""The DIGITS-SOUP substrate shared by the soup-family reproductions (soups, DiWA, DAREx, BCWI).

The merging catalogue's DIGITS-SOUP: scikit-learn digits with a validation split carved out of the training split
(stratified), an MLP 64-width-width-10, and base models pre-trained briefly (Adam, a few steps) on the first part of
the fit split; the experiments then fine-tune from the bases with :func:`paperlab.merge.finetune_grid`.

    soup = digits_soup(seed=0, val_fraction=0.2, width=128)
    inits, bases = soup.pretrain(jax.random.key(0), 3, fraction=0.3, steps=40, batch_size=64)

Helpers that fine-tune models for experiments live here, beside the protocol helper, not in :mod:`paperlab.merge`
(which stays data-free). Importing this module imports JAX.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from paperlab import data, merge, models, train

__all__ = ["DigitsSoup", "digits_soup"]

PyTree = Any


class DigitsSoup(NamedTuple):
  """The split digits and the MLP of DIGITS-SOUP.

  ``fit``, ``val`` and ``test`` are ``(x, y)`` device arrays; ``x_test_raw`` is the test inputs as NumPy (to build
  shifted or noisy test sets from); ``graphdef`` and ``model_state`` are the MLP's ``nnx.split`` parts and ``init``
  maps a key to a :class:`paperlab.train.TrainState` (with an ``optax.identity`` state).
  """

  fit: tuple
  val: tuple
  test: tuple
  x_test_raw: np.ndarray
  graphdef: nnx.GraphDef
  model_state: PyTree
  init: Callable[[jax.Array], train.TrainState]

  def pretrain(self, key: jax.Array, num: int, *, fraction: float, steps: int, batch_size: int,
               learning_rate: float = 1e-3) -> tuple[PyTree, PyTree]:
    """``num`` bases: initialised from ``jax.random.split(key, num)`` and trained with Adam(``learning_rate``) for
    ``steps`` steps on the first ``fraction`` of the fit split (data keys ``split(fold_in(key, 1), num)``), all in
    one vmapped program.

    Returns:
      ``(inits, bases)``: the initial and the trained parameters, stacked along a leading ``num`` axis.
    """
    if not isinstance(num, int) or num < 1:
      raise ValueError(f"num must be an integer >= 1, got {num!r}.")
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"fraction must be in (0, 1], got {fraction!r}.")
    inits = jax.vmap(self.init)(jax.random.split(key, num)).params
    x, y = self.fit
    n = int(fraction * x.shape[0])
    hp = jnp.asarray([[learning_rate, 0.0, 0.0, 0.0]] * num)
    bases = merge.finetune_grid(self.graphdef, inits, self.model_state, (x[:n], y[:n]), hp,
                                jax.random.split(jax.random.fold_in(key, 1), num), num_steps=steps,
                                batch_size=batch_size, params_axis=0)
    return inits, bases

  def accuracy_fn(self) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """A jitted ``accuracy(params, x, y)`` of the MLP (eval mode)."""
    graphdef, model_state = self.graphdef, self.model_state

    @jax.jit
    def accuracy(params, xs, ys):
      model = nnx.merge(graphdef, params, model_state)
      model.eval()
      return jnp.mean(jnp.argmax(model(xs), -1) == ys)

    return accuracy


def digits_soup(*, seed: int = 0, val_fraction: float = 0.2, width: int = 128) -> DigitsSoup:
  """DIGITS-SOUP's data and model: ``paperlab.data.digits(seed=seed)``, a stratified validation split of
  ``val_fraction`` of the training split (seeded by ``seed``), and an MLP 64-``width``-``width``-10."""
  ds = data.digits(seed=seed)
  tr, va = data.stratified_split(ds.y_train, val_fraction, seed)
  as_pair = lambda xs, ys: (jnp.asarray(xs), jnp.asarray(ys))
  graphdef, init = train.make_init(lambda r: models.MLP(64, [width, width], ds.num_classes, rngs=r),
                                   optax.identity())
  model_state = jax.tree.map(lambda a: a[0], jax.vmap(init)(jax.random.split(jax.random.key(0), 1)).model_state)
  return DigitsSoup(as_pair(ds.x_train[tr], ds.y_train[tr]), as_pair(ds.x_train[va], ds.y_train[va]),
                    as_pair(ds.x_test, ds.y_test), np.asarray(ds.x_test), graphdef, model_state, init)
