"""AdaQuant (Hubara et al., arXiv:2006.10518): the quantizer, the layer optimization, bias tuning."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import quant
from paperlab.quant import adaquant as aq


def _problem(seed=0, n=96, d_in=24, d_out=12):  # the parity test's shapes: its compiled AdaQuant program is reused
  k = jax.random.split(jax.random.key(seed), 3)
  w = jax.random.normal(k[0], (d_in, d_out)) * 0.3
  b = jax.random.normal(k[1], (d_out,)) * 0.1
  x = jax.nn.relu(jax.random.normal(k[2], (n, d_in))) * 2.0
  return w, b, x, x @ w + b


def test_exported_from_the_family():
  for name in aq.__all__:
    assert getattr(quant, name) is getattr(aq, name)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_min_max_grid_is_the_rtn_grid_per_channel(bits):
  """The official min/offset + range grid at its initial values is RTN's asymmetric per-channel grid."""
  w, _, _, _ = _problem(bits)
  ours = aq.fake_quantize_range(w, *aq.weight_qparams(w), bits)
  np.testing.assert_allclose(ours, quant.quantize_rtn(w, bits=bits).w_hat, atol=1e-6)
  for j in range(w.shape[1]):
    assert len(np.unique(np.asarray(ours[:, j]))) <= 2 ** bits


def test_quantizer_gradient_is_straight_through_inside_the_range_and_zero_outside():
  x = jnp.linspace(-2.0, 2.0, 41)
  g = jax.grad(lambda v: jnp.sum(aq.fake_quantize_range(v, jnp.float32(2.0), jnp.float32(-1.0), 4)))(x)
  inside = (x > -0.95) & (x < 0.95)
  outside = (x < -1.1) | (x > 1.1)
  np.testing.assert_array_equal(g[inside], 1.0)
  np.testing.assert_array_equal(g[outside], 0.0)


def test_quantizer_jits_and_vmaps_over_bit_widths():
  w, _, _, _ = _problem(1)
  r, o = aq.weight_qparams(w)
  batched = jax.jit(jax.vmap(aq.fake_quantize_range, in_axes=(None, None, None, 0)))(w, r, o, jnp.array([2.0, 4.0]))
  assert batched.shape == (2,) + w.shape and batched.dtype == jnp.float32
  np.testing.assert_allclose(batched[1], aq.fake_quantize_range(w, r, o, 4), atol=1e-6)  # jit fuses: 1 ulp


def test_input_qparams_average_per_sample_extremes():
  x = jnp.array([[-1.0, 2.0, 0.5], [0.0, 4.0, 1.0]])
  rng, off = aq.input_qparams(x)
  assert float(off) == pytest.approx(-0.5)  # mean of the per-sample minima (-1, 0)
  assert float(rng) == pytest.approx(3.0 + 0.5)  # mean maxima 3, minus the offset


def test_layer_error_never_above_the_initial_round_to_nearest():
  """Catalogue property: V = 0 and the min/max grids are the start and the best iterate is kept."""
  w, b, x, y = _problem(2)
  res = aq.adaquant_layer(w, x, y, bias=b, bits=3, act_bits=4, iters=20, batch_size=None, lr_w=1e-3)
  p0 = aq.AdaQuantParams(w, b, *aq.weight_qparams(w), *aq.input_qparams(x))
  start = float(aq.adaquant_loss(p0, x, y, 3, 4))
  end = float(aq.adaquant_loss(res.params, x, y, 3, 4))
  assert end <= start
  assert end < 0.9 * start  # and it does improve on this layer
  assert res.w_hat.shape == w.shape and res.w_hat.dtype == jnp.float32 and res.losses.shape == (20,)
  np.testing.assert_allclose(res.w_hat, aq.fake_quantize_range(res.params.kernel, res.params.w_range,
                                                               res.params.w_offset, 3))


def test_weight_only_leaves_the_input_grid_alone():
  w, b, x, y = _problem(3)
  res = aq.adaquant_layer(w, x, y, bias=b, bits=4, iters=20, batch_size=None)  # same compiled program
  r, o = aq.input_qparams(x)
  assert float(res.params.x_range) == pytest.approx(float(r))
  assert float(res.params.x_offset) == pytest.approx(float(o))


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=1), "bits"), (dict(act_bits=9), "bits"), (dict(iters=0), "iters"),
    (dict(batch_size=10_000), "batch_size"), (dict(lr_w=-1.0), "lr_w"),
])
def test_bad_hyperparameters_are_rejected(kwargs, match):
  w, _, x, y = _problem(4)
  with pytest.raises(ValueError, match=match):
    aq.adaquant_layer(w, x, y, **kwargs)


def test_bad_inputs_are_rejected():
  w, _, x, y = _problem(5)
  with pytest.raises(ValueError, match="y_fp"):
    aq.adaquant_layer(w, x, y[:10])
  with pytest.raises(ValueError, match="x_q"):
    aq.adaquant_layer(w, x[:, :3], y)
  with pytest.raises(ValueError, match="finite"):
    aq.adaquant_layer(w, x.at[0, 0].set(jnp.nan), y)
  with pytest.raises(ValueError, match="bias"):
    aq.adaquant_layer(w, x, y, bias=jnp.zeros(3))
  with pytest.raises(ValueError, match="x_qparams"):
    aq.adaquant_layer(w, x, y, x_qparams=(jnp.ones(3), 0.0))


def test_bias_tuning_moves_only_biases_and_lowers_the_kl():
  w, b, x, _ = _problem(6)
  params = {"dense": {"kernel": w, "bias": b}}
  ref = x @ w + b + 0.3  # the full-precision logits; the quantized net lacks the shift
  r, o = aq.weight_qparams(w)
  apply_fn = lambda p, v: v @ aq.fake_quantize_range(p["dense"]["kernel"], r, o, 3) + p["dense"]["bias"]
  tuned, losses = aq.bias_tuning(apply_fn, params, x, ref, iters=50, lr=1e-2)
  assert float(losses[-1]) < float(losses[0])
  np.testing.assert_array_equal(tuned["dense"]["kernel"], w)
  assert float(jnp.abs(tuned["dense"]["bias"] - b).max()) > 0
  with pytest.raises(ValueError, match="select"):
    aq.bias_tuning(apply_fn, params, x, ref, select="nothing")
  with pytest.raises(ValueError, match="iters"):
    aq.bias_tuning(apply_fn, params, x, ref, iters=0)
