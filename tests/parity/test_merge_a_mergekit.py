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


def _beta(density: float, gamma: float) -> float:
  """The paper's bottom fraction for mergekit's ``density``, written as a user would (``1 - 0.1 - 0.01 = 0.89``)."""
  return round(1.0 - density - gamma, 12)


@pytest.mark.parametrize("density,gamma", [(0.35, 0.05), (0.14, 0.01), (0.5, 0.2), (0.1, 0.01)])
def test_breadcrumbs_matches_mergekit(tensors, density, gamma):
  base, fts = tensors
  ours = pm.breadcrumbs(*_trees(base, fts), _beta(density, gamma), gamma, 0.7)["w"]
  theirs = _mergekit("breadcrumbs", [base, *fts], {"weight": _per_model(1.0), "density": _per_model(density),
                                                   "gamma": _per_model(gamma), "lambda": 0.7})
  assert _rel(ours, theirs) <= RTOL


@pytest.mark.parametrize("n", [10, 40, 100, 300, 1000, 4096])
@pytest.mark.parametrize("density,gamma", [(0.1, 0.01), (0.1, 0.0), (0.2, 0.1), (0.3, 0.05), (0.5, 0.2),
                                           (0.14, 0.01), (0.7, 0.1), (0.9, 0.0)])
def test_breadcrumbs_keeps_exactly_the_entries_mergekit_keeps(n, density, gamma):
  """mergekit's ``magnitude_outliers`` (the sparsification of its ``breadcrumbs``) keeps ``int(density n)`` entries
  after dropping ``int(gamma n)`` from the top; ``1 - beta - gamma`` in binary floating point kept ``n/10 - 1`` for
  density 0.1 (``1 - 0.89 - 0.01 = 0.0999...``). Same kept set, same values."""
  from mergekit.sparsify import SparsificationMethod, sparsify

  rng = np.random.default_rng(n)
  base = rng.standard_normal(n).astype(np.float32)
  delta = (0.1 * rng.standard_normal(n)).astype(np.float32)
  ft = base + delta
  ours = np.asarray(pm.breadcrumbs({"w": base}, [{"w": ft}], _beta(density, gamma), gamma, 1.0)["w"]) - base
  theirs = sparsify(torch.from_numpy(ft - base), density, SparsificationMethod.magnitude_outliers, gamma=gamma).numpy()
  assert np.count_nonzero(theirs) == int(density * n)
  np.testing.assert_array_equal(ours != 0, theirs != 0)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


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
  ours = pm.model_stock(*_trees(base, fts), filter_wise=True, layout="torch")["w"]
  theirs = _mergekit("model_stock", [base, *fts], {"filter_wise": True})
  assert _rel(ours, theirs) <= RTOL


def _to_torch(kernel: np.ndarray) -> np.ndarray:
  """A Flax kernel ``(..., in, out)`` in PyTorch layout ``(out, in, ...)``: Dense ``(in, out)`` -> ``(out, in)``,
  Conv ``(kh, kw, in, out)`` -> ``(out, in, kh, kw)``; vectors are unchanged."""
  if kernel.ndim < 2:
    return kernel
  return np.ascontiguousarray(np.transpose(kernel, (kernel.ndim - 1, kernel.ndim - 2, *range(kernel.ndim - 2))))


@pytest.mark.parametrize("shape", [(12,), (6, 5), (3, 3, 4, 5)], ids=["bias", "dense", "conv"])
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_on_flax_leaves_matches_mergekit_in_torch_layout(shape, filter_wise):
  """Flax kernels through mergekit's ``model_stock`` in PyTorch layout. A vector is one row (one ratio; never one
  per element, which gave t in {1, -3} for 3 models). Filter-wise, a filter is an output channel: mergekit takes
  rows along a weight's last axis, so a conv weight ``(out, in, kh, kw)`` is given to it as its ``(out, in*kh*kw)``
  matrix (for 2-D weights the two are the same)."""
  rng = np.random.default_rng(len(shape))
  shared = rng.standard_normal(shape).astype(np.float32)
  base = rng.standard_normal(shape).astype(np.float32)
  # correlated task vectors (cosines ~0.8), different per output channel
  fts = [base + 0.1 * (2 * shared + rng.standard_normal(shape).astype(np.float32)) for _ in range(N_MODELS)]
  ours, ratios = pm.model_stock(*_trees(base, fts), filter_wise=filter_wise, return_ratios=True)
  torch_ws = [_to_torch(w) for w in [base, *fts]]
  out_shape = torch_ws[0].shape
  rows = [w.reshape(out_shape[0], -1) if filter_wise and w.ndim > 2 else w for w in torch_ws]
  theirs = _mergekit("model_stock", rows, {"filter_wise": filter_wise}).reshape(out_shape)
  assert _rel(_to_torch(np.asarray(ours["w"])), theirs) <= RTOL
  n_ratios = shape[-1] if (filter_wise and len(shape) >= 2) else 1
  assert np.size(ratios["w"]) == n_ratios
  assert np.all((np.asarray(ratios["w"]) > 0) & (np.asarray(ratios["w"]) < 1))  # interpolation, no extrapolation
  # layout="torch" on the PyTorch weight gives the same merge
  ours_t = pm.model_stock({"w": torch_ws[0]}, [{"w": w} for w in torch_ws[1:]], filter_wise=filter_wise,
                          layout="torch")["w"]
  assert _rel(ours_t, theirs) <= RTOL


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_matches_mergekit(tensors, t):
  base, fts = tensors
  ours = pm.slerp({"w": base}, {"w": fts[0]}, t)["w"]
  theirs = _mergekit("slerp", [base, fts[0]], {"t": t})
  assert _rel(ours, theirs) <= RTOL


@pytest.mark.parametrize("shape", [(12,), (6, 5), (3, 3, 4, 5)], ids=["vector", "matrix", "conv"])
def test_slerp_default_is_mergekits_whole_tensor_slerp(shape):
  """mergekit's ``slerp`` interpolates each logical tensor as one flattened vector (its ``TensorBatch`` axis 0
  batches tensors, not output units): that is ``axis=None``, the default; per-slice ``axis=0`` is not mergekit."""
  rng = np.random.default_rng(7)
  a = rng.standard_normal(shape).astype(np.float32)
  b = rng.standard_normal(shape).astype(np.float32)
  theirs = _mergekit("slerp", [a, b], {"t": 0.3})
  assert _rel(pm.slerp({"w": a}, {"w": b}, 0.3)["w"], theirs) <= RTOL
  if len(shape) >= 2:
    assert _rel(pm.slerp({"w": a}, {"w": b}, 0.3, axis=0)["w"], theirs) > 1e-3


def test_slerp_of_nearly_collinear_tensors_falls_back_to_linear_like_mergekit():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((8, 4)).astype(np.float32)
  b = 2.0 * a + 1e-5 * rng.standard_normal((8, 4)).astype(np.float32)
  ours = pm.slerp({"w": a}, {"w": b}, 0.25)["w"]
  theirs = _mergekit("slerp", [a, b], {"t": 0.25})
  assert _rel(ours, theirs) <= RTOL
