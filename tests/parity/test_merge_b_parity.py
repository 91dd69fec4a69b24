"""Parity of merge part B against independent oracles: scipy/brute-force assignment and the papers' equations
written directly in NumPy (float64)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from paperlab import merge


def _mlp1(rng, n_in=5, n_hidden=6, n_out=3):
  return {"hidden": {0: {"kernel": rng.normal(size=(n_in, n_hidden)).astype(np.float32),
                         "bias": rng.normal(size=n_hidden).astype(np.float32)}},
          "head": {"kernel": rng.normal(size=(n_hidden, n_out)).astype(np.float32),
                   "bias": rng.normal(size=n_out).astype(np.float32)}}


def test_weight_matching_one_hidden_layer_is_the_optimal_assignment():
  # with a single permutation, weight matching is one linear assignment problem; check against scipy on the cost
  # written out by hand, and against brute force over all 6! permutations
  rng = np.random.default_rng(0)
  a, b = _mlp1(rng), _mlp1(rng)
  cost = (a["hidden"][0]["kernel"].T.astype(np.float64) @ b["hidden"][0]["kernel"]
          + np.outer(a["hidden"][0]["bias"], b["hidden"][0]["bias"])
          + a["head"]["kernel"].astype(np.float64) @ b["head"]["kernel"].T)
  _, want = linear_sum_assignment(cost, maximize=True)
  got = merge.weight_matching(0, merge.mlp_spec(a), a, b)["hidden/0"]
  np.testing.assert_array_equal(got, want)
  best = max(itertools.permutations(range(6)), key=lambda p: cost[np.arange(6), list(p)].sum())
  np.testing.assert_allclose(cost[np.arange(6), got].sum(), cost[np.arange(6), list(best)].sum(), rtol=1e-12)


def test_regmean_matches_the_closed_form_in_numpy():
  rng = np.random.default_rng(1)
  alpha = 0.95
  ws = [rng.normal(size=(6, 4)) for _ in range(3)]
  xs = [rng.normal(size=(40, 6)) * rng.uniform(0.5, 2.0, size=6) for _ in range(3)]
  grams = [x.T @ x / 40 for x in xs]
  shrunk = [alpha * g + (1 - alpha) * np.diag(np.diag(g)) for g in grams]
  want = np.linalg.solve(sum(shrunk), sum(g @ w for g, w in zip(shrunk, ws)))
  models = [{"k": jnp.asarray(w, jnp.float32), "b": jnp.full((4,), float(i))} for i, w in enumerate(ws)]
  got = merge.regmean_merge(models, [{"k": jnp.asarray(g, jnp.float32)} for g in grams], alpha=alpha)
  np.testing.assert_allclose(got["k"], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["b"], np.full(4, 1.0))


def test_fisher_merge_matches_the_equation_in_numpy():
  rng = np.random.default_rng(2)
  shapes = {"a": (3, 4), "b": (4,)}
  thetas = [{k: rng.normal(size=s) for k, s in shapes.items()} for _ in range(3)]
  fishers = [{k: rng.uniform(0, 2, size=s) ** 3 for k, s in shapes.items()} for _ in range(3)]
  lam, eps = [0.2, 0.5, 0.3], 1e-6
  for normalize in (False, True):
    fs = fishers
    if normalize:  # each model's Fisher divided by its global L2 norm (FusionBench normalize_fisher_weight)
      fs = [{k: f[k] / np.sqrt(sum(np.sum(v ** 2) for v in f.values())) for k in f} for f in fishers]
    want = {k: sum(l * (f[k] + eps) * t[k] for l, f, t in zip(lam, fs, thetas))
               / sum(l * (f[k] + eps) for l, f in zip(lam, fs)) for k in shapes}
    cast = lambda tree: {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}
    got = merge.fisher_merge([cast(t) for t in thetas], [cast(f) for f in fishers], weights=lam, eps=eps,
                             normalize=normalize)
    for k in shapes:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6)


def test_gradient_matching_matches_the_equation_in_numpy():
  rng = np.random.default_rng(3)
  base = rng.normal(size=(5,))
  thetas = [base + rng.normal(size=5) for _ in range(3)]
  hs = [rng.uniform(0, 1, size=5) for _ in range(3)]
  h0 = rng.uniform(0, 1, size=5)
  s, s0, alpha, delta = [100.0, 50.0, 200.0], 30.0, 0.7, 1e-12
  den = alpha * sum(si * h for si, h in zip(s, hs)) + s0 * h0 + delta
  want = base + alpha * sum((si * h + s0 * h0 + delta) / den * (t - base) for si, h, t in zip(s, hs, thetas))
  f32 = lambda v: {"w": jnp.asarray(v, jnp.float32)}
  got = merge.gradient_matching(f32(base), [f32(t) for t in thetas], [f32(h) for h in hs], base_hessian=f32(h0),
                                alpha=alpha, sizes=s, base_size=s0, delta=delta)
  np.testing.assert_allclose(got["w"], want, rtol=1e-5, atol=1e-6)


def _opcm_numpy(base, models, alpha):
  """OPCM (arXiv:2501.09522) written from the paper's update in float64 NumPy: SVD projection of every 2-D leaf,
  summed task vectors for the others, rescale to the running mean task-vector norm."""
  norm = lambda tree: np.sqrt(sum(np.sum(v ** 2) for v in tree.values()))
  merged = dict(models[0])
  lam, norms = 1.0, [norm({k: models[0][k] - base[k] for k in base})]
  for m in models[1:]:
    tau = {k: m[k] - base[k] for k in base}
    norms.append(norm(tau))
    v = {}
    for k in base:
      prev = merged[k] - base[k]
      if prev.ndim == 2:
        u, sv, vh = np.linalg.svd(prev, full_matrices=True)
        r = int(np.argmax(np.cumsum(sv) / sv.sum() > alpha))
        p = u.T @ tau[k] @ vh.T
        np.fill_diagonal(p, 0.0)
        p[:r, :r] = 0.0
        tau_k = u @ p @ vh
      else:
        tau_k = tau[k]
      v[k] = lam * prev + tau_k
    lam = norm(v) / np.mean(norms)
    merged = {k: base[k] + v[k] / lam for k in base}
  return merged


def test_opcm_matches_a_numpy_transcription_of_the_paper():
  rng = np.random.default_rng(4)
  base = {"w": rng.normal(size=(7, 5)), "b": rng.normal(size=(5,)), "v": rng.normal(size=(5, 9))}
  models = [{k: x + rng.normal(size=x.shape) * (0.5 + i) for k, x in base.items()} for i in range(4)]
  want = _opcm_numpy(base, models, 0.5)
  f32 = lambda t: {k: jnp.asarray(v, jnp.float32) for k, v in t.items()}
  state = merge.opcm_init(f32(base))
  step = jax.jit(lambda s, m: merge.opcm_step(s, m, alpha=0.5))
  for m in models:
    state = step(state, f32(m))
  for k in base:
    np.testing.assert_allclose(merge.opcm_params(state)[k], want[k], rtol=1e-4, atol=1e-4)
