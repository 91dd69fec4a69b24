"""PD-Quant (Liu et al., arXiv:2212.07048): the prediction-difference KL against torch.nn.functional.kl_div and its
closed-form properties, distribution correction (lambda -> inf returns the inputs; lambda = 0 matches the BatchNorm
statistics) on a convolution feeding a BatchNorm, and the layer-wise rounding against local-MSE AdaRound."""

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


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_prediction_difference_matches_torch_kl_div(T):
  rng = np.random.default_rng(0)
  fp, q = (3.0 * rng.standard_normal((16, 10))).astype(np.float32), (3.0 * rng.standard_normal((16, 10))).astype(
      np.float32)
  ours = quant.prediction_difference_loss(jnp.asarray(fp), jnp.asarray(q), T)
  tq, tf = torch.from_numpy(q) / T, torch.from_numpy(fp) / T
  ref = torch.nn.functional.kl_div(torch.log_softmax(tq, -1), torch.softmax(tf, -1), reduction="none").sum(-1)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-6)
  # the official loss is KLDivLoss(reduction="batchmean"), the mean of ours over the batch
  batchmean = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(tq, -1), torch.softmax(tf, -1))
  np.testing.assert_allclose(float(jnp.mean(ours)), float(batchmean), rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-4, 4), min_size=6, max_size=6), st.floats(-50, 50), st.floats(0.5, 8.0),
       st.integers(0, 5), st.floats(0.5, 5.0))
def test_kl_is_zero_iff_logits_equal_up_to_a_constant(logits, shift, T, index, bump):
  z = jnp.asarray(logits, jnp.float32)
  kl = jax.jit(quant.prediction_difference_loss)
  assert abs(float(kl(z, z + shift, T))) < 1e-5
  other = z.at[index].add(bump)  # not a constant shift: the distributions differ
  assert float(kl(z, other, T)) > 0.0
  assert float(kl(other, z, T)) > 0.0


def test_prediction_difference_jits_vmaps_masks_and_validates():
  z = jax.random.normal(jax.random.key(0), (3, 5, 7))
  out = jax.jit(jax.vmap(lambda a, b: quant.prediction_difference_loss(a, b, 2.0)))(z, z[::-1])
  np.testing.assert_allclose(out[1], 0.0, atol=1e-6)
  assert out.shape == (3, 5) and out.dtype == jnp.float32
  masked = quant.prediction_difference_loss(z[0], z[2], where=jnp.arange(5) < 2)
  assert float(masked[3]) == 0.0 and float(masked[0]) > 0.0
  with pytest.raises(ValueError, match="T"):
    quant.prediction_difference_loss(z[0], z[1], T=0.0)
  with pytest.raises(ValueError, match="logits_q"):
    quant.prediction_difference_loss(z[0], z[0, :, :3])


