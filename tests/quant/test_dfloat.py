"""DFloat11 (Zhang et al., arXiv:2504.11651): bit-exact round trip of every bfloat16 pattern, the exponent code is an
optimal Huffman code (same total length as the official encoder's ``dahuffman`` codec), and trained-like weights
compress to <= 72% of their bfloat16 bytes, everything counted (the paper's "70% size" claim)."""

from __future__ import annotations

from heapq import heapify, heappop, heappush

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from paperlab import quant


def _dahuffman_from_frequencies(frequencies: dict, eof) -> dict:
  """Transcription of ``HuffmanCodec.from_frequencies`` from soxofaan/dahuffman, dahuffman/huffmancodec.py at
  commit bd3578e7d823f38bf263150196aadc530c39f944 (v0.4.2, MIT), the codec that the official DFloat11 encoder
  (LeanModels/DFloat11, dfloat11/dfloat11_utils.py ``get_codec``, commit 457733886ce6ebc6d8dda1621fad1ffa2661e028)
  builds from the exponent counts. Returns ``{symbol: (bitsize, value)}``."""
  heap = [(f, [(s, (0, 0))]) for s, f in frequencies.items()]
  if eof not in frequencies:
    heap.append((1, [(eof, (0, 0))]))
  heapify(heap)
  while len(heap) > 1:
    a = heappop(heap)
    b = heappop(heap)
    merged = (a[0] + b[0], [(s, (n + 1, v)) for (s, (n, v)) in a[1]]
              + [(s, (n + 1, (1 << n) + v)) for (s, (n, v)) in b[1]])
    heappush(heap, merged)
  return dict(heappop(heap)[1])


def _trained_like(shape, seed=0, dist="normal"):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal(shape) if dist == "normal" else rng.standard_t(5, shape)
  return (w * 0.02).astype(ml_dtypes.bfloat16)


def _bits(a):
  return np.asarray(a).view(np.uint16)


def test_every_bfloat16_pattern_round_trips_bit_exactly():
  x = np.arange(2 ** 16, dtype=np.uint16).view(ml_dtypes.bfloat16)  # +-0, subnormals, +-Inf, every NaN payload
  np.testing.assert_array_equal(_bits(quant.df11_decode(quant.df11_encode(x))), _bits(x))


@pytest.mark.parametrize("n,bytes_per_chunk,chunks_per_block", [(1, 8, 256), (7, 8, 256), (1001, 4, 3),
                                                                 (5000, 8, 2)])
def test_odd_sizes_and_chunk_layouts_round_trip(n, bytes_per_chunk, chunks_per_block):
  x = _trained_like((n,), seed=n)
  d = quant.df11_encode(x, bytes_per_chunk=bytes_per_chunk, chunks_per_block=chunks_per_block)
  np.testing.assert_array_equal(_bits(quant.df11_decode(d)), _bits(x))


def test_sign_and_mantissa_byte_is_the_official_layout():
  x = _trained_like((300,))
  w = _bits(x).astype(np.int16)
  official = ((w >> 8) & 0x80 | (w & 0x7F)).astype(np.uint8)  # dfloat11_utils.encode_weights: other_8bits
  np.testing.assert_array_equal(quant.df11_encode(x).sign_mantissa, official)


@pytest.mark.parametrize("dist", ["normal", "t"])
def test_exponent_code_has_the_optimal_huffman_length_of_the_official_codec(dist):
  x = _trained_like((20000,), seed=3, dist=dist)
  exp = (_bits(x) >> 7) & 0xFF
  vals, freqs = np.unique(exp, return_counts=True)
  counter = {int(v): int(f) for v, f in zip(vals, freqs)}
  # eof = an existing symbol: dahuffman then adds no end-of-file symbol and builds a plain Huffman code
  table = _dahuffman_from_frequencies(counter, eof=int(vals[0]))
  ref_bits = sum(counter[s] * table[s][0] for s in counter)
  d = quant.df11_encode(x)
  assert d.total_bits == ref_bits  # all optimal prefix codes of the same counts have the same total length
  h = quant.exponent_entropy(x)
  assert h * x.size <= d.total_bits < (h + 1) * x.size  # Shannon bounds of a Huffman code


