"""paperlab.data: determinism, shapes, the label-noise and long-tail contracts, the text sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import data


def test_digits_split_is_deterministic_and_stratified():
  a, b = data.digits(seed=3), data.digits(seed=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  c = data.digits(seed=4)
  assert not np.array_equal(a.y_test, c.y_test)
  assert a.x_train.shape == (1347, 64) and a.x_test.shape == (450, 64)
  assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
  fractions = np.bincount(a.y_test, minlength=10) / np.bincount(np.concatenate([a.y_train, a.y_test]))
  assert np.all(np.abs(fractions - 0.25) < 0.01)


def test_digits_standardizes_with_training_statistics_only():
  ds = data.digits()
  np.testing.assert_allclose(ds.x_train.mean(0), 0.0, atol=1e-4)
  assert np.abs(ds.x_test.mean(0)).max() > 1e-3  # the test split was not used to centre
  raw = data.digits(standardize=False)
  assert raw.x_train.min() >= 0.0 and raw.x_train.max() <= 1.0


def test_digits_as_images_is_nhwc():
  ds = data.digits(as_images=True)
  assert ds.x_train.shape == (1347, 8, 8, 1)
  np.testing.assert_array_equal(ds.x_train.reshape(-1, 64), data.digits().x_train)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_digits_rejects_bad_fraction(bad):
  with pytest.raises(ValueError, match="test_fraction"):
    data.digits(test_fraction=bad)


def test_split_by_class_gives_disjoint_tasks(digits_data):
  tasks = data.split_by_class(digits_data, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
  assert set(np.unique(tasks[0].y_train)) == {0, 1, 2, 3, 4}
  assert set(np.unique(tasks[1].y_test)) == {5, 6, 7, 8, 9}
  assert sum(len(t.y_train) for t in tasks) == len(digits_data.y_train)
  with pytest.raises(ValueError, match="disjoint"):
    data.split_by_class(digits_data, [[0, 1], [1, 2]])
  with pytest.raises(ValueError, match="groups"):
    data.split_by_class(digits_data, [[0, 11]])


def test_imbalanced_follows_exponential_profile(digits_data):
  ds = data.imbalanced(digits_data, imbalance_ratio=10.0, seed=0)
  counts = np.bincount(ds.y_train, minlength=10)
  assert counts[0] / counts[-1] == pytest.approx(10.0, rel=0.1)
  assert np.all(np.diff(counts) <= 0)
  np.testing.assert_array_equal(ds.y_test, digits_data.y_test)
  with pytest.raises(ValueError, match="imbalance_ratio"):
    data.imbalanced(digits_data, imbalance_ratio=0.5)


def test_symmetric_noise_flips_at_rate_to_other_classes():
  y = np.repeat(np.arange(10), 2000).astype(np.int32)
  noisy, flipped = data.noisy_labels(y, rate=0.4, num_classes=10, kind="symmetric", seed=0)
  assert flipped.mean() == pytest.approx(0.4, abs=0.01)
  assert np.all(noisy[flipped] != y[flipped]) and np.all(noisy[~flipped] == y[~flipped])
  # uniform over the 9 other classes
  hist = np.bincount((noisy[flipped] - y[flipped]) % 10, minlength=10)[1:]
  assert hist.min() / hist.max() > 0.85


def test_asymmetric_noise_is_pair_flipping():
  y = np.repeat(np.arange(10), 500).astype(np.int32)
  noisy, flipped = data.noisy_labels(y, rate=0.3, num_classes=10, kind="asymmetric", seed=1)
  np.testing.assert_array_equal(noisy[flipped], (y[flipped] + 1) % 10)
  with pytest.raises(ValueError, match="kind"):
    data.noisy_labels(y, rate=0.3, num_classes=10, kind="uniform")
  with pytest.raises(ValueError, match="rate"):
    data.noisy_labels(y, rate=1.5, num_classes=10)
  with pytest.raises(ValueError, match="labels"):
    data.noisy_labels(y, rate=0.1, num_classes=5)


def test_with_label_noise_keeps_test_labels_clean(digits_data):
  noisy = data.with_label_noise(digits_data, rate=0.4, seed=0)
  np.testing.assert_array_equal(noisy.y_test, digits_data.y_test)
  assert (noisy.y_train != digits_data.y_train).mean() == pytest.approx(0.4, abs=0.04)


def test_teacher_student_and_multitask_shapes():
  ts = data.teacher_student(n_train=100, n_test=50, d_in=8, d_out=2, seed=0)
  assert ts.x_train.shape == (100, 8) and ts.y_train.shape == (100, 2)
  np.testing.assert_array_equal(ts.y_train, data.teacher_student(n_train=100, n_test=50, d_in=8, d_out=2).y_train)
  mt = data.multitask_toy(n_train=64, n_test=32)
  assert set(mt.y_train) == {"reg_a", "reg_b", "cls"} and mt.y_test["cls"].shape == (32,)
  # reg_b carries 10x the noise of reg_a by construction
  assert np.var(mt.y_train["reg_b"]) > np.var(mt.y_train["reg_a"])
  with pytest.raises(ValueError, match="noise"):
    data.teacher_student(noise=-1.0)


def test_text_corpus_is_deterministic_and_tokenizer_roundtrips():
  text = data.corpus(num_chars=5000, seed=0)
  assert text == data.corpus(num_chars=5000, seed=0) and len(text) == 5000
  assert text != data.corpus(num_chars=5000, seed=1)
  tok = data.CharTokenizer.from_text(text)
  assert tok.decode(tok.encode(text)) == text
  with pytest.raises(ValueError, match="vocab"):
    tok.encode("\x00")
  with pytest.raises(ValueError, match="name"):
    data.corpus("wikipedia")
  assert len(data.corpus("stdlib", num_chars=2000)) == 2000


def test_sample_sequences_targets_are_shifted_inputs():
  td = data.char_dataset(num_chars=20000)
  fn = jax.jit(data.sample_sequences, static_argnums=(2, 3))
  x, y = fn(jax.random.key(0), td.train, 8, 32)
  assert x.shape == y.shape == (8, 32)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  with pytest.raises(ValueError, match="seq_len"):
    data.sample_sequences(jax.random.key(0), td.train[:10], 2, 32)


def test_batch_at_covers_each_epoch_exactly_once():
  n, bs = 40, 8
  x = jnp.arange(n)
  key = jax.random.key(0)
  batch = jax.jit(data.batch_at, static_argnums=3)
  epoch0 = np.concatenate([np.asarray(batch(x, s, key, bs)) for s in range(n // bs)])
  epoch1 = np.concatenate([np.asarray(batch(x, s, key, bs)) for s in range(n // bs, 2 * n // bs)])
  np.testing.assert_array_equal(np.sort(epoch0), np.arange(n))
  np.testing.assert_array_equal(np.sort(epoch1), np.arange(n))
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(batch(x, 7, key, bs), batch(x, 7, key, bs))


def test_sample_batch_rejects_ragged_data():
  with pytest.raises(ValueError, match="leading axis"):
    data.sample_batch(jax.random.key(0), (jnp.ones(4), jnp.ones(5)), 2)


def test_transformed_digits_tasks_are_the_named_transforms_of_shared_splits():
  td = data.transformed_digits(("rot90", "hflip", "invert"), val_fraction=0.2, seed=1)
  assert td.x_fit.shape == (3, len(td.y_fit), 64) and td.x_test.shape == (3, len(td.y_test), 64)
  assert len(td.y_fit) + len(td.y_val) + len(td.y_test) == 1797
  img = lambda x: x.reshape(-1, 8, 8)
  # the transforms act on images: rot90 of the upright image, a mirrored row order, and 1 - x before normalization
  np.testing.assert_allclose(img(td.x_fit[0]), np.rot90(img(td.upright_fit), 1, axes=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(img(td.x_val[1]), img(td.upright_val)[:, :, ::-1], rtol=1e-6)
  mean, std = _scalar_stats(td.upright_fit)
  np.testing.assert_allclose(td.x_test[2] * std + mean, 1.0 - (td.upright_test * std + mean), atol=1e-5)
  np.testing.assert_allclose([td.upright_fit.mean(), td.upright_fit.std()], [0.0, 1.0], atol=1e-5)
  with pytest.raises(ValueError, match="tasks"):
    data.transformed_digits(("rot45",))


def _scalar_stats(x):
  # the upright fit inputs are normalized to mean 0 / std 1 by one scalar pair; recover it from the raw digits
  raw = data.digits(as_images=True, standardize=False, seed=1)
  fit_idx, _ = data.stratified_split(raw.y_train, 0.2, 1)
  return raw.x_train[fit_idx].mean(), raw.x_train[fit_idx].std()
