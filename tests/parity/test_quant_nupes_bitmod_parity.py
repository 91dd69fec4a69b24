"""BitMoD, NUPES and PQI against independent oracles.

* BitMoD: a torch transcription of ``quant_datatype`` and ``search_datatype`` of the official code
  (abdelfattah-lab/BitMoD-HPCA-25, ``bitmod_quant/quant_utils/quant_weight.py``, commit
  e445a5f31100a5057b4c5c4373da223ce95f1c3b), value tables copied from that file (the oracle does not import
  paperlab's tables). One change: the official casts the weight to float16 before quantizing; the transcription
  keeps float32 (paperlab computes in float32). With ``scale_dtype=float32`` the chosen datatype of every group must
  be the official one and the dequantized weights must agree to 2 ulp (rtol 2.4e-7, atol 0: XLA computes the
  divisions by the type's maximum and by the scale as multiplications by reciprocals), ties (``x`` exactly on a
  midpoint, with an exact scale) included.
* NUPES / PowerQuant (no reference code in the catalogue): closed forms -- ``a = 1`` is paperlab's symmetric
  ``intK`` RTN bit for bit, the automorphism inverts and is multiplicative (against NumPy float64).
* PQI: each weight's integral against ``scipy.integrate.quad`` of a closed-form NumPy gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from paperlab import quant

torch = pytest.importorskip("torch")

# bitmod_quant/quant_utils/quant_weight.py @ e445a5f: the value tables
_OFFICIAL = {
    "int3": [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0],
    "fp3": [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0],
    "fp3_er_pos": [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0],
    "fp3_er_neg": [-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0],
    "fp3_ea_pos": [-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0],
    "fp3_ea_neg": [-6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0],
    "int4": [-7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
    "flint4": [-16.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0],
    "fp4": [-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
    "fp4_er_pos": [-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0],
    "fp4_er_neg": [-12.0, -10.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
    "fp4_ea_pos": [-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0],
    "fp4_ea_neg": [-16.0, -12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
}
_MIXED_BITMOD = {3: ["fp3_er_pos", "fp3_er_neg", "fp3_ea_pos", "fp3_ea_neg"],
                 4: ["fp4_er_pos", "fp4_er_neg", "fp4_ea_pos", "fp4_ea_neg"]}


def _quant_datatype(w, datatype, group_size=None):
  """``quant_datatype`` of the official code (float32 instead of its float16 cast)."""
  allow_value = _OFFICIAL[datatype]
  mid_value = [(allow_value[i] + allow_value[i + 1]) / 2 for i in range(len(allow_value) - 1)]
  if (group_size is None) or (group_size <= 0):
    w_new = w.to(torch.float32)
  else:
    k, c = w.size()
    w_new = w.unsqueeze(-1).reshape(k, c // group_size, group_size).to(torch.float32)
  rmax = torch.amax(w_new.abs(), dim=-1, keepdim=True)
  qmax = max([abs(x) for x in allow_value])
  scale_fp = rmax / qmax
  scale_fp = scale_fp.clamp(min=1e-5, max=1e4)
  x = w_new / scale_fp
  q_tensor = torch.zeros_like(x)
  for i in range(len(allow_value)):
    data = allow_value[i]
    if i == 0:
      q_tensor += torch.where(x <= mid_value[i], data, 0)
    elif i == len(allow_value) - 1:
      q_tensor += torch.where(x > mid_value[i - 1], data, 0)
    else:
      q_tensor += torch.where((mid_value[i - 1] < x) & (x <= mid_value[i]), data, 0)
  w_new = q_tensor * scale_fp
  if (group_size is None) or (group_size <= 0):
    return w_new
  return w_new.reshape(k, c)


def _search_datatype(w, wq_bits, group_size):
  """``search_datatype(..., datatype="mixed_bitmod")`` of the official code."""
  datatype_list = _MIXED_BITMOD[wq_bits]
  k, c = w.size()
  num_group = c // group_size
  w = w.unsqueeze(-1).reshape(k, num_group, group_size)
  q_tensor = torch.zeros_like(w)
  error = torch.full([k, num_group], 1e3, dtype=w.dtype)
  for datatype in datatype_list:
    w_tmp = _quant_datatype(w, datatype, group_size=None)
    quant_error = (w_tmp - w).pow(2).mean(-1)
    update_mask = torch.lt(quant_error, error)
    error[update_mask] = quant_error[update_mask]
    q_tensor[update_mask] = w_tmp[update_mask]
  return q_tensor.reshape(k, c)


def _weights(seed=0, n_in=128, n_out=8):
  """Heavy-tailed kernel ``(in, out)`` plus groups built to hit midpoints exactly (ties)."""
  rng = np.random.default_rng(seed)
  w = rng.standard_t(3, size=(n_in, n_out)).astype(np.float32) * 0.05
  # column 0, group 0: max 4 -> scale 1 for the FP3 types (max 4) so 1.5 and 3.0 are exact midpoints / values
  w[:32, 0] = np.resize(np.array([4.0, 1.5, -1.5, 3.0, -3.0, 0.5, -0.5, 5.0 / 4], np.float32), 32)
  return w


def test_bitmod_mixture_matches_official_search_datatype():
  w = _weights()
  for bits in (3, 4):
    want = _search_datatype(torch.from_numpy(w.T.copy()), bits, 32).numpy().T
    got = quant.mixture_of_datatypes(jnp.asarray(w), bits=bits, group_size=32, scale_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(got.dequantize()), want, rtol=2.4e-7, atol=0)
    # the official choice per group: the menu entry whose own quantization equals the group's result
    k = torch.from_numpy(w.T.copy())
    singles = np.stack([_quant_datatype(k, n, group_size=32).numpy().T.reshape(4, 32, -1)
                        for n in _MIXED_BITMOD[bits]])
    errs = np.mean((singles - w.reshape(4, 32, -1)) ** 2, axis=2)
    np.testing.assert_array_equal(np.asarray(got.type_id()), errs.argmin(axis=0))


def test_bitmod_single_datatypes_match_official_quant_datatype():
  # the menu types are covered by the mixture test (values and choices); these are the single-type baselines
  w = _weights(1)
  for name in _OFFICIAL:
    np.testing.assert_array_equal(np.asarray(quant.datatype_grid(name)), np.asarray(_OFFICIAL[name], np.float32))
  for name in ("int3", "fp3", "fp4"):  # the experiment's baselines and FP4 (int4 / flint4: the same code path)
    want = _quant_datatype(torch.from_numpy(w.T.copy()), name, group_size=32).numpy().T
    got = quant.quantize_datatype(jnp.asarray(w), name, group_size=32, scale_dtype=jnp.float32)
    np.testing.assert_allclose(np.asarray(got.dequantize()), want, rtol=2.4e-7, atol=0, err_msg=name)
    np.testing.assert_array_equal(np.asarray(got.dequantize())[:8, 0], want[:8, 0])  # ties, exact scale


# ----------------------------------------------------------------------------------------------------------------
# NUPES / PowerQuant: closed forms (the catalogue lists no reference code)


def test_power_quant_with_exponent_one_is_symmetric_int_rtn_exactly():
  """``a = 1``: the codes and values of paperlab's symmetric ``intK`` format (absmax / (2^(b-1) - 1), float32)."""
  w = jnp.asarray(_weights(2)[:, :8])
  for bits in (3,):
    got = quant.power_quant(w, 1.0, bits=bits)
    ref = quant.quantize(w, f"int{bits}", axis=0, scale_dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(got.codes), np.asarray(ref.codes()))
    np.testing.assert_array_equal(np.asarray(got.w_hat), np.asarray(ref.dequantize()))


