"""``tie_break="index"`` of :func:`paperlab.merge.ties` and :func:`paperlab.merge.breadcrumbs` against mergekit's own
sparsifiers (``mergekit.sparsify.magnitude`` / ``magnitude_outliers``, LGPL-3.0, test-time oracle only) run with
``torch.argsort``/``torch.sort`` made stable, on deltas drawn from a few integer values so that most magnitudes
tie with the threshold. Exact equality: the masks are the same sets of entries."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab.merge import breadcrumbs, task_vectors, ties

torch = pytest.importorskip("torch")
sparsify = pytest.importorskip("mergekit.sparsify")


@pytest.fixture
def stable_torch_sort(monkeypatch):
  argsort, sort = torch.argsort, torch.sort
  monkeypatch.setattr(torch, "argsort", lambda x, *a, **k: argsort(x, *a, **{**k, "stable": True}))
  monkeypatch.setattr(torch, "sort", lambda x, *a, **k: sort(x, *a, **{**k, "stable": True}))


def _case(seed: int):
  rng = np.random.default_rng(seed)
  shapes = [(7,), (33, 5), (4096 + 13,), (3, 5, 7)]  # the 4109-entry leaf has a tail past the 4096-entry rows
  shape = shapes[seed % len(shapes)]
  base = rng.integers(-64, 64, shape).astype(np.float32) / 8  # exact in float32: ft - base == delta exactly
  delta = rng.integers(-3, 4, shape).astype(np.float32) * 0.5  # 4 magnitudes: ties everywhere
  return base, delta


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("density", [0.1, 0.37, 0.9])
def test_ties_index_keeps_what_mergekit_keeps_with_a_stable_sort(seed, density, stable_torch_sort):
  base, delta = _case(seed)
  theirs = sparsify.magnitude(torch.tensor(delta), density).numpy()
  ours = ties({"w": jnp.asarray(base)}, [{"w": jnp.asarray(base + delta)}], density, scope="tensor",
              tie_break="index")["w"]
  np.testing.assert_array_equal(np.asarray(ours) - base != 0, theirs != 0)
  np.testing.assert_allclose(np.asarray(ours), base + theirs, rtol=0, atol=1e-6)
  assert int(np.count_nonzero(theirs)) <= max(1, int(density * delta.size))  # zero deltas may be among the k


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("density,gamma", [(0.5, 0.05), (0.2, 0.01), (0.85, 0.1)])
def test_breadcrumbs_index_keeps_mergekits_band_with_a_stable_sort(seed, density, gamma, stable_torch_sort):
  base, delta = _case(seed)
  theirs = sparsify.magnitude_outliers(torch.tensor(delta), density, gamma=gamma).numpy()
  beta = round(1 - density - gamma, 10)
  ours = breadcrumbs({"w": jnp.asarray(base)}, [{"w": jnp.asarray(base + delta)}], beta=beta, gamma=gamma, lam=1.0,
                     tie_break="index")["w"]
  np.testing.assert_allclose(np.asarray(ours), base + theirs, rtol=0, atol=1e-6)


def test_keep_keeps_every_tie_and_index_exactly_k():
  base, delta = _case(1)
  n, k = delta.size, int(0.37 * delta.size)
  thr = np.sort(np.abs(delta).reshape(-1))[n - k]
  keep = ties({"w": base}, [{"w": base + delta}], 0.37, scope="tensor")["w"]
  index = ties({"w": base}, [{"w": base + delta}], 0.37, scope="tensor", tie_break="index")["w"]
  np.testing.assert_array_equal(np.asarray(keep) != base, np.abs(delta) >= thr)
  nonzero_kept = np.count_nonzero(np.asarray(index) != base)
  assert nonzero_kept == min(k, np.count_nonzero(delta))  # exactly k, minus kept zeros
  assert np.count_nonzero(np.asarray(keep) != base) > nonzero_kept


def test_index_mask_runs_under_jit_with_traced_counts():
  a = jnp.asarray(np.random.default_rng(0).integers(0, 3, (64, 70)).astype(np.float32))
  flat = np.asarray(a).reshape(-1)
  order = np.argsort(-flat, kind="stable")
  for k in (1, 100, 2000, a.size):
    thr = np.sort(flat)[a.size - k]
    mask = jax.jit(task_vectors._index_top_k)(a, thr, jnp.int32(k))
    want = np.zeros(a.size, bool)
    want[order[:k]] = True
    np.testing.assert_array_equal(np.asarray(mask).reshape(-1), want)


def test_tie_break_errors_name_the_argument():
  base, delta = _case(0)
  with pytest.raises(ValueError, match="tie_break"):
    ties({"w": base}, [{"w": base + delta}], 0.5, tie_break="stable")
  with pytest.raises(ValueError, match="scope='tensor'"):
    ties({"w": base}, [{"w": base + delta}], 0.5, scope="global", tie_break="index")
  with pytest.raises(ValueError, match="exact threshold"):
    ties({"w": base}, [{"w": base + delta}], 0.5, scope="tensor", threshold="sample", tie_break="index")
  with pytest.raises(ValueError, match="scope='tensor'"):
    breadcrumbs({"w": base}, [{"w": base + delta}], scope="global", tie_break="index")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("density", [0.1, 0.37])
def test_ties_torch_keeps_what_mergekit_keeps_as_it_is(seed, density):
  """``tie_break="torch"`` against mergekit's ``magnitude`` with its own unstable ``torch.argsort`` (no patch): the
  same entries, tied ones included; ``"index"`` (row-major ties) differs from it on these tie-heavy deltas."""
  base, delta = _case(seed)
  theirs = sparsify.magnitude(torch.tensor(delta), density).numpy()
  ours = ties({"w": jnp.asarray(base)}, [{"w": jnp.asarray(base + delta)}], density, scope="tensor",
              tie_break="torch")["w"]
  np.testing.assert_allclose(np.asarray(ours), base + theirs, rtol=0, atol=1e-6)


def test_torch_on_bf16_deltas_rounds_them_as_mergekit_does():
  """bf16 inputs: mergekit subtracts in bf16 and sorts ``|delta|.float()``; ``"torch"`` keeps the same entries."""
  import ml_dtypes

  rng = np.random.default_rng(3)
  b = rng.normal(size=(96, 130)).astype(ml_dtypes.bfloat16)
  m = (b.view(np.uint16).astype(np.int32) + rng.integers(-3, 4, b.shape)).astype(np.uint16).view(ml_dtypes.bfloat16)
  to_t = lambda x: torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
  theirs = sparsify.magnitude(to_t(m) - to_t(b), 0.3).float().numpy() != 0
  ours = np.asarray(ties({"w": jnp.asarray(b)}, [{"w": jnp.asarray(m)}], 0.3, scope="tensor", tie_break="torch")["w"])
  np.testing.assert_array_equal(ours.astype(np.float32) != b.astype(np.float32), theirs)


@pytest.mark.parametrize("seed", range(3))
def test_breadcrumbs_torch_keeps_mergekits_band_as_it_is(seed):
  base, delta = _case(seed)
  theirs = sparsify.magnitude_outliers(torch.tensor(delta), 0.5, gamma=0.05).numpy()
  ours = breadcrumbs({"w": jnp.asarray(base)}, [{"w": jnp.asarray(base + delta)}], beta=0.45, gamma=0.05, lam=1.0,
                     tie_break="torch")["w"]
  np.testing.assert_allclose(np.asarray(ours), base + theirs, rtol=0, atol=1e-6)


def test_torch_tie_break_errors_name_the_argument():
  x = {"w": jnp.ones(8)}
  with pytest.raises(ValueError, match="scope='tensor'"):
    ties(x, [x], 0.5, tie_break="torch")  # the default scope is global
  with pytest.raises(ValueError, match="jax.jit"):
    jax.jit(lambda a: ties({"w": a}, [{"w": a + 1}], 0.5, scope="tensor", tie_break="torch"))(jnp.ones(8))
  with pytest.raises(ValueError, match="tie_break"):
    ties(x, [x], 0.5, scope="tensor", tie_break="stable")
