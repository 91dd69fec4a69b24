"""paperlab.data.pruning [523]: k-means against scikit-learn, the prototype metric, the keep-hard/keep-easy rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from paperlab import data


def _blobs(seed=0, n=300, d=5, k=4):
  x, _ = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=2.0, random_state=seed)
  return x.astype(np.float64)


def test_kmeans_matches_sklearn_lloyd_from_the_same_init(seed=0):
  x = _blobs(seed)
  init = x[np.random.default_rng(seed).choice(len(x), 4, replace=False)]
  ref = KMeans(4, init=init, n_init=1, max_iter=50, tol=0.0, algorithm="lloyd").fit(x)
  centroids, labels = jax.jit(data.kmeans, static_argnums=2)(jnp.asarray(x, jnp.float32), jnp.asarray(init, jnp.float32),
                                                             50)
  np.testing.assert_allclose(np.asarray(centroids), ref.cluster_centers_, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(labels), ref.labels_)


def test_prototype_scores_are_cosine_distances_to_sklearn_centroids():
  x = _blobs(3, d=8, k=5).astype(np.float32) + 3.0  # off the origin, so directions differ between clusters
  key = jax.random.key(7)
  scores = jax.jit(lambda e, k: data.prototype_scores(e, 5, key=k, num_iters=30))(jnp.asarray(x), key)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  init = unit[np.asarray(jax.random.choice(key, len(x), (5,), replace=False))]
  ref = KMeans(5, init=init, n_init=1, max_iter=30, tol=0.0, algorithm="lloyd").fit(unit.astype(np.float64))
  c = ref.cluster_centers_ / np.linalg.norm(ref.cluster_centers_, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(scores), np.min(1.0 - unit @ c.T, axis=1), atol=1e-5)
  assert scores.dtype == jnp.float32 and np.all(np.asarray(scores) >= -1e-6)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=40), st.floats(0.01, 1.0))
def test_prune_keeps_the_hardest_or_easiest_fraction_like_a_stable_sort(values, frac):
  scores = np.asarray(values, np.float32)
  m = max(1, int(np.ceil(frac * len(scores) - 1e-9)))
  hard = np.asarray(data.prune(scores, frac, keep="hard"))
  easy = np.asarray(data.prune(scores, frac, keep="easy"))
  np.testing.assert_array_equal(hard, np.argsort(-scores, kind="stable")[:m])
  np.testing.assert_array_equal(easy, np.argsort(scores, kind="stable")[:m])
  assert hard.dtype == np.int32 and len(set(hard.tolist())) == m
  assert scores[hard].min() >= np.sort(scores)[::-1][m - 1] and scores[easy].max() <= np.sort(scores)[m - 1]


def test_prune_under_jit_with_static_fraction():
  scores = jnp.asarray([0.3, 0.9, 0.1, 0.5], jnp.float32)
  idx = jax.jit(data.prune, static_argnums=(1, 2))(scores, 0.5, "hard")
  np.testing.assert_array_equal(np.asarray(idx), [1, 3])


@pytest.mark.parametrize("kwargs, match", [
    ({"frac": 0.0}, "frac"), ({"frac": 1.5}, "frac"), ({"keep": "medium"}, "keep"),
])
def test_prune_rejects_bad_arguments(kwargs, match):
  args = {"scores": jnp.ones(4), "frac": 0.5, "keep": "hard", **kwargs}
  with pytest.raises(ValueError, match=match):
    data.prune(**args)


def test_prototype_and_kmeans_errors_name_the_argument():
  with pytest.raises(ValueError, match="k must"):
    data.prototype_scores(jnp.ones((3, 2)), 5, key=jax.random.key(0))
  with pytest.raises(ValueError, match="emb"):
    data.prototype_scores(jnp.ones(3), 1, key=jax.random.key(0))
  with pytest.raises(ValueError, match="init_centroids"):
    data.kmeans(jnp.ones((3, 2)), jnp.ones((2, 3)))
  with pytest.raises(ValueError, match="scores"):
    data.prune(jnp.ones((2, 2)), 0.5)
