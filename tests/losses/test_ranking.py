"""NeuralSort, Sinkhorn normalisation and NeuralNDCG."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import paperlab.losses as pl

RNG = np.random.default_rng(5)


def test_neural_sort_matches_the_paper_equation():
  s = RNG.normal(size=6)
  n = 6
  a = np.abs(s[:, None] - s[None, :]).sum(-1)
  expected = []
  for i in range(1, n + 1):
    row = ((n + 1 - 2 * i) * s - a) / 0.5
    expected.append(np.exp(row - row.max()) / np.exp(row - row.max()).sum())
  np.testing.assert_allclose(pl.neural_sort(s.astype(np.float32), temperature=0.5), np.array(expected), atol=1e-6)


def test_neural_sort_tends_to_the_sorting_permutation():
  s = np.array([0.3, 2.0, -1.0, 1.1], np.float32)
  p = np.asarray(pl.neural_sort(s, temperature=1e-3))
  np.testing.assert_allclose(p, np.eye(4)[np.argsort(-s)], atol=1e-6)


def test_sinkhorn_makes_the_matrix_doubly_stochastic():
  p = pl.sinkhorn_normalize(pl.neural_sort(RNG.normal(size=(3, 7)).astype(np.float32)), num_iters=200)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(p.sum(-2), 1.0, atol=1e-4)


def test_neural_ndcg_is_bounded_and_minus_one_for_a_perfect_ranking():
  relevance = np.array([[3.0, 2.0, 1.0, 0.0, 0.0]], np.float32)
  perfect = -pl.neural_ndcg_loss(np.array([[5.0, 4.0, 3.0, 2.0, 1.0]], np.float32), relevance, temperature=1e-2)
  np.testing.assert_allclose(perfect, [1.0], atol=1e-5)
  scores = RNG.normal(size=(10, 5)).astype(np.float32)
  value = -np.asarray(pl.neural_ndcg_loss(scores, np.tile(relevance, (10, 1))))
  assert np.all((value > 0) & (value <= 1 + 1e-6))


def test_neural_ndcg_rewards_better_orderings_and_has_informative_gradients():
  relevance = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
  good = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
  assert float(pl.neural_ndcg_loss(good, relevance)[0]) < float(pl.neural_ndcg_loss(-good, relevance)[0])
  grad = jax.grad(lambda s: pl.neural_ndcg_loss(s, relevance).sum())(np.zeros((1, 4), np.float32))
  assert np.all(np.isfinite(grad))
  assert np.argmin(grad[0]) == 3  # raising the most relevant item's score lowers the loss the most


def test_transposed_variant_and_truncation():
  scores = RNG.normal(size=(4, 6)).astype(np.float32)
  relevance = RNG.integers(0, 4, size=(4, 6)).astype(np.float32)
  relevance[:, 0] = 3
  for transposed in (False, True):
    full = pl.neural_ndcg_loss(scores, relevance, transposed=transposed)
    top3 = pl.neural_ndcg_loss(scores, relevance, transposed=transposed, k=3)
    assert np.all(np.isfinite(full)) and np.all(np.isfinite(top3))
  hard = pl.neural_ndcg_loss(scores, relevance, temperature=1e-3, transposed=True)
  np.testing.assert_allclose(hard, pl.neural_ndcg_loss(scores, relevance, temperature=1e-3), atol=1e-4)


def test_lists_without_relevant_items_give_zero():
  assert float(pl.neural_ndcg_loss(np.ones((1, 3), np.float32), np.zeros((1, 3), np.float32))[0]) == 0.0


def test_bad_inputs_raise_clear_errors():
  s = np.zeros((2, 4), np.float32)
  with pytest.raises(ValueError, match="relevance must have the shape"):
    pl.neural_ndcg_loss(s, np.zeros((2, 3), np.float32))
  with pytest.raises(ValueError, match="temperature"):
    pl.neural_ndcg_loss(s, s, temperature=0.0)
  with pytest.raises(ValueError, match="k must be"):
    pl.neural_ndcg_loss(s, s, k=0)
  with pytest.raises(ValueError, match="where must have the shape"):
    pl.neural_ndcg_loss(s, s, where=np.ones((2, 3), bool))
