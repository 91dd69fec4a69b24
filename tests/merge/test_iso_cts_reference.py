"""Iso-CTS against an independent numpy reading of arXiv:2502.04959 Alg. 1 (float64, explicit projectors)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def _polar(m):
  p, _, q = np.linalg.svd(m, full_matrices=False)
  return p @ q


def _iso_cts_numpy(taus, common_fraction):
  """taus: (out, in) task matrices. Common subspace = top-k of the sum (k adjusted so r - k splits evenly over the
  T tasks), each task adds its top (r - k) / T directions outside the common left subspace, bases are replaced by
  their polar factors and every direction gets the mean singular value."""
  t, r = len(taus), min(taus[0].shape)
  k = int(r * common_fraction)
  k = r - round((r - k) / t) * t
  u, s, vt = np.linalg.svd(sum(taus), full_matrices=False)
  us, ss, vs = [u[:, :k]], [s[:k]], [vt[:k]]
  proj = np.eye(taus[0].shape[0]) - u[:, :k] @ u[:, :k].T
  for tau in taus:
    ut, st, vtt = np.linalg.svd(proj @ tau, full_matrices=False)
    n = (r - k) // t
    us.append(ut[:, :n])
    ss.append(st[:n])
    vs.append(vtt[:n])
  return np.mean(np.concatenate(ss)) * _polar(np.concatenate(us, 1)) @ _polar(np.concatenate(vs, 0))


@pytest.mark.parametrize("shape, fraction", [((64, 32), 0.8), ((20, 30), 0.8), ((24, 24), 0.5)])
def test_iso_cts_matches_the_numpy_reference(shape, fraction):
  rng = np.random.default_rng(0)
  base = {"w": rng.normal(size=shape).astype(np.float32)}
  fts = [{"w": base["w"] + (rng.normal(size=(shape[0], 3)) @ rng.normal(size=(3, shape[1]))
                            + 0.1 * rng.normal(size=shape)).astype(np.float32)} for _ in range(5)]
  got = merge.iso_cts({"w": jnp.asarray(base["w"])}, [{"w": jnp.asarray(f["w"])} for f in fts], 1.0,
                      common_fraction=fraction)
  taus = [(f["w"].astype(np.float64) - base["w"]).T for f in fts]  # flax (in, out) -> (out, in)
  want = _iso_cts_numpy(taus, fraction).T
  np.testing.assert_allclose(np.asarray(got["w"]) - base["w"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
