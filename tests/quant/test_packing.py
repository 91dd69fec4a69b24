"""Dense bit packing: the byte layout (little-endian chunks of eight codes, code i at bits [i*k, (i+1)*k)), the
stored size ceil(n*k/8) (int3 is not padded to 4 bits, FP6 stores 4 codes in 3 bytes), jit/vmap and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab.quant.packing import pack_bits, packed_nbytes, unpack_bits


def test_int4_packs_two_codes_per_byte_low_nibble_first():
  np.testing.assert_array_equal(np.asarray(pack_bits(jnp.array([1, 2, 15, 0], jnp.uint8), 4)), [0x21, 0x0F])


def test_int2_packs_four_codes_per_byte():
  np.testing.assert_array_equal(np.asarray(pack_bits(jnp.array([1, 2, 3, 0, 3], jnp.uint8), 2)),
                                [0b00_11_10_01, 0b11])


def test_int3_packs_eight_codes_in_three_bytes():
  codes = np.arange(8, dtype=np.uint8)  # bits: 000 001 010 011 100 101 110 111 (code 0 lowest)
  stream = sum(int(c) << (3 * i) for i, c in enumerate(codes))
  expect = [(stream >> (8 * j)) & 0xFF for j in range(3)]
  np.testing.assert_array_equal(np.asarray(pack_bits(jnp.asarray(codes), 3)), expect)


def test_fp6_packs_four_codes_in_three_bytes():
  assert packed_nbytes(4, 6) == 3 and pack_bits(jnp.arange(4, dtype=jnp.uint8), 6).shape == (3,)


@pytest.mark.parametrize("bits,n,nbytes", [(2, 5, 2), (3, 7, 3), (3, 9, 4), (4, 3, 2), (6, 5, 4), (8, 3, 3), (1, 9, 2)])
def test_odd_lengths_take_ceil_n_bits_over_8_bytes_and_round_trip(bits, n, nbytes):
  rng = np.random.default_rng(n)
  codes = rng.integers(0, 2 ** bits, n).astype(np.uint8)
  packed = pack_bits(jnp.asarray(codes), bits)
  assert packed.shape == (nbytes,) and packed.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(unpack_bits(packed, bits, n)), codes)


def test_signed_codes_round_trip_as_twos_complement():
  codes = jnp.array([-4, -1, 0, 3, 2], jnp.int8)
  np.testing.assert_array_equal(np.asarray(unpack_bits(pack_bits(codes, 3), 3, 5, signed=True)), np.asarray(codes))


def test_pack_and_unpack_jit_and_vmap():
  codes = jnp.asarray(np.random.default_rng(0).integers(0, 8, (4, 11)), jnp.uint8)
  packed = jax.jit(jax.vmap(lambda c: pack_bits(c, 3)))(codes)
  assert packed.shape == (4, 5)
  back = jax.jit(jax.vmap(lambda p: unpack_bits(p, 3, 11)))(packed)
  np.testing.assert_array_equal(np.asarray(back), np.asarray(codes))


def test_bad_bits_and_stream_length_raise():
  with pytest.raises(ValueError, match=r"bits must be an int in \[1, 8\], got 9"):
    pack_bits(jnp.zeros(4, jnp.uint8), 9)
  with pytest.raises(ValueError, match="packed has 3 bytes but 7 codes of 4 bits need 4"):
    unpack_bits(jnp.zeros(3, jnp.uint8), 4, 7)