def _conv_substrate():
  """A 3x3 convolution (the first layer of paperlab.models.CNN, NHWC) whose output feeds a BatchNorm: the DC
  feature; running statistics taken from a shifted and rescaled copy of the inputs (so the calibration inputs do
  not match them)."""
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 1, 8)) / 3.0, jnp.float32)
  conv = lambda xs: jax.lax.conv_general_dilated(xs, kernel, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  x = jnp.asarray(rng.standard_normal((8, 8, 8, 1)), jnp.float32)
  ref = conv(jnp.asarray(0.5 + 2.0 * rng.standard_normal((64, 8, 8, 1)), jnp.float32)).reshape(-1, 8)
  return x, (lambda xs: [conv(xs)]), [(jnp.mean(ref, 0), jnp.var(ref, 0))]


def _stat_gap(x, apply_fn, stats):
  return float(quant.distribution_correction_loss(x, x, apply_fn(x), stats, lam=0.0))


def test_distribution_correction_lambda_limits():
  x, apply_fn, stats = _conv_substrate()
  free = quant.distribution_correction(x, apply_fn, stats, lam=0.0, steps=150, lr=0.05)
  # lambda = 0: the BatchNorm statistics are matched (the DC objective falls by > 10x)
  assert _stat_gap(free, apply_fn, stats) < 0.1 * _stat_gap(x, apply_fn, stats)
  moved = [float(jnp.max(jnp.abs(quant.distribution_correction(x, apply_fn, stats, lam=lam, steps=150, lr=0.05)
                                 - x))) for lam in (1e2, 1e4, 1e6)]
  # lambda -> inf: the inputs come back; the minimizer's distance to x falls like 1 / lambda
  assert moved[0] > moved[1] > moved[2] and moved[2] < 0.05 * moved[1] and moved[2] < 1e-3
  assert float(jnp.max(jnp.abs(free - x))) > 100 * moved[2]
  # any optax transformation drives it: plain gradient descent stays near x at a large lambda as well
  sgd = quant.distribution_correction(x, apply_fn, stats, lam=1e4, steps=50, optimizer=optax.sgd(1e-3))
  assert float(jnp.max(jnp.abs(sgd - x))) < 0.01


def test_distribution_correction_validates():
  x, apply_fn, stats = _conv_substrate()
  with pytest.raises(ValueError, match="lam"):
    quant.distribution_correction(x, apply_fn, stats, lam=-1.0)
  with pytest.raises(ValueError, match="steps"):
    quant.distribution_correction(x, apply_fn, stats, steps=0)
  with pytest.raises(ValueError, match="bn_stats"):
    quant.distribution_correction(x, apply_fn, stats + stats, steps=2)
  with pytest.raises(ValueError, match="x_calib"):
    quant.distribution_correction(x.at[0, 0, 0, 0].set(jnp.nan), apply_fn, stats, steps=2)


def _mlp(key, widths=(8, 8, 8)):
  keys = jax.random.split(key, len(widths) - 1)
  return {f"l{i}": {"kernel": jax.random.normal(k, (a, b)) * (2.0 / a) ** 0.5, "bias": jnp.zeros((b,))}
          for i, (k, a, b) in enumerate(zip(keys, widths[:-1], widths[1:]))}


def _apply(params, x):
  feats = {}
  for i in range(len(params)):
    layer = params[f"l{i}"]
    x = x @ layer["kernel"] + layer["bias"]
    feats[f"l{i}/kernel"] = x
    if i < len(params) - 1:
      x = jax.nn.relu(x)
  return x, feats


PATHS = ("l0/kernel", "l1/kernel")


def test_pdquant_without_the_pd_term_is_local_mse_adaround():
  """With the prediction difference switched off (``lam_r`` huge) and every calibration sample in each step,
  PD-Quant's objective is AdaRound's asymmetric layer reconstruction; the oracle is quant.adaround_optimize (checked
  against BRECQ in tests/parity) run layer by layer on the inputs of the already-quantized network. The rounding
  decisions agree (a few weights may flip where V sits at 0 up to float rounding), and every code stays on the grid
  within one level of RTN's."""
  params = _mlp(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (32, 8))
  q, w_hats = quant.pdquant(params, _apply, x, PATHS, bits=2, iters=60, lam_r=1e12, batch_size=32,
                            key=jax.random.key(3))
  ada = params
  for i, path in enumerate(PATHS):
    w = params[f"l{i}"]["kernel"]
    g = quant.quantize_rtn(w, bits=2)
    x_q = x if i == 0 else jax.nn.relu(_apply(ada, x)[1][PATHS[i - 1]])
    x_fp = x if i == 0 else jax.nn.relu(_apply(params, x)[1][PATHS[i - 1]])
    v, _ = quant.adaround_optimize(w, x_q, x_fp @ w, g.scale, g.zero, bits=2, iters=60, lr=3e-3)
    w_ada = quant.soft_quantized_kernel(w, v, g.scale, g.zero, 2, hard=True)
    ada = {**ada, f"l{i}": {**ada[f"l{i}"], "kernel": w_ada}}
    step = jnp.broadcast_to(g.scale, w.shape)
    assert float(jnp.mean(jnp.abs(w_hats[path] - w_ada) < 1e-3 * step)) >= 0.99
    np.testing.assert_array_less(jnp.abs(w_hats[path] - g.w_hat), step * 1.001)
    np.testing.assert_allclose(q[f"l{i}"]["kernel"], w_hats[path])
    codes = w_hats[path] / step + jnp.broadcast_to(g.zero, w.shape)
    np.testing.assert_allclose(codes, jnp.round(codes), atol=1e-3)  # on the grid
    assert float(jnp.min(jnp.round(codes))) >= 0 and float(jnp.max(jnp.round(codes))) <= 3


def test_pdquant_loss_is_its_three_terms():
  """pdquant_loss = local MSE + KL / lam_r + lam * f_reg, each term recomputed here from its definition."""
  params = _mlp(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (8, 8))
  w = params["l1"]["kernel"]
  g = quant.quantize_rtn(w, bits=3)
  v = jax.random.normal(jax.random.key(2), w.shape)
  logits_fp, feats = _apply(params, x)
  target = feats["l1/kernel"] + 0.1
  loss = quant.pdquant_loss(v, params, "l1/kernel", w, g.scale, g.zero, _apply, x, target, logits_fp, bits=3,
                            T=4.0, lam_r=0.1, lam=0.01, beta=5.0)
  soft = {**params, "l1": {**params["l1"], "kernel": quant.soft_quantized_kernel(w, v, g.scale, g.zero, 3)}}
  logits_q, feats_q = _apply(soft, x)
  p, q = jax.nn.softmax(logits_fp / 4.0), jax.nn.softmax(logits_q / 4.0)
  expected = (np.mean(np.sum((np.asarray(feats_q["l1/kernel"]) - np.asarray(target)) ** 2, -1))
              + np.mean(np.sum(p * (np.log(p) - np.log(q)), -1)) / 0.1
              + 0.01 * np.sum(1 - np.abs(2 * np.asarray(quant.rectified_sigmoid(v)) - 1) ** 5.0))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_pdquant_validates():
  params = _mlp(jax.random.key(0))
  x = jnp.ones((8, 8))
  with pytest.raises(ValueError, match="kernel_paths"):
    quant.pdquant(params, _apply, x, ["l9/kernel"], iters=1, batch_size=4)
  with pytest.raises(ValueError, match="batch_size"):
    quant.pdquant(params, _apply, x, PATHS, iters=1, batch_size=9)
  with pytest.raises(ValueError, match="lam_r"):
    quant.pdquant(params, _apply, x, PATHS, iters=1, batch_size=4, lam_r=0.0)
  with pytest.raises(ValueError, match="x_target"):
    quant.pdquant(params, _apply, x, PATHS, iters=1, batch_size=4, x_target=x[:4])
  with pytest.raises(ValueError, match="bits"):
    quant.pdquant(params, _apply, x, PATHS, iters=1, batch_size=4, bits=1)
