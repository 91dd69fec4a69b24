"""EQ-Net's elastic quantization (Xu et al., ICCV 2023): the elastic fake quantizer against paperlab.quant.quantize
for every format, the sandwich sampler, WDR's moments against scipy.stats and a transcription of the official
``runner/criterion.py`` (github.com/xuke225/EQ-Net at 86b9e417ec906fb87493fd1c00feb22574341285) run in PyTorch,
GPG's KL against scipy.special.rel_entr."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import quant

FORMS = [(pc, sym) for pc in (False, True) for sym in (False, True)]


def _reference(w: np.ndarray, bits: int, per_channel: bool, symmetric: bool) -> np.ndarray:
  """paperlab.quant.quantize's int{b} / uint{b} grid (float32 scales), per output channel = over all other axes."""
  fmt = f"int{bits}" if symmetric else f"uint{bits}"
  w2 = jnp.asarray(w.reshape(-1, w.shape[-1]))
  qa = quant.quantize(w2, fmt, axis=0 if per_channel else None, scale_dtype=jnp.float32)
  return np.asarray(qa.dequantize()).reshape(w.shape)


def _atol(w) -> float:
  return 1e-6 * float(np.max(np.abs(w)))  # float32 rounding of the dequantized value; a changed code is a whole step


def test_every_form_is_quantize_of_its_format():
  w = np.random.default_rng(0).standard_normal((24, 10)).astype(np.float32) * 0.3 + 0.05
  for bits in range(2, 9):  # every format int2..int8, uint2..uint8; each symmetry per tensor and per channel
    for pc, sym in [(bits % 2 == 0, True), (bits % 2 == 1, False)]:
      got = np.asarray(quant.elastic_fake_quant(jnp.asarray(w), quant.QConfig(bits, pc, sym)))
      np.testing.assert_allclose(got, _reference(w, bits, pc, sym), rtol=0, atol=_atol(w),
                                 err_msg=f"bits={bits} per_channel={pc} symmetric={sym}")
      levels = np.unique(got[:, 0] if pc else got)
      assert len(levels) <= 2 ** bits


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([2, 3, 4, 8]), st.sampled_from(FORMS),
       st.sampled_from([(7, 5), (3, 3, 4, 6)]), st.floats(1e-3, 1e2))
def test_forms_match_quantize_on_any_kernel_shape_and_scale(seed, bits, form, shape, spread):
  w = (spread * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)
  got = np.asarray(quant.elastic_fake_quant(jnp.asarray(w), quant.QConfig(bits, *form)))
  np.testing.assert_allclose(got, _reference(w, bits, *form), rtol=0, atol=_atol(w))


def test_traced_config_under_jit_and_vmap_equals_static_forms():
  w = jnp.asarray(np.random.default_rng(1).standard_normal((16, 6)), jnp.float32)
  cfgs = quant.space_configs(quant.ElasticSpace(bits=(2, 4, 8)))
  batched = jax.jit(jax.vmap(quant.elastic_fake_quant, in_axes=(None, 0)))(w, cfgs)
  assert batched.shape == (12, 16, 6)
  one = jax.jit(quant.elastic_fake_quant)
  for i in range(12):
    cfg = quant.QConfig(int(cfgs.bits[i]), bool(cfgs.per_channel[i]), bool(cfgs.symmetric[i]))
    static = quant.elastic_fake_quant(w, cfg)
    np.testing.assert_allclose(batched[i], static, rtol=0, atol=_atol(w))
    np.testing.assert_allclose(one(w, jax.tree.map(lambda a: a[i], cfgs)), static, rtol=0, atol=_atol(w))
  static_jit = jax.jit(quant.elastic_fake_quant, static_argnums=1)(w, quant.QConfig(4, True, True))
  np.testing.assert_allclose(static_jit, quant.elastic_fake_quant(w, quant.QConfig(4, True, True)), atol=_atol(w))


