"""The data-collection part of Hestness et al.'s learning curves [529]: paperlab.scaling.data_scaling trains on the
same subsets as sklearn.model_selection.learning_curve (which fits on the first n_train indices of each training
split, shuffle=False) and gives the same test errors, with the seeds' shuffles passed to sklearn as its CV splits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import learning_curve

from paperlab import data, scaling


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_data_scaling_matches_sklearn_learning_curve():
  ds = data.digits(test_fraction=0.2, seed=0)
  x = np.concatenate([ds.x_train, ds.x_test])
  y = np.concatenate([ds.y_train, ds.y_test])
  n_pool = len(ds.x_train)
  test_idx = np.arange(n_pool, len(x))
  sizes, seeds = [40, 80, 160], (0, 1)

  def train_fn(idx, seed):
    del seed
    model = LogisticRegression(max_iter=200).fit(ds.x_train[idx], ds.y_train[idx])
    return 1.0 - model.score(ds.x_test, ds.y_test)

  ours = scaling.data_scaling(train_fn, sizes, num_examples=n_pool, seeds=seeds)
  cv = [(order, test_idx) for order in scaling.nested_subsets(n_pool, seeds)]
  n_train, _, test_scores = learning_curve(LogisticRegression(max_iter=200), x, y, train_sizes=sizes, cv=cv,
                                           scoring="accuracy", shuffle=False)
  np.testing.assert_array_equal(n_train, sizes)
  np.testing.assert_allclose(ours, 1.0 - test_scores.T, rtol=0, atol=1e-12)
  assert np.all(np.diff(ours.mean(0)) < 0)  # more data, lower error: the subsets really grow
