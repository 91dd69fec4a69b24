"""NOISY-DIGITS: the noisy-label reproductions' shared setting."""

from __future__ import annotations

import numpy as np

from paperlab import data
from paperlab.runner import noisy_digits


def test_noise_is_on_fit_and_validation_labels_only():
  fit, val, test = noisy_digits.noisy_digits(noise_rate=0.4, seed=0)
  clean = data.digits(seed=0)
  assert fit[0].shape[0] + val[0].shape[0] == clean.x_train.shape[0]
  np.testing.assert_array_equal(np.asarray(test[1]), clean.y_test)
  _, flipped = data.noisy_labels(clean.y_train, rate=0.4, num_classes=10, kind="symmetric", seed=0)
  assert abs(flipped.mean() - 0.4) < 0.03


def test_compare_losses_gives_every_loss_the_same_grid_and_seeds():
  import optax  # pylint: disable=g-import-not-at-top
  ce = optax.softmax_cross_entropy_with_integer_labels
  comparison = noisy_digits.compare_losses({"a": ce, "b": ce}, noise_rate=0.4, learning_rates=(1e-3, 3e-3),
                                           seeds=range(3), width=8, num_steps=3)
  assert comparison.seeds == (0, 1, 2)
  for arm in comparison.arms.values():
    assert len(arm.validation) == 2 and arm.test["test_accuracy"].shape == (3,)
  np.testing.assert_allclose(comparison["a"].test["test_accuracy"], comparison["b"].test["test_accuracy"])