def test_gradient_is_straight_through_and_dtype_kept():
  w = jnp.asarray(np.random.default_rng(2).standard_normal((8, 4)), jnp.bfloat16)
  c = jnp.arange(32.0).reshape(8, 4)
  cfgs = quant.space_configs(quant.ElasticSpace(bits=(2,)))
  loss = lambda v, cfg: jnp.sum(quant.elastic_fake_quant(v, cfg).astype(jnp.float32) * c)
  g = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(w, cfgs)  # the four forms at 2 bits
  assert g.shape == (4, 8, 4)
  np.testing.assert_array_equal(np.asarray(g, np.float32), np.broadcast_to(np.asarray(c), (4, 8, 4)))
  assert quant.elastic_fake_quant(w, quant.QConfig(3)).dtype == jnp.bfloat16


def test_sandwich_rule_largest_first_smallest_last_random_between():
  space = quant.ElasticSpace(bits=(2, 4, 8))
  sample = quant.sample_configs
  keys = jax.random.split(jax.random.key(0), 200)
  cfgs = jax.jit(jax.vmap(lambda k: quant.sample_configs(k, space, 4)))(keys)  # one program, not one per op
  assert cfgs.bits.shape == (200, 4) and cfgs.bits.dtype == jnp.int32 and cfgs.symmetric.dtype == jnp.bool_
  assert np.all(cfgs.bits[:, 0] == 8) and np.all(cfgs.bits[:, -1] == 2)
  assert set(np.unique(cfgs.bits[:, 1:3]).tolist()) == {2, 4, 8}  # the middle ones are drawn from the whole space
  for flag in (cfgs.per_channel, cfgs.symmetric):  # granularity and symmetry are drawn for every form
    frac = np.mean(np.asarray(flag), axis=0)
    assert np.all((frac > 0.35) & (frac < 0.65))
  one = sample(jax.random.key(3), space, 1)
  assert one.bits.tolist() == [8]
  assert sample(jax.random.key(3), space, 2).bits.tolist() == [8, 2]
  fixed = quant.sample_configs(jax.random.key(1), quant.ElasticSpace(bits=(4,), per_channel=(True,),
                                                                     symmetric=(False,)), 3)
  assert fixed.bits.tolist() == [4, 4, 4] and fixed.per_channel.tolist() == [True] * 3
  assert fixed.symmetric.tolist() == [False] * 3


def test_space_configs_lists_each_form_once():
  cfgs = quant.space_configs()
  rows = set(zip(cfgs.bits.tolist(), cfgs.per_channel.tolist(), cfgs.symmetric.tolist()))
  assert len(rows) == cfgs.bits.shape[0] == 7 * 2 * 2


def _official_moments(w: np.ndarray) -> tuple[float, float]:
  """Transcription of SkewnessLossCalc.skewness_calc / KurtosisLossCalc.kurtosis_calc (runner/criterion.py)."""
  t = torch.from_numpy(w.astype(np.float64))
  mean_output, std_output = torch.mean(t), torch.std(t)
  skewness_val = torch.mean(((t - mean_output) / std_output) ** 3)
  kurtosis_val = torch.mean(((t - mean_output) / std_output) ** 4)
  return float(skewness_val), float(kurtosis_val)


_moments = jax.jit(quant.skewness_kurtosis, static_argnames="ddof")  # one program per length, not one per op


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["normal", "laplace", "uniform", "exponential"]),
       st.integers(5, 300))
