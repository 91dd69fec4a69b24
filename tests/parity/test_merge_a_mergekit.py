"""Parity of paperlab.merge's task-vector merges with mergekit (LGPL-3.0; imported here as a test-time oracle only,
never copied) on the same tensors. Tolerance: 1e-5 relative to the largest output magnitude."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
mk_registry = pytest.importorskip("mergekit.merge_methods.registry")
from mergekit.merge_methods.base import TensorGroup  # noqa: E402

import paperlab.merge as pm  # noqa: E402

RTOL = 1e-5
N_MODELS = 3


def _rel(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _mergekit(name: str, tensors, params: dict, base_index: int | None = 0) -> np.ndarray:
  group = TensorGroup.from_tensors([torch.from_numpy(np.ascontiguousarray(t)) for t in tensors],
                                   base_index=base_index)
  return mk_registry.get(name)([group], parameters=params)[0].numpy()


def _per_model(value):
  return {i + 1: value for i in range(N_MODELS)}


@pytest.fixture(params=[(16, 12), (40,)], ids=["matrix", "vector"])
def tensors(request):
  rng = np.random.default_rng(sum(request.param))
  base = rng.standard_normal(request.param).astype(np.float32)
  fts = [base + 0.1 * rng.standard_normal(request.param).astype(np.float32) for _ in range(N_MODELS)]
  return base, fts


def _trees(base, fts):
  return {"w": base}, [{"w": f} for f in fts]


def test_task_arithmetic_matches_mergekit(tensors):
  base, fts = tensors
  weights = [1.0, 0.5, 2.0]
  ours = pm.task_arithmetic(*_trees(base, fts), 0.7, weights=weights)["w"]
  theirs = _mergekit("task_arithmetic", [base, *fts],
                     {"weight": {i + 1: w for i, w in enumerate(weights)}, "lambda": 0.7})
  assert _rel(ours, theirs) <= RTOL


@pytest.mark.parametrize("density", [0.3, 0.75])
def test_ties_tensor_scope_matches_mergekit(tensors, density):
  base, fts = tensors
  ours = pm.ties(*_trees(base, fts), density, 0.7, scope="tensor")["w"]
  theirs = _mergekit("ties", [base, *fts], {"weight": _per_model(1.0), "density": _per_model(density),
                                            "lambda": 0.7})
  assert _rel(ours, theirs) <= RTOL


@pytest.mark.parametrize("method,rescale,consensus", [("dare_linear", True, False), ("dare_linear", False, False),
                                                      ("dare_ties", False, True), ("dare_ties", True, True)])
def test_dare_with_a_fixed_mask_matches_mergekit(tensors, monkeypatch, method, rescale, consensus):
  """mergekit draws its mask with ``torch.bernoulli``; feed it the masks paperlab draws for the same key.
  mergekit's ``rescale`` matches the L1 norm of each delta (``rescale="l1"`` here); ``dare_ties`` sums the
  agreeing entries (``merge="sum"``)."""
  base, fts = tensors
  key = jax.random.key(3)
  density = 0.4
  masks = [np.asarray(pm.random_mask(jax.random.fold_in(key, t), {"w": base}, density)["w"]) for t in range(N_MODELS)]
  assert all(0 < m.mean() < 1 for m in masks)
  it = iter(masks)
  monkeypatch.setattr(torch, "bernoulli", lambda x, *a, **k: torch.from_numpy(next(it).astype(np.float32)))
  theirs = _mergekit(method, [base, *fts], {"weight": _per_model(1.0), "density": _per_model(density),
                                            "lambda": 0.7, "rescale": rescale})
  ours = pm.dare_merge(key, *_trees(base, fts), density, 0.7, rescale="l1" if rescale else None,
                       sign_consensus=consensus, merge="sum")["w"]
  assert _rel(ours, theirs) <= RTOL


@pytest.mark.parametrize("beta,gamma", [(0.6, 0.05), (0.85, 0.01), (0.3, 0.2)])
def test_breadcrumbs_matches_mergekit(tensors, beta, gamma):
  base, fts = tensors
  ours = pm.breadcrumbs(*_trees(base, fts), beta, gamma, 0.7)["w"]
  theirs = _mergekit("breadcrumbs", [base, *fts], {"weight": _per_model(1.0), "density": _per_model(1 - beta - gamma),
                                                   "gamma": _per_model(gamma), "lambda": 0.7})
  assert _rel(ours, theirs) <= RTOL


def test_breadcrumbs_ties_matches_mergekit(tensors):
  base, fts = tensors
  ours = pm.breadcrumbs(*_trees(base, fts), 0.5, 0.1, 1.0, sign_consensus=True)["w"]
  theirs = _mergekit("breadcrumbs_ties", [base, *fts], {"weight": _per_model(1.0), "density": _per_model(1 - 0.5 - 0.1),
                                                        "gamma": _per_model(0.1)})
  assert _rel(ours, theirs) <= RTOL


def test_model_stock_matches_mergekit(tensors):
  base, fts = tensors
  ours = pm.model_stock(*_trees(base, fts))["w"]
  theirs = _mergekit("model_stock", [base, *fts], {})
  assert _rel(ours, theirs) <= RTOL


def test_model_stock_per_row_matches_mergekit_filter_wise():
  rng = np.random.default_rng(5)
  base = rng.standard_normal((10, 6)).astype(np.float32)  # PyTorch (out, in): a ratio per output row
  fts = [base + 0.1 * rng.standard_normal((10, 6)).astype(np.float32) for _ in range(N_MODELS)]
  ours = pm.model_stock(*_trees(base, fts), axis=0)["w"]
  theirs = _mergekit("model_stock", [base, *fts], {"filter_wise": True})
  assert _rel(ours, theirs) <= RTOL


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_matches_mergekit(tensors, t):
  base, fts = tensors
  ours = pm.slerp({"w": base}, {"w": fts[0]}, t)["w"]
  theirs = _mergekit("slerp", [base, fts[0]], {"t": t})
  assert _rel(ours, theirs) <= RTOL


def test_slerp_of_nearly_collinear_tensors_falls_back_to_linear_like_mergekit():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((8, 4)).astype(np.float32)
  b = 2.0 * a + 1e-5 * rng.standard_normal((8, 4)).astype(np.float32)
  ours = pm.slerp({"w": a}, {"w": b}, 0.25)["w"]
  theirs = _mergekit("slerp", [a, b], {"t": 0.25})
  assert _rel(ours, theirs) <= RTOL
