"""Tests for paperlab.merge.alignment (Subspace Alignment Ratio, arXiv:2502.04959 eqs. 5-6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def _numpy_sar(task, merged, threshold):
  """Independent reference in (out, in) orientation: explicit projector U_k U_k^T, k by a loop over ranks."""
  u, s, _ = np.linalg.svd(np.asarray(merged, np.float64), full_matrices=False)
  total = np.sqrt(np.sum(s**2))
  k = next(k for k in range(1, len(s) + 1) if np.sqrt(np.sum(s[:k]**2)) >= threshold * total)
  proj = u[:, :k] @ u[:, :k].T
  return np.linalg.norm(proj @ task) / np.linalg.norm(task)


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.95, 1.0])
def test_matches_a_numpy_reference(threshold):
  rng = np.random.default_rng(0)
  merged = rng.normal(size=(12, 7)) * np.linspace(3, 0.1, 7)  # decaying column scales: a non-flat spectrum
  for seed in range(3):
    task = np.random.default_rng(seed + 1).normal(size=(12, 7))
    got = merge.subspace_alignment_ratio(task, merged, norm_threshold=threshold, layout="torch")
    np.testing.assert_allclose(got, _numpy_sar(task, merged, threshold), rtol=1e-5)


def test_layouts_scale_invariance_and_jit():
  rng = np.random.default_rng(1)
  task, merged = rng.normal(size=(6, 9)), rng.normal(size=(6, 9)) @ np.diag(np.geomspace(1, 1e-2, 9))
  torch_layout = merge.subspace_alignment_ratio(task, merged, layout="torch")
  flax_layout = merge.subspace_alignment_ratio(task.T, merged.T, layout="flax")
  np.testing.assert_allclose(flax_layout, torch_layout, rtol=1e-5)
  np.testing.assert_allclose(merge.subspace_alignment_ratio(task, 7.0 * merged, layout="torch"), torch_layout,
                             rtol=1e-5)
  jitted = jax.jit(lambda a, b: merge.subspace_alignment_ratio(a, b, layout="torch"))
  np.testing.assert_allclose(jitted(jnp.asarray(task), jnp.asarray(merged)), torch_layout, rtol=1e-5)


def test_extremes():
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  merged = q[:, :2] @ rng.normal(size=(2, 5))  # rank 2: k_M <= 2
  inside = q[:, :2] @ rng.normal(size=(2, 5))
  outside = q[:, 2:] @ rng.normal(size=(6, 5))
  assert float(merge.subspace_alignment_ratio(inside, merged, norm_threshold=1.0, layout="torch")) == \
      pytest.approx(1.0, abs=1e-5)
  assert float(merge.subspace_alignment_ratio(outside, merged, layout="torch")) == pytest.approx(0.0, abs=1e-5)
  # a matrix against itself keeps at least the threshold share of its norm
  m = rng.normal(size=(8, 5))
  assert float(merge.subspace_alignment_ratio(m, m, norm_threshold=0.9)) >= 0.9 - 1e-6


def test_mean_over_2d_leaves_per_task():
  rng = np.random.default_rng(3)
  mk = lambda: {"w1": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
                "w2": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  base, fts = mk(), [mk(), mk(), mk()]
  merged = merge.task_arithmetic(base, fts, 0.3)
  got = merge.mean_subspace_alignment(base, fts, merged)
  assert got.shape == (3,)
  for t, f in enumerate(fts):
    want = np.mean([_numpy_sar((f[k] - base[k]).T, (merged[k] - base[k]).T, 0.95) for k in ("w1", "w2")])
    np.testing.assert_allclose(got[t], want, rtol=1e-5)
  only_w1 = merge.mean_subspace_alignment(base, fts, merged, include="w1")
  np.testing.assert_allclose(only_w1[0], _numpy_sar((fts[0]["w1"] - base["w1"]).T,
                                                    (merged["w1"] - base["w1"]).T, 0.95), rtol=1e-5)
  # iso_c keeps the summed update's singular vectors with a flat spectrum, which needs the most directions to reach
  # the norm threshold (k_iso >= k_TA, nested subspaces), so its alignment is never lower
  iso = merge.iso_c(base, fts, 1.0)
  assert np.all(np.asarray(merge.mean_subspace_alignment(base, fts, iso)) >= np.asarray(got) - 1e-6)


def test_validation():
  m = np.ones((3, 2))
  with pytest.raises(ValueError, match="norm_threshold"):
    merge.subspace_alignment_ratio(m, m, norm_threshold=0.0)
  with pytest.raises(ValueError, match="layout"):
    merge.subspace_alignment_ratio(m, m, layout="tf")
  with pytest.raises(ValueError, match="same shape"):
    merge.subspace_alignment_ratio(m, np.ones((2, 3)))
  with pytest.raises(ValueError, match="2-D leaf"):
    merge.mean_subspace_alignment({"b": jnp.ones(3)}, [{"b": jnp.zeros(3)}], {"b": jnp.ones(3)})
  with pytest.raises(ValueError, match="merged"):
    merge.mean_subspace_alignment({"w": jnp.ones((2, 2))}, [{"w": jnp.zeros((2, 2))}], {"w": jnp.ones((3, 2))})
