"""Hypothesis properties of merge part B: permutation symmetry, weight matching, merging identical models,
reductions to the plain average, FedAvg weights."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import merge

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)


def _mlp(rng, widths):
  dims = list(widths)
  params = {"hidden": {}, "head": {}}
  for i, (a, b) in enumerate(zip(dims[:-2], dims[1:-1])):
    params["hidden"][i] = {"kernel": rng.normal(size=(a, b)).astype(np.float32),
                           "bias": rng.normal(size=b).astype(np.float32)}
  params["head"] = {"kernel": rng.normal(size=dims[-2:]).astype(np.float32),
                    "bias": rng.normal(size=dims[-1]).astype(np.float32)}
  return params


def _forward(params, x):
  for i in sorted(params["hidden"]):
    x = np.maximum(x @ np.asarray(params["hidden"][i]["kernel"]) + np.asarray(params["hidden"][i]["bias"]), 0)
  return x @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])


mlp_widths = st.lists(st.integers(2, 9), min_size=3, max_size=5)


@SETTINGS
@given(widths=mlp_widths, seed=st.integers(0, 2 ** 16))
def test_a_permuted_network_computes_the_same_function(widths, seed):
  rng = np.random.default_rng(seed)
  params = _mlp(rng, widths)
  spec = merge.mlp_spec(params)
  perms = {p: rng.permutation(n) for p, n in
           ((f"hidden/{i}", params["hidden"][i]["bias"].shape[0]) for i in params["hidden"])}
  x = rng.normal(size=(4, widths[0])).astype(np.float32)
  np.testing.assert_allclose(_forward(merge.apply_permutation(spec, perms, params), x), _forward(params, x),
                             rtol=1e-5, atol=1e-5)


@SETTINGS
@given(widths=mlp_widths, seed=st.integers(0, 2 ** 16))
def test_weight_matching_with_a_permuted_copy_recovers_the_permutation(widths, seed):
  rng = np.random.default_rng(seed)
  params = _mlp(rng, widths)
  spec = merge.mlp_spec(params)
  perms = {f"hidden/{i}": rng.permutation(params["hidden"][i]["bias"].shape[0]) for i in params["hidden"]}
  permuted = jax.tree.map(np.asarray, merge.apply_permutation(spec, perms, params))
  found = merge.weight_matching(seed, spec, params, permuted)
  for p, v in merge.invert_permutation(perms).items():
    np.testing.assert_array_equal(found[p], v)


models_st = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(0, 2 ** 16))


def _trees(n, rows, seed):
  rng = np.random.default_rng(seed)
  return [{"k": rng.normal(size=(rows, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
          for _ in range(n)], rng


@SETTINGS
@given(cfg=models_st)
def test_merging_identical_models_returns_the_model(cfg):
  n, rows, seed = cfg
  (model,), rng = _trees(1, rows, seed)
  fishers = [{k: rng.uniform(0.1, 2.0, size=v.shape).astype(np.float32) for k, v in model.items()} for _ in range(n)]
  g = rng.normal(size=(rows, rows))
  grams = [{"k": (g @ g.T + np.eye(rows) * (i + 1)).astype(np.float32)} for i in range(n)]
  outs = [merge.fisher_merge([model] * n, fishers), merge.regmean_merge([model] * n, grams),
          merge.aggregate([model] * n, rng.uniform(0.1, 1.0, size=n)),
          merge.gradient_matching(jax.tree.map(np.zeros_like, model), [model] * n, fishers)]
  for out in outs:
    for k in model:
      np.testing.assert_allclose(out[k], model[k], rtol=1e-4, atol=1e-5)
  base = {"k": np.zeros((rows, 3), np.float32)}
  state = merge.opcm_init(base)
  for _ in range(n):
    state = merge.opcm_step(state, {"k": model["k"]})
  np.testing.assert_allclose(merge.opcm_params(state)["k"], model["k"], rtol=1e-4, atol=1e-4)


@SETTINGS
@given(cfg=models_st, fisher=st.floats(1e-3, 1e3))
def test_fisher_merge_with_equal_fishers_is_the_average(cfg, fisher):
  n, rows, seed = cfg
  models, _ = _trees(n, rows, seed)
  fishers = [jax.tree.map(lambda v: np.full_like(v, fisher), models[0])] * n
  out = merge.fisher_merge(models, fishers)
  for k in models[0]:
    np.testing.assert_allclose(out[k], np.mean([m[k] for m in models], 0), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(cfg=models_st)
def test_regmean_with_identity_grams_is_the_average(cfg):
  n, rows, seed = cfg
  models, _ = _trees(n, rows, seed)
  out = merge.regmean_merge(models, [{"k": np.eye(rows, dtype=np.float32)}] * n)
  for k in models[0]:
    np.testing.assert_allclose(out[k], np.mean([m[k] for m in models], 0), rtol=1e-4, atol=1e-5)


@SETTINGS
@given(cfg=models_st, scale=st.floats(1e-3, 1e3))
def test_fedavg_weights_are_normalised(cfg, scale):
  n, rows, seed = cfg
  models, rng = _trees(n, rows, seed)
  w = rng.uniform(0.0, 1.0, size=n) + 1e-3
  out = merge.aggregate(models, w)
  np.testing.assert_allclose(out["k"], sum(wi * m["k"] for wi, m in zip(w / w.sum(), models)), rtol=1e-4, atol=1e-5)
  scaled = merge.aggregate(models, w * scale)  # only relative weights matter
  np.testing.assert_allclose(scaled["k"], out["k"], rtol=1e-5, atol=1e-6)
