"""Double Rounding (Huang et al., arXiv:2502.01199): bit switching from the stored INT8 codes against a direct
quantization at the switched step (torch.fake_quantize_per_tensor_affine), the straight-through quantizer, the
multi-bit loss and its gradients, and ALRS as an optax transformation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import quant


def _direct_codes(w: np.ndarray, step: float, bits: int) -> np.ndarray:
  """Independent oracle: PyTorch's fake quantization at the switched step, divided back into codes."""
  out = torch.fake_quantize_per_tensor_affine(torch.from_numpy(w), step, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
  return np.round(out.numpy() / step).astype(np.int64)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([(8, 6), (8, 4), (8, 2), (6, 3), (4, 2), (8, 8)]),
       st.floats(0.3, 3.0))
def test_double_round_equals_direct_quantization_except_on_ties(seed, bits, spread):
  hi, lo = bits
  rng = np.random.default_rng(seed)
  w = (spread * rng.standard_normal(512)).astype(np.float32)
  s_hi = float(np.abs(w).max() / (2 ** (hi - 1) - 1)) * 0.9  # a few codes clip
  q_hi = np.clip(np.round(w / np.float32(s_hi)), -(2 ** (hi - 1)), 2 ** (hi - 1) - 1).astype(np.int8)
  q_lo, s_lo = jax.jit(quant.double_round, static_argnums=(2, 3))(jnp.asarray(q_hi), jnp.float32(s_hi), hi, lo)
  assert q_lo.dtype == jnp.int8 and q_lo.shape == w.shape  # one byte per weight at every precision
  np.testing.assert_allclose(float(s_lo), s_hi * 2 ** (hi - lo), rtol=1e-6)
  direct = _direct_codes(w, float(s_lo), lo)
  ties = int(np.sum(np.mod(q_hi.astype(np.int64), 2 ** (hi - lo)) == 2 ** (hi - lo - 1))) if hi > lo else 0
  diff = np.asarray(q_lo, np.int64) - direct
  assert np.all(np.abs(diff) <= 1)
  assert np.count_nonzero(diff) <= ties
  assert np.asarray(q_lo).min() >= -(2 ** (lo - 1)) and np.asarray(q_lo).max() <= 2 ** (lo - 1) - 1


def test_double_round_ties_go_to_even_and_it_vmaps():
  q = jnp.asarray([-128, -24, -8, 8, 24, 40, 127, 0], jnp.int8)  # /16: -8, -1.5, -0.5, 0.5, 1.5, 2.5, 7.94, 0
  q4, s4 = quant.double_round(q, 0.01, 8, 4)
  np.testing.assert_array_equal(q4, [-8, -2, 0, 0, 2, 2, 7, 0])
  batched = jax.vmap(lambda a: quant.double_round(a, 1.0, 8, 2)[0])(jnp.stack([q, -q]))
  assert batched.shape == (2, 8)
  with pytest.raises(ValueError, match="bits_lo"):
    quant.double_round(q, 1.0, 4, 8)
  with pytest.raises(TypeError, match="q_hi"):
    quant.double_round(jnp.ones(3), 1.0)
  with pytest.raises(ValueError, match="bits"):
    quant.double_round(q, 1.0, 8, 1)


