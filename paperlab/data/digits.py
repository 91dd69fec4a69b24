"""scikit-learn's bundled 8x8 digits, split deterministically and normalized."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Dataset(NamedTuple):
  """A supervised split held as host NumPy arrays (float32 inputs, int32 labels)."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def num_classes(self) -> int:
    return int(max(self.y_train.max(), self.y_test.max()) + 1)


def _check_fraction(name: str, value: float) -> None:
  if not 0.0 < value < 1.0:
    raise ValueError(f"{name} must lie in (0, 1), got {value!r}.")


def digits(
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    as_images: bool = False,
    standardize: bool = True,
) -> Dataset:
  """Deterministic stratified train/test split of scikit-learn's digits (1797 images, 10 classes).

  Pixels (0..16) are scaled to [0, 1]; with ``standardize`` each feature is then centred and scaled by the
  *training* mean and standard deviation, so no test statistic leaks into training.

  Args:
    test_fraction: fraction of examples held out, in (0, 1).
    seed: seed of the split; the same seed gives the same split on every machine.
    as_images: return inputs shaped ``(N, 8, 8, 1)`` (NHWC, for ``paperlab.models.CNN``) instead of ``(N, 64)``.
    standardize: standardize features with training statistics.

  Returns:
    A :class:`Dataset` with float32 inputs and int32 labels.
  """
  try:
    from sklearn.datasets import load_digits
  except ImportError as e:
    raise ImportError("paperlab.data.digits() reads scikit-learn's bundled digits: pip install scikit-learn "
                      "(a dependency of paperlab)") from e

  _check_fraction("test_fraction", test_fraction)
  bunch = load_digits()
  x = bunch.data.astype(np.float32) / 16.0
  y = bunch.target.astype(np.int32)
  train_idx, test_idx = stratified_split(y, test_fraction, seed)
  x_train, x_test = x[train_idx], x[test_idx]
  if standardize:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0) + 1e-3  # constant border pixels have zero variance
    x_train = (x_train - mean) / std
    x_test = (x_test - mean) / std
  if as_images:
    x_train = x_train.reshape(-1, 8, 8, 1)
    x_test = x_test.reshape(-1, 8, 8, 1)
  return Dataset(x_train.astype(np.float32), y[train_idx], x_test.astype(np.float32), y[test_idx])


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Index arrays ``(train, test)`` holding out ``test_fraction`` of every class, sorted, seeded."""
  _check_fraction("test_fraction", test_fraction)
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(y):
    idx = np.flatnonzero(y == c)
    rng.shuffle(idx)
    n_test = int(round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def split_by_class(data: Dataset, groups: Sequence[Sequence[int]]) -> list[Dataset]:
  """Split a dataset into tasks, one per group of classes (labels are kept, so a shared head works).

  ``split_by_class(digits(), [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])`` gives the two-task split used by the
  merging and continual-learning reproductions.
  """
  if not groups:
    raise ValueError("groups must name at least one group of classes, got an empty sequence.")
  seen: set[int] = set()
  tasks = []
  for g in groups:
    g = [int(c) for c in g]
    bad = [c for c in g if not 0 <= c < data.num_classes]
    if bad or not g:
      raise ValueError(f"groups entries must be non-empty lists of labels in [0, {data.num_classes}), got {list(g)}.")
    if seen & set(g):
      raise ValueError(f"groups must be disjoint; classes {sorted(seen & set(g))} appear twice.")
    seen |= set(g)
    tr = np.isin(data.y_train, g)
    te = np.isin(data.y_test, g)
    tasks.append(Dataset(data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te]))
  return tasks


_IMAGE_TRANSFORMS = {  # (N, 8, 8) images with pixels in [0, 1]
    "upright": lambda x: x,
    "rot90": lambda x: np.rot90(x, 1, axes=(1, 2)),
    "rot180": lambda x: np.rot90(x, 2, axes=(1, 2)),
    "rot270": lambda x: np.rot90(x, 3, axes=(1, 2)),
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1, :],
    "transpose": lambda x: np.swapaxes(x, 1, 2),
    "antitranspose": lambda x: np.rot90(np.swapaxes(x, 1, 2), 2, axes=(1, 2)),
    "invert": lambda x: 1.0 - x,
}
DIGIT_TRANSFORMS = tuple(_IMAGE_TRANSFORMS)
ROT_DIGITS_TASKS = ("rot90", "rot180", "rot270", "hflip", "invert")


class TaskDigits(NamedTuple):
  """Digits under several fixed image transforms (one task each), sharing labels and splits.

  ``x_fit``/``x_val``/``x_test`` are ``(num_tasks, N, 64)`` float32 (task ``t`` is ``tasks[t]``); the labels are
  the same for every task; ``upright_*`` are the untransformed ``(N, 64)`` inputs of the same splits.
  """

  tasks: tuple[str, ...]
  x_fit: np.ndarray
  y_fit: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  upright_fit: np.ndarray
  upright_val: np.ndarray
  upright_test: np.ndarray


def transformed_digits(tasks: Sequence[str] = ROT_DIGITS_TASKS, *, val_fraction: float = 0.2,
                       test_fraction: float = 0.25, seed: int = 0) -> TaskDigits:
  """The ROT-DIGITS multi-task substrate of the merging reproductions (task arithmetic, TIES, ... on transformed
  digits): every task is the digits under one fixed symmetry of the square or intensity inversion.

  The train split of :func:`digits` (``test_fraction``, ``seed``) is split again into fit and validation
  (``val_fraction``, stratified); pixels in [0, 1] are transformed, then every task is normalized by one scalar
  mean and standard deviation of the *upright fit* pixels (so the transforms keep their differences).

  Args:
    tasks: transform names, from :data:`DIGIT_TRANSFORMS` (default: the catalogue's five ROT-DIGITS tasks).
    val_fraction: fraction of the train split held out for validation, in (0, 1).
    test_fraction: fraction of all examples held out for test, in (0, 1).
    seed: seed of both splits.
  """
  tasks = tuple(tasks)
  if not tasks or set(tasks) - set(_IMAGE_TRANSFORMS):
    raise ValueError(f"tasks must be a non-empty sequence of names in {sorted(_IMAGE_TRANSFORMS)}, got {tasks}.")
  _check_fraction("val_fraction", val_fraction)
  ds = digits(test_fraction=test_fraction, seed=seed, as_images=True, standardize=False)
  fit_idx, val_idx = stratified_split(ds.y_train, val_fraction, seed)
  mean, std = ds.x_train[fit_idx].mean(), ds.x_train[fit_idx].std()

  def prep(x, name):
    x = _IMAGE_TRANSFORMS[name](x[..., 0])
    return ((np.ascontiguousarray(x) - mean) / std).reshape(len(x), -1).astype(np.float32)

  splits = {"fit": (ds.x_train[fit_idx], ds.y_train[fit_idx]), "val": (ds.x_train[val_idx], ds.y_train[val_idx]),
            "test": (ds.x_test, ds.y_test)}
  out = {}
  for k, (x, y) in splits.items():
    out[f"x_{k}"] = np.stack([prep(x, t) for t in tasks])
    out[f"y_{k}"] = y
    out[f"upright_{k}"] = prep(x, "upright")
  return TaskDigits(tasks=tasks, **out)