def test_power_automorphism_inverts_and_is_multiplicative():
  """``phi_a^-1(phi_a(x)) = x`` within 1e-6 (relative), and ``phi_a(x y)`` and ``phi_a(x) phi_a(y)`` both equal
  NumPy's float64 ``sign(x y) |x y|^a`` to 2e-6 (relative)."""
  from paperlab.quant import nupes  # the private automorphism, checked in float64 against NumPy's power

  rng = np.random.default_rng(3)
  x = rng.normal(size=1000).astype(np.float32)
  y = rng.normal(size=1000).astype(np.float32)
  for a in (0.25, 0.5, 0.8, 1.0, 1.7):
    back = np.asarray(nupes._phi_inv(nupes._phi(jnp.asarray(x), a), a))
    np.testing.assert_allclose(back, x, rtol=1e-6, atol=1e-30)
    want = np.sign(x * y) * np.abs(x.astype(np.float64) * y) ** a
    np.testing.assert_allclose(np.asarray(nupes._phi(jnp.asarray(x * y), a)), want, rtol=2e-6)
    np.testing.assert_allclose(np.asarray(nupes._phi(jnp.asarray(x), a) * nupes._phi(jnp.asarray(y), a)), want,
                               rtol=2e-6)


# ----------------------------------------------------------------------------------------------------------------
# PQI: the integral against scipy.integrate.quad (adaptive Gauss-Kronrod in float64)


def test_pqi_matches_scipy_quad_of_the_path_gradient_per_weight():
  """Each ``PQI_i = dw_i int_0^1 dL/dw_i(w + t dw) dt`` of a small softmax-regression loss against
  ``scipy.integrate.quad`` of the same integrand in float64 (NumPy gradient, closed form): midpoint rule with
  N = 32 within 1e-4 of the sum's scale; their total equals ``L(w_hat) - L(w)`` (quad, 1e-8)."""
  from scipy.integrate import quad

  rng = np.random.default_rng(4)
  x = rng.normal(size=(16, 5))
  y = rng.integers(0, 3, size=16)
  w = rng.normal(size=(5, 3)) * 0.8
  wq = np.round(w * 2) / 2

  def loss_np(v):
    z = x @ v
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(16), y]))

  def grad_np(v):
    z = x @ v
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(16), y] -= 1.0
    return x.T @ p / 16

  d = wq - w
  want = np.array([[d[i, j] * quad(lambda t: grad_np(w + t * d)[i, j], 0.0, 1.0, epsabs=1e-12)[0]
                    for j in range(3)] for i in range(5)])
  assert want.sum() == pytest.approx(loss_np(wq) - loss_np(w), abs=1e-8)

  def loss(v, batch):
    xb, yb = batch
    logits = xb @ v
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(16), yb])

  got = np.asarray(quant.pqi(loss, jnp.asarray(w, jnp.float32), jnp.asarray(wq, jnp.float32),
                             (jnp.asarray(x, jnp.float32), jnp.asarray(y)), n_steps=32))
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).sum())