def test_fake_quantizer_forward_is_double_round_and_gradient_is_straight_through():
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((32, 6)), jnp.float32)
  step = quant.lsq_init_step(w, bits=8, axis=0)
  q8 = jnp.clip(jnp.round(w / step), -128, 127).astype(jnp.int8)
  for b in (8, 6, 4, 2):
    q, s = quant.double_round(q8, step, 8, b)
    np.testing.assert_allclose(quant.double_rounding_quantize(w, step, bits=b), q.astype(jnp.float32) * s,
                               rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(quant.double_rounding_quantize(w, step, bits=8), quant.lsq_quantize(w, step, bits=8))
  gw = jax.grad(lambda w: jnp.sum(quant.double_rounding_quantize(w, step, bits=4)))(w)
  inside = jnp.abs(jnp.round(w / step) / 16) < 7  # neither rounding clips: STE passes the gradient unchanged
  np.testing.assert_allclose(gw[inside], 1.0, rtol=1e-6)
  gs = jax.grad(lambda s: jnp.sum(quant.double_rounding_quantize(w, s, bits=2)))(step)
  assert gs.shape == step.shape and bool(jnp.all(jnp.isfinite(gs)))


def _mlp_loss(params, x, y):
  h = jax.nn.relu(x @ params["l0"]["kernel"] + params["l0"]["bias"])
  return optax.softmax_cross_entropy_with_integer_labels(h @ params["l1"]["kernel"], y).mean()


def _setup():
  rng = np.random.default_rng(0)
  params = {"l0": {"kernel": jnp.asarray(rng.standard_normal((8, 16)) / 3, jnp.float32), "bias": jnp.full(16, 0.1)},
            "l1": {"kernel": jnp.asarray(rng.standard_normal((16, 4)) / 4, jnp.float32)}}
  steps = {p: quant.lsq_init_step(params[p.split("/")[0]]["kernel"], bits=8, axis=0)
           for p in ("l0/kernel", "l1/kernel")}
  x, y = jnp.asarray(rng.standard_normal((32, 8)), jnp.float32), jnp.asarray(rng.integers(0, 4, 32))
  return params, steps, x, y


def test_multi_bit_loss_is_the_sum_over_precisions_and_grads_add_up():
  params, steps, x, y = _setup()
  total, per_bit = jax.jit(lambda p, s: quant.multi_bit_qat_loss(_mlp_loss, p, s, x, y))(params, steps)
  direct = jax.jit(lambda p, s: [_mlp_loss(quant.double_rounding_params(p, s, b), x, y) for b in (8, 6, 4, 2)])
  np.testing.assert_allclose(per_bit, direct(params, steps), rtol=1e-6)
  np.testing.assert_allclose(total, jnp.sum(per_bit), rtol=1e-6)
  losses, grads = jax.jit(lambda p, s: quant.multi_bit_qat_grads(_mlp_loss, p, s, x, y))(params, steps)
  np.testing.assert_allclose(losses, per_bit, rtol=1e-6)
  g_total = jax.jit(jax.grad(lambda t: quant.multi_bit_qat_loss(_mlp_loss, t["params"], t["steps"], x, y)[0]))(
      {"params": params, "steps": steps})
  summed = jax.tree.map(lambda *g: sum(g), *grads.values())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), summed, g_total)
  # the 2-bit loss moves the shared step (l0's 2-bit codes are all 0 at the 8-bit LSQ init: s_2 = 64 s_8)
  assert float(jnp.abs(grads[2]["steps"]["l1/kernel"]).sum()) > 0
  with pytest.raises(ValueError, match="steps"):
    quant.double_rounding_params(params, {"l9/kernel": jnp.ones(())}, 4)
  with pytest.raises(ValueError, match="bit_set"):
    quant.multi_bit_qat_loss(_mlp_loss, params, steps, x, y, bit_set=(4, 4))
  with pytest.raises(ValueError, match="bits_hi"):
    quant.multi_bit_qat_loss(_mlp_loss, params, steps, x, y, bit_set=(8, 4), bits_hi=6)


def test_alrs_multiplies_each_precisions_step_gradient_and_chains_with_optax():
  assert [quant.alrs_scale_lr(b) for b in (8, 6, 4, 2)] == [1.0, 0.25, 0.0625, 2.0 ** -6]
  params, steps, x, y = _setup()
  _, grads = jax.jit(lambda p, s: quant.multi_bit_qat_grads(_mlp_loss, p, s, x, y))(params, steps)
  tree = {"params": params, "steps": steps}
  tx = optax.chain(quant.scale_by_alrs((8, 6, 4, 2)), optax.sgd(0.1))
  updates, _ = jax.jit(tx.update)(grads, tx.init(tree), tree)
  for path in ("l0/kernel", "l1/kernel"):
    expected = -0.1 * sum(2.0 ** (b - 8) * grads[b]["steps"][path] for b in (8, 6, 4, 2))
    np.testing.assert_allclose(updates["steps"][path], expected, rtol=1e-5, atol=1e-9)
  expected_w = -0.1 * sum(grads[b]["params"]["l0"]["kernel"] for b in (8, 6, 4, 2))
  np.testing.assert_allclose(updates["params"]["l0"]["kernel"], expected_w, rtol=1e-5, atol=1e-9)
  off = optax.chain(quant.scale_by_alrs((8, 6, 4, 2), multipliers={8: 1, 6: 1, 4: 1, 2: 1}), optax.adam(1e-3))
  upd, _ = off.update(grads, off.init(tree), tree)
  assert jax.tree.structure(upd) == jax.tree.structure(tree)
  with pytest.raises(ValueError, match="one gradient per bit width"):
    tx.update({8: grads[8]}, tx.init(tree), tree)
  with pytest.raises(ValueError, match="multipliers"):
    quant.scale_by_alrs((8, 4), multipliers={8: 1.0})