def test_moments_match_scipy_and_the_official_code(seed, dist, n):
  w = getattr(np.random.default_rng(seed), dist)(size=n).astype(np.float32)
  if np.std(w) < 1e-3:
    return
  s0, k0 = _moments(jnp.asarray(w), ddof=0)
  np.testing.assert_allclose(float(s0), scipy.stats.skew(w.astype(np.float64)), rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(float(k0), scipy.stats.kurtosis(w.astype(np.float64), fisher=False), rtol=2e-4)
  s1, k1 = _moments(jnp.asarray(w))
  so, ko = _official_moments(w)
  np.testing.assert_allclose([float(s1), float(k1)], [so, ko], rtol=2e-4, atol=2e-5)


def test_wdr_is_the_weighted_squared_moment_gap_averaged_over_tensors():
  rng = np.random.default_rng(4)
  params = {"a": rng.laplace(size=(20, 8)).astype(np.float32), "b": rng.exponential(size=(30,)).astype(np.float32)}
  flat = [v.astype(np.float64).ravel() for v in params.values()]
  want = np.mean([1.0 * scipy.stats.skew(v) ** 2 + 0.015 * (scipy.stats.kurtosis(v, fisher=False) - 1.8) ** 2
                  for v in flat])
  got = jax.jit(lambda p: quant.wdr_loss(p, ddof=0))(jax.tree.map(jnp.asarray, params))
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_wdr_is_zero_at_the_target_moments():
  two_point = jnp.asarray(np.tile([-0.3, 0.3], 50), jnp.float32)  # skewness 0, kurtosis exactly 1
  assert float(quant.wdr_loss(two_point, kurtosis_target=1.0, ddof=0)) == pytest.approx(0.0, abs=1e-10)
  assert float(quant.wdr_loss(two_point, ddof=0)) == pytest.approx(0.015 * 0.8 ** 2, rel=1e-5)
  gauss = jnp.asarray(np.random.default_rng(5).standard_normal(400_000), jnp.float32)
  assert float(quant.wdr_loss(gauss, kurtosis_target=3.0)) < 2e-4  # a Gaussian with the Gaussian's moments
  assert float(quant.wdr_loss(gauss)) == pytest.approx(0.015 * 1.2 ** 2, rel=0.05)  # default target: uniform's 1.8


def test_wdr_gradient_moves_a_heavy_tailed_tensor_toward_the_target():
  w = jnp.asarray(np.random.default_rng(6).laplace(size=(64, 16)), jnp.float32)
  loss = lambda v: quant.wdr_loss(v, kurtosis_weight=1.0)
  w = jax.jit(lambda v: jax.lax.fori_loop(0, 100, lambda i, u: u - 0.5 * jax.grad(loss)(u), v))(w)
  skew, kurt = quant.skewness_kurtosis(w)
  assert abs(float(kurt) - 1.8) < 0.5 and abs(float(skew)) < 0.2  # Laplace kurtosis is 6


def _log_softmax(z):
  return scipy.special.log_softmax(np.asarray(z, np.float64), axis=-1)


def test_gpg_is_a_chain_of_kl_to_the_previous_subnet_against_rel_entr():
  rng = np.random.default_rng(7)
  z = rng.standard_normal((3, 5, 10)).astype(np.float32) * 2
  labels = rng.integers(0, 10, 5)
  for t in (1.0, 2.5):
    p = [np.exp(_log_softmax(zi / t)) for zi in z]
    kl = sum(scipy.special.rel_entr(p[i - 1], p[i]).sum(-1) for i in (1, 2)) * t * t
    np.testing.assert_allclose(quant.gpg_loss(jnp.asarray(z), temperature=t), kl, rtol=1e-5)
    ce = sum(-_log_softmax(z[i])[np.arange(5), labels] for i in (1, 2))
    got = jax.jit(lambda a, y: quant.gpg_loss(list(a), y, alpha=0.3, temperature=t))(jnp.asarray(z), labels)
    np.testing.assert_allclose(got, 0.3 * kl + 0.7 * ce, rtol=1e-5)
  masked = quant.gpg_loss(jnp.asarray(z), where=jnp.arange(5) < 2)
  assert np.all(np.asarray(masked)[2:] == 0) and np.all(np.asarray(masked)[:2] > 0)


def test_gpg_teacher_gets_no_gradient_and_equal_subnets_give_zero():
  z = jnp.asarray(np.random.default_rng(8).standard_normal((2, 4, 6)), jnp.float32)
  g = jax.grad(lambda a: jnp.sum(quant.gpg_loss(a)))(z)
  assert np.all(np.asarray(g[0]) == 0) and np.any(np.asarray(g[1]) != 0)
  np.testing.assert_allclose(quant.gpg_loss(jnp.stack([z[0]] * 3)), 0.0, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.integers(2, 4), st.floats(0.1, 8.0))
def test_gpg_is_non_negative(seed, n, scale):
  z = jnp.asarray(scale * np.random.default_rng(seed).standard_normal((n, 3, 7)), jnp.float32)
  assert np.all(np.asarray(quant.gpg_loss(z)) >= -1e-6)


def test_errors_name_the_argument():
  w = jnp.ones((4, 3))
  for bad, match in [(quant.QConfig(1), "cfg.bits"), (quant.QConfig(9), "cfg.bits"), (quant.QConfig(True), "cfg.bits"),
                     (quant.QConfig(4.5), "cfg.bits"), (quant.QConfig(jnp.int32(9)), "cfg.bits"),
                     (quant.QConfig(4, "yes"), "cfg.per_channel"), (quant.QConfig(4, True, 1.0), "cfg.symmetric")]:
    with pytest.raises(ValueError, match=match):
      quant.elastic_fake_quant(w, bad)
  with pytest.raises(ValueError, match="per-channel"):
    quant.elastic_fake_quant(jnp.ones(5), quant.QConfig(4, True))
  with pytest.raises(TypeError, match="QConfig"):
    quant.elastic_fake_quant(w, (4, True, True))
  with pytest.raises(TypeError, match="floating"):
    quant.elastic_fake_quant(jnp.ones((4, 3), jnp.int32), quant.QConfig(4))
  with pytest.raises(ValueError, match="finite"):
    quant.elastic_fake_quant(jnp.full((4, 3), jnp.nan), quant.QConfig(4))
  key = jax.random.key(0)
  for space, match in [(quant.ElasticSpace(bits=(1, 4)), "space.bits"), (quant.ElasticSpace(bits=()), "space.bits"),
                       (quant.ElasticSpace(per_channel=(1,)), "space.per_channel"),
                       (quant.ElasticSpace(symmetric=(True, True)), "space.symmetric")]:
    with pytest.raises(ValueError, match=match):
      quant.sample_configs(key, space)
  with pytest.raises(ValueError, match="n must"):
    quant.sample_configs(key, quant.ElasticSpace(), 0)
  with pytest.raises(ValueError, match="ddof"):
    quant.skewness_kurtosis(w, ddof=2)
  with pytest.raises(ValueError, match="more than ddof"):
    quant.skewness_kurtosis(jnp.ones(1))
  with pytest.raises(ValueError, match="empty"):
    quant.wdr_loss({})
  with pytest.raises(ValueError, match="kurtosis_weight"):
    quant.wdr_loss(w, kurtosis_weight=-1.0)
  with pytest.raises(TypeError, match="floating"):
    quant.wdr_loss({"a": jnp.ones(3, jnp.int32)})
  z = jnp.ones((2, 4, 5))
  for kwargs, match in [(dict(logits_by_bits=z[:1]), "at least two"),
                        (dict(logits_by_bits=[z[0], jnp.ones((4, 6))]), "one shape"),
                        (dict(logits_by_bits=z, alpha=1.5), "alpha"), (dict(logits_by_bits=z, temperature=0.0),
                                                                        "temperature"),
                        (dict(logits_by_bits=z, labels=jnp.zeros(3, jnp.int32)), "labels"),
                        (dict(logits_by_bits=z, where=jnp.ones(3, bool)), "where")]:
    with pytest.raises(ValueError, match=match):
      quant.gpg_loss(**kwargs)
