"""Synthetic tasks the papers need: teacher-student regression, long-tailed and noisy-label variants, a
multi-task toy. Every generator is a pure function of its seed."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from paperlab.data.digits import Dataset


def teacher_student(
    *,
    n_train: int = 1024,
    n_test: int = 1024,
    d_in: int = 16,
    d_out: int = 1,
    teacher_width: int = 32,
    noise: float = 0.1,
    seed: int = 0,
) -> Dataset:
  """Regression targets from a random one-hidden-layer tanh teacher, ``y = W2 tanh(W1 x / sqrt(d_in)) /
  sqrt(width) + noise * eps`` with Gaussian inputs. Labels are float32 of shape ``(N, d_out)``."""
  for name, v in (("n_train", n_train), ("n_test", n_test), ("d_in", d_in), ("d_out", d_out),
                  ("teacher_width", teacher_width)):
    if int(v) < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}.")
  if noise < 0:
    raise ValueError(f"noise must be >= 0, got {noise!r}.")
  rng = np.random.default_rng(seed)
  w1 = rng.standard_normal((d_in, teacher_width))
  w2 = rng.standard_normal((teacher_width, d_out))

  def sample(n):
    x = rng.standard_normal((n, d_in))
    y = np.tanh(x @ w1 / np.sqrt(d_in)) @ w2 / np.sqrt(teacher_width)
    return x.astype(np.float32), (y + noise * rng.standard_normal(y.shape)).astype(np.float32)

  x_tr, y_tr = sample(n_train)
  x_te, y_te = sample(n_test)
  return Dataset(x_tr, y_tr, x_te, y_te)


def long_tail_counts(num_classes: int, max_count: int, imbalance_ratio: float) -> np.ndarray:
  """Exponential class profile ``n_c = max_count * ratio^(-c/(K-1))`` (Cui et al., 2019), largest first."""
  if imbalance_ratio < 1:
    raise ValueError(f"imbalance_ratio must be >= 1 (max/min class size), got {imbalance_ratio!r}.")
  c = np.arange(num_classes)
  return np.maximum(1, np.floor(max_count * imbalance_ratio ** (-c / max(num_classes - 1, 1)))).astype(int)


def imbalanced(data: Dataset, *, imbalance_ratio: float = 10.0, seed: int = 0) -> Dataset:
  """Subsample the training split to an exponential long tail (class 0 largest, class K-1 smallest).

  The test split is left balanced, as in the long-tail literature, so per-class recall is measurable.
  """
  rng = np.random.default_rng(seed)
  k = data.num_classes
  per_class = np.bincount(data.y_train, minlength=k)
  counts = long_tail_counts(k, int(per_class.min()), imbalance_ratio)
  keep = []
  for c in range(k):
    idx = np.flatnonzero(data.y_train == c)
    keep.append(rng.choice(idx, size=counts[c], replace=False))
  keep = np.sort(np.concatenate(keep))
  return Dataset(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test)


def noisy_labels(
    labels: np.ndarray,
    *,
    rate: float,
    num_classes: int,
    kind: str = "symmetric",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Corrupt integer labels at ``rate``.

  ``symmetric``: each label flips with probability ``rate`` to a class drawn uniformly from the *other*
  classes (the convention of Ma et al., 2020, "Normalized Loss Functions..."). ``asymmetric``: each label flips
  with probability ``rate`` to the next class ``(c + 1) mod K`` (class-dependent pair flipping).

  Returns:
    ``(noisy_labels, flipped)`` where ``flipped`` is a boolean mask of corrupted examples.
  """
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"rate must lie in [0, 1), got {rate!r}.")
  if kind not in ("symmetric", "asymmetric"):
    raise ValueError(f"kind must be 'symmetric' or 'asymmetric', got {kind!r}.")
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}].")
  rng = np.random.default_rng(seed)
  flip = rng.random(labels.shape) < rate
  if kind == "symmetric":
    offset = rng.integers(1, num_classes, size=labels.shape)
  else:
    offset = np.ones_like(labels)
  noisy = np.where(flip, (labels + offset) % num_classes, labels).astype(labels.dtype)
  return noisy, flip


def with_label_noise(data: Dataset, *, rate: float, kind: str = "symmetric", seed: int = 0) -> Dataset:
  """The dataset with its *training* labels corrupted by :func:`noisy_labels`; test labels stay clean."""
  noisy, _ = noisy_labels(data.y_train, rate=rate, num_classes=data.num_classes, kind=kind, seed=seed)
  return data._replace(y_train=noisy)


class MultiTask(NamedTuple):
  """Inputs shared by all tasks and one target array per task name."""

  x_train: np.ndarray
  y_train: dict
  x_test: np.ndarray
  y_test: dict


def multitask_toy(
    *,
    n_train: int = 1024,
    n_test: int = 1024,
    d_in: int = 16,
    noise_scales: tuple[float, float] = (0.1, 1.0),
    num_classes: int = 4,
    seed: int = 0,
) -> MultiTask:
  """Three tasks on shared Gaussian inputs (after Kendall et al., 2018):

  - ``reg_a`` and ``reg_b``: regressions on related random features with very different noise levels
    (``noise_scales``), so a fixed equal weighting is wrong by design;
  - ``cls``: a ``num_classes``-way classification by argmax of a random linear readout.
  """
  if len(noise_scales) != 2 or min(noise_scales) < 0:
    raise ValueError(f"noise_scales must be two non-negative floats, got {noise_scales!r}.")
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((d_in, 3)) / np.sqrt(d_in)
  wc = rng.standard_normal((d_in, num_classes))

  def sample(n):
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    h = np.tanh(x @ w)
    ys = {
        "reg_a": (h[:, 0] + h[:, 1] + noise_scales[0] * rng.standard_normal(n)).astype(np.float32),
        "reg_b": (h[:, 0] - h[:, 2] + noise_scales[1] * rng.standard_normal(n)).astype(np.float32),
        "cls": np.argmax(x @ wc, axis=-1).astype(np.int32),
    }
    return x, ys

  x_tr, y_tr = sample(n_train)
  x_te, y_te = sample(n_test)
  return MultiTask(x_tr, y_tr, x_te, y_te)
