"""BitMoD (paperlab.quant.bitmod): the special-value datatypes, the per-group selection, storage, jit and errors
(the element rounding is checked against a transcription of the official code in tests/parity)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from paperlab import quant


def _kernel(seed=0, shape=(128, 8)):  # the parity test's shape and groups of 32: shared compiles
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.standard_t(5, size=shape).astype(np.float32))


def test_fp4_grid_is_ml_dtypes_e2m1_value_set_in_units_of_half():
  # the official FP4 table is printed in units of 0.5: halved, it is float4_e2m1fn's value set
  e2m1 = np.unique(np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32))
  np.testing.assert_array_equal(np.asarray(quant.datatype_grid("fp4")) / 2, e2m1)


def test_special_values_replace_the_redundant_negative_zero():
  # FP3 / FP4 have 7 / 15 distinct values (-0 is redundant); each BitMoD type adds exactly one special value
  for base, specials in (("fp3", {"er_pos": 3, "er_neg": -3, "ea_pos": 6, "ea_neg": -6}),
                         ("fp4", {"er_pos": 10, "er_neg": -10, "ea_pos": 16, "ea_neg": -16})):
    grid = set(np.asarray(quant.datatype_grid(base)).tolist())
    for suffix, special in specials.items():
      new = set(np.asarray(quant.datatype_grid(f"{base}_{suffix}")).tolist())
      assert new - grid == {float(special)} and grid <= new
      assert len(new) == 2 ** (3 if base == "fp3" else 4)


def test_mixture_error_is_the_per_group_minimum_over_single_datatypes():
  w = _kernel()
  menu = quant.BITMOD_MENU[3]
  mix = quant.mixture_of_datatypes(w, bits=3, group_size=32, scale_dtype=jnp.float32)
  err = np.asarray(quant.datatype_errors(w, menu, group_size=32, scale_dtype=jnp.float32))
  wg = np.asarray(w).reshape(4, 32, 8)
  mix_err = np.mean((np.asarray(mix.dequantize()).reshape(4, 32, 8) - wg) ** 2, axis=1)
  np.testing.assert_allclose(mix_err, err.min(axis=0), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(mix.type_id()), err.argmin(axis=0))
  # a single datatype through quantize_datatype has the error datatype_errors reports, never below the mixture's
  single = quant.quantize_datatype(w, menu[2], group_size=32, scale_dtype=jnp.float32)
  single_err = np.mean((np.asarray(single.dequantize()).reshape(4, 32, 8) - wg) ** 2, axis=1)
  np.testing.assert_allclose(single_err, err[2], rtol=1e-6)
  assert np.all(mix_err <= err * (1 + 1e-6))
  assert len(set(np.asarray(mix.type_id()).ravel().tolist())) > 1  # the menu is really mixed on this kernel


def test_storage_is_packed_codes_16bit_scale_and_2bit_type_id():
  w = _kernel(1)
  t = quant.mixture_of_datatypes(w, bits=4, group_size=32)
  n, groups = w.size, 4 * 8
  assert t.values.dtype == jnp.uint8 and t.values.size == n // 2
  assert t.scales.dtype == jnp.bfloat16 and t.scales.shape == (4, 8)
  assert t.type_ids.size == groups * 2 // 8
  assert t.nbytes == n // 2 + 2 * groups + groups // 4
  t3 = quant.mixture_of_datatypes(w, bits=3, group_size=32)
  assert t3.values.size == n * 3 // 8 and t3.nbytes == n * 3 // 8 + 2 * groups + groups // 4  # 8 codes in 3 bytes
  # at the paper's g128: (b + 16/128 + 2/128) / 8 bytes per weight
  assert (0.5 + (16 + 2) / 128 / 8, 0.375 + (16 + 2) / 128 / 8) <= (0.53, 0.41)


def test_dequantize_is_scale_times_table_value_and_stays_within_the_groups_absmax():
  w = _kernel(2)
  t = quant.mixture_of_datatypes(w, bits=4, group_size=32)
  tables = [np.asarray(quant.datatype_grid(n)) for n in t.datatypes]
  codes, ids = np.asarray(t.codes()), np.repeat(np.asarray(t.type_id()), 32, axis=0)
  scale = np.repeat(np.asarray(t.scales, np.float32), 32, axis=0)
  want = np.array([[tables[ids[i, j]][codes[i, j]] for j in range(8)] for i in range(128)]) * scale
  np.testing.assert_array_equal(np.asarray(t.dequantize()), want.astype(np.float32))
  amax = np.repeat(np.abs(np.asarray(w)).reshape(4, 32, 8).max(1), 32, axis=0)
  assert np.all(np.abs(np.asarray(t.dequantize())) <= amax * 1.01)  # bf16 scale rounding: within 2^-8


def test_jit_matches_eager_and_zero_groups_stay_zero():
  w = _kernel(3).at[:32, 0].set(0)
  eager = quant.mixture_of_datatypes(w, bits=3, group_size=32)
  jitted = jax.jit(lambda x: quant.mixture_of_datatypes(x, bits=3, group_size=32))(w)
  np.testing.assert_array_equal(np.asarray(jitted.dequantize(jnp.float32)), np.asarray(eager.dequantize(jnp.float32)))
  assert eager.dequantize().dtype == jnp.float32 and eager.dequantize(jnp.bfloat16).dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(eager.dequantize(jnp.float32))[:32, 0], 0.0)
  leaves, treedef = jax.tree.flatten(eager)
  assert len(leaves) == 3 and jax.tree.unflatten(treedef, leaves).datatypes == quant.BITMOD_MENU[3]


def test_errors_name_the_argument():
  w = _kernel()
  with pytest.raises(ValueError, match="bits"):
    quant.mixture_of_datatypes(w, bits=2)
  with pytest.raises(ValueError, match="bits=4 does not match"):
    quant.mixture_of_datatypes(w, bits=4, menu=("fp3",))
  with pytest.raises(ValueError, match="one bit width"):
    quant.mixture_of_datatypes(w, bits=3, menu=("fp3", "fp4"))
  with pytest.raises(ValueError, match="datatype must be one of"):
    quant.datatype_grid("fp5")
  with pytest.raises(ValueError, match="group_size"):
    quant.mixture_of_datatypes(w, group_size=48)
  with pytest.raises(ValueError, match="scale_dtype"):
    quant.mixture_of_datatypes(w, group_size=32, scale_dtype=jnp.int8)
  with pytest.raises(ValueError, match="finite"):
    quant.mixture_of_datatypes(w.at[0, 0].set(jnp.inf), group_size=32)
  with pytest.raises(ValueError, match="2-D"):
    quant.quantize_datatype(w[0], "fp4")
