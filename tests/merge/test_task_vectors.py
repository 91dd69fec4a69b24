"""Unit tests for paperlab.merge.task_vectors: TA, TIES, DARE(x), breadcrumbs, PCB, ExPO, BitDelta."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.merge as pm


def _base():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"layer": {"kernel": jax.random.normal(k1, (8, 6)), "bias": jax.random.normal(k2, (6,))},
          "count": jnp.asarray(3, jnp.int32)}


def _finetunes(base, n=3, scale=0.1, seed=1):
  out = []
  for i in range(n):
    key = jax.random.key(seed + i)
    out.append(jax.tree.map(lambda x: x + scale * jax.random.normal(key, x.shape) if x.dtype == jnp.float32 else x,
                            base))
  return out


def test_task_vector_round_trip_and_negation():
  base = _base()
  ft = _finetunes(base, 1)[0]
  tau = pm.task_vector(base, ft)
  np.testing.assert_allclose(pm.apply_task_vector(base, tau)["layer"]["kernel"], ft["layer"]["kernel"], rtol=1e-6)
  neg = pm.apply_task_vector(ft, tau, -1.0)
  np.testing.assert_allclose(neg["layer"]["kernel"], base["layer"]["kernel"], atol=1e-6)


def test_task_arithmetic_is_base_plus_scaled_sum_of_task_vectors():
  base = _base()
  fts = _finetunes(base)
  out = pm.task_arithmetic(base, fts, 0.4, weights=[1.0, 2.0, 0.5])
  want = base["layer"]["kernel"] + 0.4 * sum(w * (f["layer"]["kernel"] - base["layer"]["kernel"])
                                             for w, f in zip([1.0, 2.0, 0.5], fts))
  np.testing.assert_allclose(out["layer"]["kernel"], want, rtol=1e-5, atol=1e-6)
  assert out["count"] == base["count"]


def test_trim_to_density_keeps_the_k_largest_magnitudes():
  x = jnp.array([0.1, -5.0, 0.3, 2.0, -0.2, 0.05, 1.0, -0.7, 0.0, 3.0])
  out = pm.trim_to_density(x, 0.3)
  np.testing.assert_array_equal(out, jnp.where(jnp.abs(x) >= 2.0, x, 0.0))
  np.testing.assert_array_equal(pm.trim_to_density(x, 1.0), x)
  assert float(pm.magnitude_threshold([x[:5], x[5:]], 0.3)) == 2.0  # over several arrays at once


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_density_outside_unit_interval_is_rejected(bad):
  base = _base()
  with pytest.raises(ValueError, match="density"):
    pm.ties(base, _finetunes(base), bad)
  with pytest.raises(ValueError, match="density"):
    pm.dare_merge(jax.random.key(0), base, _finetunes(base), bad)


def test_merges_reject_empty_and_mismatched_model_lists():
  base = _base()
  with pytest.raises(ValueError, match="empty"):
    pm.ties(base, [])
  bad = _finetunes(base, 1)[0]
  bad["layer"]["kernel"] = jnp.zeros((8, 5))
  with pytest.raises(ValueError, match="layer/kernel"):
    pm.task_arithmetic(base, [bad])
  with pytest.raises(ValueError, match="scope"):
    pm.ties(base, _finetunes(base), scope="layer")


def test_ties_keeps_only_agreeing_signs():
  base = {"w": jnp.zeros(4)}
  fts = [{"w": jnp.array([1.0, -1.0, 2.0, 0.5])}, {"w": jnp.array([3.0, 2.0, -1.0, 0.0])},
         {"w": jnp.array([-1.0, 2.0, -2.0, 0.0])}]
  out = pm.ties(base, fts, density=1.0, lam=1.0)["w"]
  # sums: 3 -> +, 3 -> +, -1 -> -, 0.5 -> + ; disjoint means of agreeing entries
  np.testing.assert_allclose(out, [2.0, 2.0, -1.5, 0.5])
  summed = pm.ties(base, fts, density=1.0, lam=1.0, merge="sum")["w"]
  np.testing.assert_allclose(summed, [4.0, 4.0, -3.0, 0.5])
  assert float(pm.elect_sign([f["w"] for f in fts])[2]) == -1.0


def test_ties_global_scope_ranks_across_leaves_and_tensor_scope_within():
  base = {"big": jnp.zeros(10), "small": jnp.zeros(10)}
  ft = {"big": jnp.arange(1.0, 11.0) * 10, "small": jnp.arange(1.0, 11.0) * 0.1}
  g = pm.ties(base, [ft], 0.5, scope="global")
  t = pm.ties(base, [ft], 0.5, scope="tensor")
  assert int(jnp.sum(g["small"] != 0)) == 0 and int(jnp.sum(g["big"] != 0)) == 10
  assert int(jnp.sum(t["small"] != 0)) == 5 and int(jnp.sum(t["big"] != 0)) == 5


def test_ties_sampled_threshold_keeps_about_density():
  x = jax.random.normal(jax.random.key(3), (300, 400))
  base = {"w": jnp.zeros_like(x)}
  out = pm.ties(base, [{"w": x}], 0.2, scope="tensor", threshold="sample", sample_size=1 << 14)["w"]
  frac = float(jnp.mean(out != 0))
  assert abs(frac - 0.2) < 5 * np.sqrt(0.2 * 0.8 / (1 << 14))
  exact = pm.ties(base, [{"w": x}], 0.2, scope="tensor")["w"]
  assert int(jnp.sum(exact != 0)) == int(0.2 * x.size)


def test_ties_jits_and_matches_eager():
  base = _base()
  fts = _finetunes(base)
  eager = pm.ties(base, fts, 0.3, 0.8)
  jitted = jax.jit(lambda b, f, lam: pm.ties(b, f, 0.3, lam))(base, fts, jnp.float32(0.8))
  np.testing.assert_allclose(jitted["layer"]["kernel"], eager["layer"]["kernel"], rtol=1e-6)


def test_dare_at_density_one_returns_the_finetune_and_is_deterministic_per_key():
  base = _base()
  ft = _finetunes(base, 1)[0]
  np.testing.assert_allclose(pm.dare(jax.random.key(0), base, ft, 1.0)["layer"]["kernel"], ft["layer"]["kernel"],
                             rtol=1e-6)
  a = pm.dare(jax.random.key(7), base, ft, 0.3)
  b = pm.dare(jax.random.key(7), base, ft, 0.3)
  c = pm.dare(jax.random.key(8), base, ft, 0.3)
  np.testing.assert_array_equal(a["layer"]["kernel"], b["layer"]["kernel"])
  assert not np.array_equal(a["layer"]["kernel"], c["layer"]["kernel"])


@pytest.mark.parametrize("sampler", ["threefry", "hash"])
def test_dare_keeps_about_density_and_rescales_by_its_inverse(sampler):
  base = {"w": jnp.zeros((200, 100))}
  ft = {"w": jnp.ones((200, 100))}
  out = pm.dare(jax.random.key(1), base, ft, 0.1, sampler=sampler)["w"]
  kept = out != 0
  assert abs(float(jnp.mean(kept)) - 0.1) < 0.01
  np.testing.assert_allclose(out[kept], 10.0, rtol=1e-6)
  q = pm.dare(jax.random.key(1), base, ft, 0.1, rescale=4.0, sampler=sampler)["w"]  # DAREx-q: factor 1/q
  np.testing.assert_allclose(q[kept], 4.0, rtol=1e-6)
  l1 = pm.dare(jax.random.key(1), base, ft, 0.1, rescale="l1", sampler=sampler)["w"]
  assert float(jnp.sum(jnp.abs(l1))) == pytest.approx(float(jnp.sum(ft["w"])), rel=1e-5)


def test_dare_rejects_bad_rescale():
  base = _base()
  with pytest.raises(ValueError, match="rescale"):
    pm.dare(jax.random.key(0), base, base, 0.5, rescale="l3")
  with pytest.raises(ValueError, match="rescale"):
    pm.dare(jax.random.key(0), base, base, 0.5, rescale=-1.0)


def test_darex_q_picks_the_best_q_by_score():
  base = {"w": jnp.zeros((50,))}
  ft = {"w": jnp.ones((50,))}
  target = 1.0
  # score: closeness of the mean delta to the fine-tune's; density 0.1 keeps ~5 entries
  score = lambda p: -abs(float(jnp.mean(p["w"])) - target)
  params, q = pm.darex_q(jax.random.key(0), base, ft, 0.1, [0.05, 0.1, 0.5], score)
  kept = float(jnp.mean(pm.random_mask(jax.random.fold_in(jax.random.key(0), 0), base, 0.1)["w"]))
  assert q == min([0.05, 0.1, 0.5], key=lambda c: abs(kept / c - target))
  with pytest.raises(ValueError, match="q_grid"):
    pm.darex_q(jax.random.key(0), base, ft, 0.1, [], score)


def test_breadcrumbs_keeps_the_middle_band():
  base = {"w": jnp.zeros(100)}
  ft = {"w": jnp.arange(1.0, 101.0)}
  out = pm.breadcrumbs(base, [ft], beta=0.5, gamma=0.1, lam=1.0)["w"]
  kept = np.flatnonzero(np.asarray(out))
  assert kept.min() == 50 and kept.max() == 89 and kept.size == 40  # drop 50 smallest and 10 largest
  with pytest.raises(ValueError, match="beta"):
    pm.breadcrumbs(base, [ft], beta=0.95, gamma=0.1)


def test_breadcrumbs_without_dropping_is_task_arithmetic():
  base = _base()
  fts = _finetunes(base)
  out = pm.breadcrumbs(base, fts, 0.0, 0.0, 0.3)
  ta = pm.task_arithmetic(base, fts, 0.3)
  np.testing.assert_allclose(out["layer"]["kernel"], ta["layer"]["kernel"], rtol=1e-6)


def test_pcb_with_identical_tasks_keeps_the_top_entries_of_the_task_vector():
  base = {"w": jnp.zeros(200)}
  tau = jax.random.normal(jax.random.key(2), (200,))
  ft = {"w": tau}
  out = pm.pcb(base, [ft, ft, ft], ratio=0.2, lam=1.0, clamp_q=0.0)["w"]
  nz = np.asarray(out) != 0
  np.testing.assert_allclose(np.asarray(out)[nz], np.asarray(tau)[nz], rtol=1e-5)
  assert 0.15 <= nz.mean() <= 0.2
  # the kept entries are the largest-magnitude ones
  assert np.abs(np.asarray(tau)[nz]).min() >= np.abs(np.asarray(tau)[~nz]).max()


def test_pcb_is_invariant_to_task_order():
  base = _base()
  fts = _finetunes(base)
  a = pm.pcb(base, fts, 0.3, 0.7)
  b = pm.pcb(base, fts[::-1], 0.3, 0.7)
  np.testing.assert_allclose(a["layer"]["kernel"], b["layer"]["kernel"], rtol=1e-5, atol=1e-7)
  t = pm.pcb(base, fts, 0.3, 0.7, scope="tensor")
  assert t["layer"]["kernel"].shape == (8, 6)


def test_extrapolate_and_bitdelta():
  base = _base()
  ft = _finetunes(base, 1)[0]
  np.testing.assert_allclose(pm.extrapolate(base, ft, 0.0)["layer"]["kernel"], ft["layer"]["kernel"], rtol=1e-6)
  ex = pm.extrapolate(base, ft, 0.5)["layer"]["kernel"]
  np.testing.assert_allclose(ex - base["layer"]["kernel"], 1.5 * (ft["layer"]["kernel"] - base["layer"]["kernel"]),
                             rtol=1e-5, atol=1e-6)
  d = ft["layer"]["kernel"] - base["layer"]["kernel"]
  bd = pm.bitdelta(base, ft)["layer"]["kernel"] - base["layer"]["kernel"]
  np.testing.assert_allclose(bd, jnp.mean(jnp.abs(d)) * jnp.sign(d), rtol=1e-5, atol=1e-6)
  rows = pm.bitdelta(base, ft, axis=-1)["layer"]["kernel"] - base["layer"]["kernel"]
  np.testing.assert_allclose(jnp.abs(rows)[0], jnp.mean(jnp.abs(d), axis=0), rtol=1e-5)


def _leaves_with_deltas(deltas, seed=0):
  rng = np.random.default_rng(seed)
  bs = tuple(jnp.asarray(rng.standard_normal(d.shape).astype(d.dtype)) for d in deltas)
  ms = tuple(b + jnp.asarray(d) for b, d in zip(bs, deltas))
  exact = np.abs(np.concatenate([(np.asarray(m, np.float32) - np.asarray(b, np.float32)).ravel()
                                 for b, m in zip(bs, ms)]))
  return bs, ms, np.sort(exact)[::-1]


@pytest.mark.parametrize("compaction", ["host", "xla"])
def test_exact_threshold_by_bracketing_is_the_kth_largest(compaction):
  rng = np.random.default_rng(1)
  deltas = [0.01 * rng.standard_normal(30_000).astype(np.float32), 0.02 * rng.standard_normal((50, 40)),
            np.float32(0.005) * rng.standard_cauchy(7).astype(np.float32)]
  deltas = [np.asarray(d, np.float32) for d in deltas]
  bs, ms, desc = _leaves_with_deltas(deltas)
  for density in ((0.9, 0.2, 1e-4) if compaction == "host" else (0.2, 1e-4)):
    k = max(1, int(density * desc.size))
    got = pm.task_vectors._kth_largest_delta(bs, ms, k, sample_size=1 << 11, compaction=compaction)
    assert float(got) == desc[k - 1], (density, float(got), desc[k - 1])


@pytest.mark.parametrize("compaction", ["host", "xla"])
def test_exact_threshold_stays_exact_when_the_bracket_overflows_or_misses(compaction):
  # half of the entries tie at one magnitude: the bracket around the 40th percentile holds them all (overflow)
  rng = np.random.default_rng(2)
  d = np.where(rng.random(40_000) < 0.5, np.float32(0.25), rng.standard_normal(40_000).astype(np.float32))
  d[:3] = np.float32(1e-39)  # subnormal deltas, which XLA flushes to zero on CPU
  bs, ms, desc = _leaves_with_deltas([d.astype(np.float32)])
  for density in (0.4, 0.99):
    k = int(density * desc.size)
    got = pm.task_vectors._kth_largest_delta(bs, ms, k, sample_size=1 << 10, compaction=compaction)
    ref = pm.task_vectors._bisect_bits(  # plain exact bisection over all entries
        lambda v: jnp.sum(pm.task_vectors._delta_bits(bs[0], ms[0]) >= v), k, 0, 0x7F800000)
    assert float(got) == float(pm.task_vectors._bits_to_float(ref))


def test_ties_exact_global_threshold_keeps_exactly_the_top_k_of_a_large_tree():
  rng = np.random.default_rng(3)
  base = {"a": jnp.zeros((700, 1000)), "b": jnp.zeros((400_000,))}  # 1.1M entries: the bracketing path
  tau = {"a": jnp.asarray(rng.standard_normal((700, 1000)), jnp.float32),
         "b": jnp.asarray(0.5 * rng.standard_normal(400_000), jnp.float32)}
  ft = jax.tree.map(lambda b, t: b + t, base, tau)
  out = pm.ties(base, [ft], 0.2, 1.0)
  kept = sum(int(jnp.sum(x != 0)) for x in jax.tree.leaves(out))
  assert kept == int(0.2 * 1_100_000)  # continuous values: no ties at the threshold
  mags = np.sort(np.abs(np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(tau)])))[::-1]
  thr = mags[kept - 1]
  for name in ("a", "b"):
    np.testing.assert_array_equal(np.asarray(out[name]) != 0, np.abs(np.asarray(tau[name])) >= thr)


def test_ties_exact_threshold_is_the_same_eager_and_under_jit(monkeypatch):
  # a small sample makes this 60k-entry tree take the bracketing path: host compaction eagerly, XLA under jit
  monkeypatch.setattr(pm.task_vectors, "_BRACKET_SAMPLE", 1 << 10)
  rng = np.random.default_rng(4)
  base = {"a": jnp.zeros((200, 250)), "b": jnp.zeros((10_000,))}
  fts = [jax.tree.map(lambda x: x + jnp.asarray(rng.standard_normal(x.shape), jnp.float32), base) for _ in range(3)]
  eager = pm.ties(base, fts, 0.2, 1.0)
  jitted = jax.jit(lambda b, f: pm.ties(b, f, 0.2, 1.0))(base, fts)
  for name in ("a", "b"):
    np.testing.assert_array_equal(eager[name], jitted[name])


def _brute_kth(bs, ms, k):
  d = np.abs(np.concatenate([(np.asarray(m, np.float32) - np.asarray(b, np.float32)).ravel() for b, m in zip(bs, ms)]))
  return np.sort(d)[::-1][k - 1]


def test_exact_thresholds_for_many_models_in_groups_and_per_tensor_scopes():
  # 6 models = two groups of the host path's 4-models-per-uint8 codes; leaves of 30k and 20k entries take the
  # bracketing path (per tensor too: 4096 sampled entries each), the 500-entry leaf plain bisection
  rng = np.random.default_rng(5)
  shapes = [(300, 100), (20_000,), (500,)]
  bs = tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes)
  mss = [tuple(b + jnp.asarray(rng.standard_normal(b.shape) * rng.uniform(0.01, 0.1), jnp.float32) for b in bs)
         for _ in range(6)]
  n = sum(b.size for b in bs)
  for density in (0.2, 0.03):
    k = max(1, int(density * n))
    got = np.asarray(pm.task_vectors._kth_largest_deltas(bs, mss, k, sample_size=1 << 11))
    np.testing.assert_array_equal(got, [_brute_kth(bs, ms, k) for ms in mss])
    per_leaf = pm.task_vectors._tensor_thresholds(bs, mss, density, "exact", 1 << 16)
    for i, b in enumerate(bs):
      kb = max(1, int(density * b.size))
      np.testing.assert_array_equal(np.asarray(per_leaf[i]), [_brute_kth((b,), (ms[i],), kb) for ms in mss])


def test_exact_threshold_host_path_falls_back_when_the_bracket_misses(monkeypatch):
  # a bracket far from the k-th largest (ranks near the top of the sample): the host path must still be exact
  monkeypatch.setattr(pm.task_vectors, "_bracket_ranks", lambda n, k, s: (1, 3))
  rng = np.random.default_rng(6)
  bs = (jnp.asarray(rng.standard_normal(40_000), jnp.float32),)
  mss = [(bs[0] + jnp.asarray(rng.standard_normal(40_000), jnp.float32),) for _ in range(2)]
  k = 8_000
  calls = []
  small = pm.task_vectors._kth_largest_delta_small
  monkeypatch.setattr(pm.task_vectors, "_kth_largest_delta_small", lambda *a: calls.append(1) or small(*a))
  got = np.asarray(pm.task_vectors._kth_largest_deltas(bs, mss, k, sample_size=1 << 11, compaction="host"))
  np.testing.assert_array_equal(got, [_brute_kth(bs, ms, k) for ms in mss])
  assert len(calls) == 2  # both models took the fallback