@pytest.mark.parametrize("dist", ["normal", "t"])
def test_trained_like_weights_compress_to_at_most_72_percent_losslessly(dist):
  x = _trained_like((256, 1024), seed=1, dist=dist)
  d = quant.df11_encode(x)
  np.testing.assert_array_equal(_bits(quant.df11_decode(d)), _bits(x))
  ratio = d.nbytes / x.nbytes
  assert ratio <= 0.72, ratio
  # bits per weight: 8 raw + Huffman exponent (< H + 1) + 5-bit gaps per 64-bit chunk + block starts
  assert d.nbytes * 8 / x.size <= 8 + quant.exponent_entropy(x) + 0.3


def test_params_pytree_round_trip_keeps_other_leaves():
  params = {"w": jnp.asarray(_trained_like((64, 32))), "b": jnp.zeros(3, jnp.float32)}
  comp = quant.df11_compress_params(params)
  assert isinstance(comp["w"], quant.DF11) and comp["b"] is params["b"]
  back = quant.df11_decompress_params(comp)
  np.testing.assert_array_equal(_bits(back["w"]), _bits(params["w"]))


def test_non_bfloat16_input_is_rejected():
  with pytest.raises(TypeError, match="x must be bfloat16 .* got dtype float32"):
    quant.df11_encode(np.ones(4, np.float32))
  with pytest.raises(ValueError, match="bytes_per_chunk must be >= 4"):
    quant.df11_encode(_trained_like((8,)), bytes_per_chunk=2)


# --- the jittable decoder (df11_decode_jax): the host decoder above and the encoded bits are its oracles ---


def test_jax_decoder_round_trips_every_bfloat16_pattern_under_jit():
  x = np.arange(2 ** 16, dtype=np.uint16).view(ml_dtypes.bfloat16)
  d = quant.df11_encode(x)
  np.testing.assert_array_equal(_bits(jax.jit(quant.df11_decode_jax)(d)), _bits(x))


@pytest.mark.parametrize("n,bytes_per_chunk,chunks_per_block", [(1, 8, 256), (7, 8, 256), (1001, 4, 3),
                                                                 (5000, 8, 2), (200_000, 8, 256)])
def test_jax_decoder_matches_the_host_decoder_on_odd_sizes_and_layouts(n, bytes_per_chunk, chunks_per_block):
  x = _trained_like((n,), seed=n, dist="t")
  d = quant.df11_encode(x, bytes_per_chunk=bytes_per_chunk, chunks_per_block=chunks_per_block)
  np.testing.assert_array_equal(_bits(quant.df11_decode_jax(d)), _bits(x))
  np.testing.assert_array_equal(_bits(quant.df11_decode_jax(d)), _bits(quant.df11_decode(d)))


def test_jax_decoder_resolves_codes_up_to_32_bits(monkeypatch):
  # A complete prefix code with every length 1..32 (Kraft: 1/2 + ... + 1/2^31 + 2/2^32 = 1), the longest two being
  # 0xfffffffe and 0xffffffff: the rare-code path past the 12-bit table and the top of the uint32 range.
  lengths = np.zeros(256, np.uint8)
  lengths[100:133] = list(range(1, 33)) + [32]
  monkeypatch.setattr(quant.dfloat, "huffman_code_lengths", lambda counts, max_len=32: lengths)
  rng = np.random.default_rng(0)
  exp = rng.permutation(np.repeat(np.arange(100, 133), 37)).astype(np.uint16)
  x = ((exp << 7) | rng.integers(0, 1 << 16, exp.size).astype(np.uint16) & 0x807F).view(ml_dtypes.bfloat16)
  d = quant.df11_encode(x)
  assert d.code_lengths.max() == 32 and d.total_bits == 37 * sum(range(1, 33)) + 37 * 32
  np.testing.assert_array_equal(_bits(quant.df11_decode(d)), _bits(x))
  np.testing.assert_array_equal(_bits(jax.jit(quant.df11_decode_jax)(d)), _bits(x))


def test_compressed_weights_decompress_inside_the_jitted_program_that_uses_them():
  w = _trained_like((64, 48), seed=5)
  d = quant.df11_encode(w)
  leaves, treedef = jax.tree.flatten(d)
  assert len(leaves) == 4 and isinstance(jax.tree.unflatten(treedef, leaves), quant.DF11)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 64)), jnp.bfloat16)
  out = jax.jit(lambda d, x: x @ quant.df11_decode_jax(d))(d, x)
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(x @ jnp.asarray(w), np.float32))
