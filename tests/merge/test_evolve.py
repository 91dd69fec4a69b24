"""CMA-ES search of merge coefficients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def test_cma_converges_on_the_sphere_in_10d():
  target = np.linspace(-1.0, 1.0, 10)
  x, hist = merge.evolve_merge(lambda x: x, lambda x: -float(np.sum((x - target) ** 2)), np.zeros(10),
                               sigma0=0.5, generations=120, seed=0)
  assert np.max(np.abs(x - target)) < 1e-2
  assert hist[-1]["best"] > hist[0]["best"]
  x2, _ = merge.evolve_merge(lambda x: x, lambda x: -float(np.sum((x - target) ** 2)), np.zeros(10),
                             sigma0=0.5, generations=120, seed=0)
  np.testing.assert_array_equal(x, x2)  # deterministic


def test_equal_genome_is_task_arithmetic_and_groups_select_leaves():
  base = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.zeros(2)}}
  fts = [jax.tree.map(lambda x, i=i: x + i + 1.0, base) for i in range(3)]
  recipe = jax.jit(merge.task_arithmetic_recipe(base, fts))
  out = recipe(jnp.full((3,), 0.3))
  ta = jax.tree.map(lambda b, *f: b + 0.3 * sum(x - b for x in f), base, *fts)
  np.testing.assert_allclose(out["a"]["kernel"], ta["a"]["kernel"], rtol=1e-6)
  grouped = merge.task_arithmetic_recipe(base, fts, groups=["kernel", ".*"])
  g = np.zeros((3, 2))
  g[0, 0] = 1.0  # model 0 only on kernels
  out = grouped(jnp.asarray(g.ravel()))
  np.testing.assert_allclose(out["a"]["kernel"], fts[0]["a"]["kernel"])
  np.testing.assert_allclose(out["b"]["bias"], base["b"]["bias"])


def test_errors():
  base = {"a": jnp.zeros(2)}
  with pytest.raises(ValueError, match="empty"):
    merge.task_arithmetic_recipe(base, [])
  with pytest.raises(ValueError, match="matches none"):
    merge.task_arithmetic_recipe(base, [base], groups=["kernel"])
  with pytest.raises(ValueError, match="genome"):
    merge.task_arithmetic_recipe(base, [base])(jnp.zeros(3))
  with pytest.raises(ValueError, match="sigma0"):
    merge.evolve_merge(lambda x: x, lambda x: 0.0, np.zeros(2), sigma0=0.0)
  with pytest.raises(ValueError, match="generations"):
    merge.evolve_merge(lambda x: x, lambda x: 0.0, np.zeros(2), generations=0)


def test_without_cma_the_error_names_the_extra(monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, "cma", None)  # what an environment without the optional extra sees
  with pytest.raises(ImportError, match=r"paperlab\[evolve\]"):
    merge.evolve_merge(lambda x: {"w": jnp.asarray(x)}, lambda p: 0.0, np.zeros(2), generations=1)
