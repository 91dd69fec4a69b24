"""QLLM (arXiv:2310.08041): exact channel disassembly, the analytic channel-assembly error, the official threshold
grid (transcribed from github.com/ModelTC/QLLM, reassembly/cr_module.py, ``CRModule.find_threshold``, commit
4b0871e30e2b0bc68ef3319dbc166286f4ebb560), the threshold search and the low-rank error correction; errors."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import quant
from paperlab.quant import qllm


def _layer(seed=0, tokens=128, d_in=32, d_out=16, outliers=(3, 10), factor=40.0):
  rng = np.random.default_rng(seed)
  x = np.maximum(rng.normal(size=(tokens, d_in)), 0.0).astype(np.float32)
  x[:, list(outliers)] *= factor
  w = (rng.normal(size=(d_in, d_out)) * 0.1).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(w)


@settings(max_examples=25, deadline=None)
@given(x=hnp.arrays(np.float32, (7, 9), elements=st.floats(-50, 50, width=32)),
       theta=st.floats(0.05, 60.0), seed=st.integers(0, 2 ** 16))
def test_disassembly_preserves_the_layer_output(x, theta, seed):
  w = np.random.default_rng(seed).normal(size=(9, 5)).astype(np.float32)
  absmax = np.abs(x).max(0)
  w2, m = quant.channel_disassemble(jnp.asarray(w), jnp.asarray(absmax), theta)
  counts = np.maximum(np.ceil(absmax.astype(np.float64) / theta), 1)
  assert w2.shape == (int(counts.sum()), 5)  # sum_j ceil(max|x_j| / theta) channels
  xe = quant.expand_act(jnp.asarray(x), m)
  np.testing.assert_allclose(np.asarray(xe @ w2), x.astype(np.float64) @ w, rtol=1e-4,
                             atol=1e-4 * (1 + np.abs(x).max() * np.abs(w).max() * 9))
  assert float(jnp.max(jnp.abs(xe))) <= theta * (1 + 1e-5)  # no sub-channel exceeds the threshold


def test_disassembly_counts_is_the_ceiling_of_the_ratio():
  absmax = jnp.asarray([0.0, 0.5, 1.0, 1.01, 7.3])
  np.testing.assert_array_equal(np.asarray(quant.disassembly_counts(absmax, 1.0)), [1, 1, 1, 2, 8])
  assert jax.jit(quant.disassembly_counts)(absmax, 1.0).dtype == jnp.int32


def test_assembly_error_is_the_analytic_pair_term():
  x, w = _layer(1)
  w2, m = quant.channel_assemble(w, x, 5)
  assert w2.shape == (27, 16)
  pairs = [(int(s), int(p)) for s, p in zip(m.source, m.partner) if p >= 0]
  assert len(pairs) == 5 and len({i for pr in pairs for i in pr}) == 10  # one-to-one
  analytic = sum(np.outer(np.asarray(x[:, i] - x[:, k]), np.asarray(w[i] - w[k])) / 2 for i, k in pairs)
  err = np.asarray(x @ w) - np.asarray(quant.expand_act(x, m) @ w2)
  np.testing.assert_allclose(err, analytic, atol=1e-4)


def test_assembly_merges_duplicate_channels_exactly():
  x, w = _layer(2, outliers=())
  x = x.at[:, 7].set(x[:, 4]).at[:, 13].set(x[:, 20])  # even-odd duplicates: (4, 7) and (20, 13)
  w = w.at[7].set(w[4]).at[13].set(w[20])
  w2, m = quant.channel_assemble(w, x, 2)
  pairs = {tuple(sorted((int(s), int(p)))) for s, p in zip(m.source, m.partner) if p >= 0}
  assert pairs == {(4, 7), (13, 20)}
  np.testing.assert_allclose(np.asarray(quant.expand_act(x, m) @ w2), np.asarray(x @ w), atol=1e-5)


def test_assembly_never_merges_excluded_channels():
  x, w = _layer(3)
  exclude = np.zeros(32, bool)
  exclude[:20] = True
  _, m = quant.channel_assemble(w, x, 6, exclude=exclude)
  merged = {int(i) for s, p in zip(m.source, m.partner) if p >= 0 for i in (s, p)}
  assert merged and not merged & set(range(20))


def _official_find_threshold_candidates(x_max, channel_ratio):
  """Transcription of ``CRModule.find_threshold`` (ModelTC/QLLM@4b0871e, reassembly/cr_module.py) without the
  loss: the thresholds at which the loss would be evaluated."""
  num_channels = x_max.size
  channelmax_max, channelmax_min = float(x_max.max()), float(x_max.min())
  th = channelmax_max
  step_num = max(100, int(channelmax_max / 0.5))
  step = (channelmax_max - channelmax_min) / step_num
  previous, cnt, out = 0, 0, []
  channel_constraint = int(num_channels * channel_ratio)
  while th >= channelmax_min and cnt < step_num:
    num_disassembly = np.clip(np.ceil(x_max / th), 1.0, None)
    num_additional_channels = int(num_disassembly.astype(np.int64).sum()) - num_channels
    if num_additional_channels > channel_constraint:
      break
    if num_additional_channels != previous:
      out.append(th)
      previous = num_additional_channels
    cnt += 1
    th -= step
  return out


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5])
def test_threshold_grid_matches_the_official_search(ratio):
  x, _ = _layer(4)
  absmax = np.abs(np.asarray(x, np.float64)).max(0)
  ours = quant.qllm_thresholds(jnp.asarray(absmax.astype(np.float32)), ratio)
  ref = _official_find_threshold_candidates(absmax.astype(np.float32).astype(np.float64), ratio)
  assert len(ours) == len(ref) > 0
  np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_qllm_layer_keeps_the_width_and_beats_no_reassembly_on_outliers():
  x, w = _layer(5, factor=10.0)
  layer = quant.qllm_layer(w, x, bits_w=4, bits_a=4)
  assert layer.w.shape == w.shape and layer.cmap.source.shape == (32,)
  assert math.isfinite(layer.theta) and layer.added > 0
  assert layer.losses[layer.theta] == min(layer.losses.values()) < 0.5 * layer.losses[math.inf]
  xe = quant.expand_act(x, layer.cmap)
  assert float(jnp.max(xe)) <= layer.theta * (1 + 1e-6)  # the outliers are gone from the input


def test_qllm_layer_without_candidates_is_the_identity():
  x, w = _layer(6)
  layer = quant.qllm_layer(w, x, thetas=[])
  assert layer.theta == math.inf and layer.added == 0
  np.testing.assert_array_equal(np.asarray(layer.w), np.asarray(w))
  np.testing.assert_array_equal(np.asarray(quant.expand_act(x, layer.cmap)), np.asarray(x))


def test_compose_maps_equals_applying_both():
  x, w = _layer(7)
  _, m1 = quant.channel_assemble(w, x, 4, exclude=np.arange(32) < 12)
  _, m2 = quant.channel_disassemble(jnp.zeros((28, 1)), jnp.abs(quant.expand_act(x, m1)).max(0), 10.0)
  both = quant.compose_maps(m1, m2)
  np.testing.assert_allclose(np.asarray(quant.expand_act(x, both)),
                             np.asarray(quant.expand_act(quant.expand_act(x, m1), m2)), rtol=1e-6)


def test_expand_act_jits():
  x, w = _layer(8)
  _, m = quant.channel_disassemble(w, jnp.abs(x).max(0), 5.0)
  np.testing.assert_array_equal(np.asarray(jax.jit(quant.expand_act)(x, m)), np.asarray(quant.expand_act(x, m)))


def test_activation_grid_is_the_per_tensor_min_max_grid():
  x, _ = _layer(9)
  ours = quant.fake_quantize_activation(x, 4, jnp.min(x), jnp.max(x))
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(quant.fake_quantize(x, bits=4, per_tensor=True)))
  assert len(np.unique(np.asarray(ours))) <= 16


def test_lowrank_correction_lowers_the_loss_and_fuses_onto_the_grid():
  x, w = _layer(10, outliers=())
  y = x @ w
  a, b, losses = quant.lowrank_correction(w, x, y, jax.random.key(0), bits=3, rank=2, steps=200,
                                          learning_rate=1e-3)
  assert a.shape == (2, 32) and b.shape == (16, 2) and losses.shape == (200,)
  fused = quant.fuse_lowrank(w, a, b, bits=3)
  rtn = quant.fake_quantize_rtn(w, bits=3)
  rtn_loss = float(jnp.mean(jnp.square(x @ rtn - y)))
  assert float(losses[0]) == pytest.approx(rtn_loss, rel=1e-5)  # B = 0 at the start: the loss of RTN
  assert float(jnp.mean(jnp.square(x @ fused - y))) < 0.8 * rtn_loss
  assert max(len(np.unique(np.asarray(fused[:, j]))) for j in range(16)) <= 8  # on a 3-bit grid per column
  # B = 0 (no training) fuses to plain RTN
  np.testing.assert_array_equal(np.asarray(quant.fuse_lowrank(w, a, jnp.zeros_like(b), bits=3)), np.asarray(rtn))


def test_errors_name_the_argument():
  x, w = _layer(11)
  absmax = jnp.abs(x).max(0)
  with pytest.raises(ValueError, match="theta"):
    quant.channel_disassemble(w, absmax, 0.0)
  with pytest.raises(ValueError, match="x_absmax"):
    quant.channel_disassemble(w, absmax[:5], 1.0)
  with pytest.raises(ValueError, match="n_merge"):
    quant.channel_assemble(w, x, 17)
  with pytest.raises(ValueError, match="n_merge"):
    quant.channel_assemble(w, x, -1)
  with pytest.raises(ValueError, match="x_calib"):
    quant.channel_assemble(w, x[:, :8], 1)
  with pytest.raises(ValueError, match="bits"):
    quant.qllm_layer(w, x, bits_a=1)
  with pytest.raises(ValueError, match="channel_ratio"):
    quant.qllm_thresholds(absmax, 1.5)
  with pytest.raises(ValueError, match="thetas"):
    quant.qllm_layer(w, x, thetas=[-1.0])
  with pytest.raises(ValueError, match="rank"):
    quant.lowrank_correction(w, x, x @ w, jax.random.key(0), rank=0)
  with pytest.raises(ValueError, match="steps"):
    quant.lowrank_correction(w, x, x @ w, jax.random.key(0), steps=-1)
  with pytest.raises(ValueError, match="y"):
    quant.lowrank_correction(w, x, (x @ w)[:3], jax.random.key(0))
  with pytest.raises(ValueError, match="lora_A"):
    quant.fuse_lowrank(w, jnp.zeros((2, 5)), jnp.zeros((16, 2)))
  assert "qllm_layer" in quant.__all__ and qllm.__all__
