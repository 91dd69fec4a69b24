"""DIGITS fit / validation / test splits and a label derangement, shared by the pruning and PEFT reproductions
(GraNet [15], PERP [16], asymmetric LoRA [381], Bone [6]).

scikit-learn digits split 70 / 15 / 15 (stratified, seed 0): the test split once by :func:`paperlab.data.digits`,
the validation split carved out of its training split by :func:`paperlab.data.stratified_split`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from paperlab import data

__all__ = ["fit_val_test", "label_derangement"]


def fit_val_test(*, test_fraction: float = 0.15, val_fraction: float = 0.15, seed: int = 0) -> tuple:
  """``((x, y), (x_val, y_val), (x_test, y_test))`` as device arrays; the fractions are of the whole dataset."""
  ds = data.digits(test_fraction=test_fraction, seed=seed)
  fit, val = data.stratified_split(ds.y_train, val_fraction / (1.0 - test_fraction), seed=seed)
  pair = lambda x, y: (jnp.asarray(x), jnp.asarray(y))
  return pair(ds.x_train[fit], ds.y_train[fit]), pair(ds.x_train[val], ds.y_train[val]), pair(ds.x_test, ds.y_test)


def label_derangement(n: int, seed: int) -> np.ndarray:
  """A permutation of ``range(n)`` with no fixed point (every class moves), drawn reproducibly from ``seed``: the
  relabelling that turns digits into a shifted task for fine-tuning."""
  rng = np.random.default_rng(seed)
  while True:
    p = rng.permutation(n)
    if np.all(p != np.arange(n)):
      return p.astype(np.int32)
