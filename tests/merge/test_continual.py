"""OPCM continual merging."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import merge


def _models(n, seed=0, bias=True):
  keys = jax.random.split(jax.random.key(seed), n + 1)
  mk = lambda k: ({"w": jax.random.normal(k, (6, 4)), "b": jax.random.normal(jax.random.fold_in(k, 1), (4,))}
                  if bias else {"w": jax.random.normal(k, (6, 4))})
  return mk(keys[0]), [mk(k) for k in keys[1:]]


def test_first_step_returns_the_first_finetune():
  base, fts = _models(1)
  state = jax.jit(merge.opcm_step)(merge.opcm_init(base), fts[0])
  np.testing.assert_allclose(merge.opcm_params(state)["w"], fts[0]["w"])
  assert int(state.count) == 1 and float(state.lam) == 1.0


def test_init_returns_the_base():
  base, _ = _models(0)
  assert merge.opcm_params(merge.opcm_init(base)) is base


def test_projection_has_no_component_in_the_protected_block():
  m = jax.random.normal(jax.random.key(0), (7, 5))
  t = jax.random.normal(jax.random.key(1), (7, 5))
  alpha = 0.5
  out = merge.project_out_merged(m, t, alpha)
  u, s, vh = np.linalg.svd(np.asarray(m), full_matrices=True)
  r = int(np.argmax(np.cumsum(s) / s.sum() > alpha))
  p = u.T @ np.asarray(out) @ vh.T
  np.testing.assert_allclose(np.diag(p), 0.0, atol=1e-5)
  np.testing.assert_allclose(p[:r, :r], 0.0, atol=1e-5)
  # everything outside the protected entries is kept
  p_t = u.T @ np.asarray(t) @ vh.T
  mask = np.ones_like(p, bool)
  mask[:r, :r] = False
  np.fill_diagonal(mask, False)
  np.testing.assert_allclose(p[mask], p_t[mask], atol=1e-5)


def test_merged_task_vector_keeps_the_average_task_vector_norm():
  base, fts = _models(4)
  state = merge.opcm_init(base)
  step = jax.jit(merge.opcm_step)
  norms = []
  for f in fts:
    state = step(state, f)
    norms.append(np.sqrt(sum(np.sum((np.asarray(f[k]) - np.asarray(base[k])) ** 2) for k in f)))
  merged = merge.opcm_params(state)
  got = np.sqrt(sum(np.sum((np.asarray(merged[k]) - np.asarray(base[k])) ** 2) for k in merged))
  np.testing.assert_allclose(got, np.mean(norms), rtol=1e-5)
  assert float(state.lam) > 1.0


def test_identical_matrix_models_return_that_model():
  base, fts = _models(1, bias=False)
  state = merge.opcm_init(base)
  for _ in range(3):
    state = merge.opcm_step(state, fts[0])
  np.testing.assert_allclose(merge.opcm_params(state)["w"], fts[0]["w"], atol=1e-5)


def test_matrices_filter_and_dtype():
  base, fts = _models(2)
  base = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
  fts = [jax.tree.map(lambda x: x.astype(jnp.bfloat16), f) for f in fts]
  state = merge.opcm_init(base)
  for f in fts:
    state = merge.opcm_step(state, f, matrices="nothing-matches")
  assert merge.opcm_params(state)["w"].dtype == jnp.bfloat16


def test_errors():
  base, fts = _models(1)
  with pytest.raises(ValueError, match="alpha"):
    merge.opcm_step(merge.opcm_init(base), fts[0], alpha=1.5)
  with pytest.raises(ValueError, match="structure"):
    merge.opcm_step(merge.opcm_init(base), {"w": fts[0]["w"]})
