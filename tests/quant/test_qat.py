"""Unit tests of paperlab.quant.qat and qat_recipes: forward values against the PTQ grid and closed forms, gradients,
jit/vmap, exports to QArray, oscillation counting, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab.quant import qat, qat_recipes as rec, rtn


def _w(shape=(64, 8), seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("group_size,symmetric", [(None, False), (32, True)])
def test_fake_quantize_forward_is_the_rtn_grid_bit_for_bit_and_gradient_is_identity(group_size, symmetric):
  w = _w()
  fq = jax.jit(lambda w: qat.fake_quantize(w, bits=3, group_size=group_size, symmetric=symmetric))(w)
  np.testing.assert_array_equal(fq, rtn.quantize_rtn(w, bits=3, group_size=group_size, symmetric=symmetric).w_hat)
  up = _w(seed=1)
  g = jax.grad(lambda w: jnp.sum(qat.fake_quantize(w, bits=3, group_size=group_size) * up))(w)
  np.testing.assert_array_equal(g, up)


def test_fake_quantize_per_tensor_uses_one_grid_and_vmaps():
  w = _w((3, 16, 4))
  out = jax.vmap(lambda a: qat.fake_quantize(a, bits=4, per_tensor=True))(w)
  for i in range(3):
    scale, zero = rtn.grid_params(w[i].min(), w[i].max(), 4)
    ref = rtn.dequantize_codes(rtn.quantize_to_grid(w[i], scale, zero, 4), scale, zero)
    np.testing.assert_allclose(out[i], ref, rtol=1e-6, atol=1e-7)  # vmapped XLA program vs eager ops: 1 ulp
    assert len(np.unique(np.asarray(out[i]))) <= 16


def test_fake_quantize_errors_name_the_argument():
  with pytest.raises(ValueError, match="bits"):
    qat.fake_quantize(_w(), bits=9)
  with pytest.raises(ValueError, match="group_size"):
    qat.fake_quantize(_w(), bits=4, group_size=5)
  with pytest.raises(ValueError, match="2-D"):
    qat.fake_quantize(_w((2, 4, 4)), bits=4)
  with pytest.raises(ValueError, match="finite"):
    qat.fake_quantize(_w().at[0, 0].set(jnp.nan), bits=4)


def test_lsq_init_is_two_mean_abs_over_sqrt_qp_and_grad_scale():
  w = _w()
  np.testing.assert_allclose(qat.lsq_init_step(w, bits=4), 2 * jnp.mean(jnp.abs(w)) / np.sqrt(7), rtol=1e-6)
  assert qat.lsq_init_step(w, bits=4, axis=0).shape == (1, 8)
  assert qat.lsq_grad_scale(100, 3) == pytest.approx(1 / np.sqrt(100 * 3))
  with pytest.raises(ValueError, match="num_weights"):
    qat.lsq_grad_scale(0, 3)


def test_lsq_step_gradient_is_the_paper_eq3_times_g():
  # eq. 3: d w_hat / d s = -v/s + round(v/s) inside, -Q_N / Q_P outside; times g
  w = jnp.array([0.13, -0.41, 2.0, -3.0, 0.26], jnp.float32)
  s = jnp.float32(0.1)
  gs = jax.grad(lambda s: jnp.sum(qat.lsq_quantize(w, s, bits=3, grad_scale=0.5)))(s)
  v = np.asarray(w) / 0.1
  inside = np.clip(v, -4, 3) == v
  expect = 0.5 * np.sum(np.where(inside, -v + np.round(v), np.clip(v, -4, 3)))
  np.testing.assert_allclose(gs, expect, rtol=1e-5)


def test_lsq_plus_offset_shifts_the_grid():
  w = _w()
  out = qat.lsq_quantize(w, 0.2, bits=4, offset=0.05)
  np.testing.assert_allclose(out, np.round(np.clip((np.asarray(w) - 0.05) / 0.2, -8, 7)) * 0.2 + 0.05, atol=1e-6)


def test_exports_dequantize_to_the_trained_forward_bit_for_bit():
  params = {"a": {"kernel": _w((64, 8))}, "b": {"kernel": _w((32, 8), 2), "bias": jnp.zeros(8)}}
  rules = [(r"a/kernel", {"bits": 4, "group_size": 16}), (r".*kernel", {"bits": 3})]
  fq = qat.fake_quantize_params(params, rules)
  ex = qat.export_qat_params(params, rules)
  for k in ("a", "b"):
    np.testing.assert_array_equal(ex[k]["kernel"].dequantize(), fq[k]["kernel"])
  assert ex["a"]["kernel"].fmt == "uint4" and ex["b"]["kernel"].fmt == "uint3"
  np.testing.assert_array_equal(fq["b"]["bias"], params["b"]["bias"])
  lrules = [(r".*kernel", {"bits": 4})]
  steps = qat.lsq_init_steps(params, lrules)
  lq = jax.jit(lambda p, s: qat.lsq_quantize_params(p, s, lrules))(params, steps)
  lex = qat.export_lsq_params(params, steps, lrules)
  for k in ("a", "b"):
    np.testing.assert_array_equal(lex[k]["kernel"].dequantize(), lq[k]["kernel"])
  with pytest.raises(ValueError, match="matched no floating leaf"):
    qat.fake_quantize_params(params, [(r"nope", {"bits": 4})])
  with pytest.raises(ValueError, match="a/kernel"):
    qat.fake_quantize_params(params, [(r"a/kernel", {"bits": 4, "group_size": 5})])


def test_fake_quantize_params_trains_an_nnx_model_under_jit():
  model = nnx.Sequential(nnx.Linear(16, 32, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(32, 4, rngs=nnx.Rngs(1)))
  graphdef, params = nnx.split(model)
  rules = [(r".*kernel", {"bits": 4, "group_size": 16})]
  x = _w((8, 16))
  y = jnp.arange(8) % 4

  @jax.jit
  def loss(params):
    logits = nnx.merge(graphdef, qat.fake_quantize_params(params, rules))(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  g = jax.grad(loss)(params)
  flat = dict(nnx.to_flat_state(g))
  assert all(np.any(np.asarray(v.get_value()) != 0) for v in flat.values())


def test_dampening_loss_closed_form_and_gradient():
  w = jnp.array([0.12, -0.27, 0.5, 9.0], jnp.float32)
  s = 0.1
  q = np.clip(np.round(np.asarray(w) / s), -8, 7) * s
  loss, g = jax.value_and_grad(lambda w: qat.oscillation_dampening_loss(w, s, bits=4, weight=0.3))(w)
  np.testing.assert_allclose(loss, 0.3 * np.sum((np.asarray(w) - q) ** 2), rtol=1e-6)
  np.testing.assert_allclose(g, 0.6 * (np.asarray(w) - q), rtol=1e-5, atol=1e-7)


def test_oscillation_tracker_counts_exactly_the_direction_flips_of_a_scripted_sequence():
  # weight 0 oscillates 0,1,0,1,0 (flips at steps 2,3,4); weight 1 climbs 0,1,2,3,4 (no flip);
  # weight 2 goes 0,1,1,0,0 (one flip at step 3: the pause keeps the last direction)
  seq = np.array([[0, 0, 0], [1, 1, 1], [0, 2, 1], [1, 3, 0], [0, 4, 0]], np.float32)
  m = 0.5
  state = qat.oscillation_init(seq[0])
  flips = np.zeros(3)
  expect = np.zeros(3)
  manual = [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 0, 0]]
  for t in range(1, 5):
    state = jax.jit(qat.oscillation_update)(seq[t], state, momentum=m)
    expect = m * np.asarray(manual[t], np.float32) + (1 - m) * expect
    flips += manual[t]
  np.testing.assert_allclose(state.frequency, expect, rtol=1e-6)
  assert flips.tolist() == [3, 0, 1]
  frozen = qat.oscillation_update(seq[4], state, momentum=m, freeze_threshold=0.3)
  assert frozen.frozen.tolist() == [True, False, False]
  w = jnp.array([0.31, 0.4, 0.05])
  out = qat.apply_frozen(w, 0.1, frozen)
  np.testing.assert_allclose(out, [0.1 * float(frozen.frozen_int[0]), 0.4, 0.05], rtol=1e-6)
  assert float(jax.grad(lambda w: jnp.sum(qat.apply_frozen(w, 0.1, frozen)))(w)[0]) == 0.0


def test_self_compress_with_integer_b_e_is_symmetric_rtn_with_step_2e_and_b0_removes():
  w = _w((16, 4)) * 0.2
  b = jnp.array([[3.0, 2.0, 0.0, -1.0]])
  e = jnp.array([[-5.0, -4.0, -6.0, -6.0]])
  out = qat.self_compress_quantize(w, b, e)
  bb, ee = np.maximum(np.asarray(b), 0), np.asarray(e)
  ref = 2.0 ** ee * np.clip(np.round(np.asarray(w) / 2.0 ** ee), -2 ** (bb - 1), 2 ** (bb - 1) - 1)
  np.testing.assert_array_equal(out[:, :2], ref[:, :2])
  np.testing.assert_array_equal(out[:, 2:], 0.0)
  gb, ge = jax.grad(lambda b, e: jnp.sum(qat.self_compress_quantize(w, b, e) ** 2), argnums=(0, 1))(b, e)
  assert float(gb[0, 0]) != 0.0 and float(ge[0, 0]) != 0.0 and float(gb[0, 3]) == 0.0


def test_bit_size_penalty_is_bits_weighted_by_channel_size_over_total():
  b1, b2 = jnp.array([[2.0, 4.0]]), jnp.array([[1.0, -3.0, 3.0]])
  q = qat.bit_size_penalty([b1, b2], [(10, 2), (2, 3)])
  np.testing.assert_allclose(q, (10 * 2 + 10 * 4 + 2 * 1 + 0 + 2 * 3) / (20 + 6), rtol=1e-6)
  with pytest.raises(ValueError, match="broadcast"):
    qat.bit_size_penalty([jnp.ones((1, 3))], [(4, 2)])


def test_efficientqat_block_ap_then_e2e_qp_keeps_codes_and_trains_scales_only():
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"fc/kernel": jax.random.normal(k1, (32, 8)) / 6, "fc/bias": jnp.zeros(8)}
  x = jax.random.normal(k2, (64, 32))
  block = lambda p, x: jnp.tanh(x @ p["fc/kernel"] + p["fc/bias"])
  y = block(params, x)
  init = rec.efficientqat_init(params["fc/kernel"], bits=2, group_size=16)
  init_loss = jnp.mean((block({**params, "fc/kernel": rec.affine_fake_quantize(params["fc/kernel"], init["scale"],
                                                                             init["zero"], bits=2)}, x) - y) ** 2)
  p, q, losses = rec.block_ap(block, params, x, y, bits=2, group_size=16, num_steps=30, weight_lr=1e-3,
                              quant_lr=1e-3)
  assert float(losses[-1]) < float(init_loss)
  frozen = rec.e2e_qp_freeze(p["fc/kernel"], q["fc/kernel"]["scale"], q["fc/kernel"]["zero"], bits=2)
  assert float(frozen["codes"].min()) >= 0 and float(frozen["codes"].max()) <= 3
  tree = {"fc": frozen, "bias": p["fc/bias"]}
  tx = rec.e2e_qp_optimizer(1e-2, tree)
  opt = tx.init(tree)

  def loss(t):
    return jnp.mean((jnp.tanh(x @ rec.e2e_qp_dequantize(t["fc"]) + t["bias"]) - y) ** 2)

  @jax.jit
  def step(t, opt):
    upd, opt = tx.update(jax.grad(loss)(t), opt, t)
    return optax.apply_updates(t, upd), opt

  t = tree
  for _ in range(3):
    t, opt = step(t, opt)
  np.testing.assert_array_equal(t["fc"]["codes"], frozen["codes"])
  np.testing.assert_array_equal(t["fc"]["zero"], frozen["zero"])
  np.testing.assert_array_equal(t["bias"], tree["bias"])
  assert np.any(np.asarray(t["fc"]["scale"]) != np.asarray(frozen["scale"]))
  np.testing.assert_array_equal(rec.e2e_qp_export(t["fc"], bits=2).dequantize(), rec.e2e_qp_dequantize(t["fc"]))


def test_qalora_merged_forward_equals_unmerged_and_codes_stay_in_the_int4_grid():
  w = _w((64, 12))
  qw = rtn.quantize_rtn(w, bits=4, group_size=16)
  ad = rec.qalora_init(jax.random.key(1), qw, r=4)
  assert ad["lora_A"].shape == (4, 4) and ad["lora_B"].shape == (12, 4) and not np.any(ad["lora_B"])
  ad = {**ad, "lora_B": 0.1 * _w((12, 4), 3)}
  x = _w((6, 64), 4)
  merged = rec.qalora_merge(qw, ad)
  assert float(jnp.max(jnp.abs(jax.jit(rec.qalora_apply)(x, qw, ad) - x @ merged.w_hat))) < 1e-5
  np.testing.assert_array_equal(merged.codes, qw.codes)
  assert merged.codes.dtype == jnp.uint8 and int(merged.codes.max()) <= 15
  np.testing.assert_array_equal(rec.qalora_pool(x, 16), jnp.mean(x.reshape(6, 4, 16), axis=-1))
  with pytest.raises(TypeError, match="QuantizedWeight"):
    rec.qalora_merge(w, ad)


def test_qlora_merge_requant_is_lossy_where_the_qalora_merge_is_exact():
  qw = rtn.quantize_rtn(_w((64, 12)), bits=4, group_size=16)
  ad = {"lora_A": 0.2 * _w((4, 64), 5), "lora_B": 0.2 * _w((12, 4), 6)}
  out = rec.qlora_merge_requant(qw, ad, bits=4)
  assert int(out.codes.max()) <= 15 and out.scale.shape == qw.scale.shape
  float_merge = qw.w_hat + (8.0 / 4) * ad["lora_A"].T @ ad["lora_B"].T
  assert float(jnp.max(jnp.abs(out.w_hat - float_merge))) > 0.0  # re-quantization moves the merged weights
  with pytest.raises(ValueError, match="lora_A"):
    rec.qlora_merge_requant(qw, {"lora_A": ad["lora_A"][:, :32], "lora_B": ad["lora_B"]})


def test_statsq_has_no_scale_parameter_and_cga_frozen_weights_stay_bit_identical():
  w = _w((32, 4))
  s = qat.lsq_init_step(w, bits=2, axis=0)
  np.testing.assert_array_equal(qat.statsq_quantize(w, bits=2), qat.lsq_quantize(w, s, bits=2))
  g = jax.grad(lambda w: jnp.sum(qat.statsq_quantize(w, bits=2)))(w)  # STE: 1 inside the range, 0 outside
  v = np.asarray(w) / np.asarray(s)
  np.testing.assert_allclose(g, ((v > -2) & (v < 1)).astype(np.float32), rtol=1e-6)
  mask = qat.cga_freeze_mask(w, s, 0.4)
  assert 0 < int(mask.sum()) < mask.size
  tx = optax.adam(0.1)
  opt = tx.init(w)
  w2 = w
  for _ in range(2):
    upd, opt = tx.update(jnp.ones_like(w2), opt, w2)
    w2 = optax.apply_updates(w2, jnp.where(mask, 0.0, upd))
  np.testing.assert_array_equal(np.asarray(w2)[np.asarray(mask)], np.asarray(w)[np.asarray(mask)])
  assert np.all(np.asarray(w2)[~np.asarray(mask)] != np.asarray(w)[~np.asarray(mask)])
