"""DFloat11: lossless compression of bfloat16 weights by Huffman-coding their exponents.

Zhang et al., "70% Size, 100% Accuracy: Lossless LLM Compression for Efficient GPU Inference via Dynamic-Length
Float (DFloat11)", arXiv:2504.11651. A bfloat16 is 1 sign, 8 exponent and 7 mantissa bits; in trained weights
sign and mantissa are close to full entropy while the exponent carries only ~2.6 bits. DFloat11 stores sign and
mantissa raw, one byte per weight (``(w >> 8) & 0x80 | w & 0x7f``, the official ``encode_weights``), and the 8-bit
exponent (``(w >> 7) & 0xff``) with a Huffman code built from the exponent frequencies (section 3), about 11 bits
per weight. For parallel decoding the bit stream is cut into fixed chunks of ``bytes_per_chunk`` bytes (one GPU
thread each, 8 in the paper's kernel); per chunk a 5-bit *gap* gives the bit offset of the first code that starts in
it, and per block of ``chunks_per_block`` chunks the index of its first output element is stored (the paper's
two-phase kernel: count codes per chunk, prefix-sum, then write; section 3.3). Code lengths are capped at 32 bits
like the official ``get_32bit_codec``. Encoding is host-side NumPy; decoding is either host-side
(:func:`df11_decode`, vectorized over chunks like the kernel's threads) or jittable JAX (:func:`df11_decode_jax`,
the same two phases, so a compressed model can be decompressed on the accelerator inside the program that uses it).

The round trip is bit-exact for every bfloat16 pattern (+-0, subnormals, Inf, NaN payloads).
"""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np


__all__ = ["DF11", "df11_encode", "df11_decode", "exponent_entropy", "huffman_code_lengths",
           "df11_compress_params", "df11_decompress_params", "df11_decode_jax"]

_GAP_BITS = 5  # the official encoder stores each gap in 5 bits (format(gap, '05b'))
_MAX_CODE_LEN = 32  # official get_32bit_codec caps code lengths at 32 bits


@dataclasses.dataclass(frozen=True)
class DF11:
  """A DFloat11-compressed bfloat16 tensor (host NumPy buffers).

  Attributes:
    sign_mantissa: ``uint8[n]``, sign bit in bit 7 and the 7 mantissa bits below it.
    bitstream: ``uint8`` Huffman-coded exponents, most significant bit first.
    code_lengths: ``uint8[256]`` canonical Huffman code length per exponent value (0 = absent); the code itself is
      rebuilt canonically from the lengths.
    gaps: 5-bit gaps (bit offset of the first code starting in each chunk), densely packed.
    block_starts: ``uint32`` index of the first element decoded by each block of chunks.
    shape: the tensor's shape.
    total_bits: bits used in ``bitstream``.
    bytes_per_chunk, chunks_per_block: the decoding layout.
  """
  sign_mantissa: np.ndarray
  bitstream: np.ndarray
  code_lengths: np.ndarray
  gaps: np.ndarray
  block_starts: np.ndarray
  shape: tuple[int, ...]
  total_bits: int
  bytes_per_chunk: int = 8
  chunks_per_block: int = 256

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def nbytes(self) -> int:
    """Stored bytes: sign/mantissa bytes, the exponent stream, the code-length table, gaps and block starts."""
    return sum(int(a.nbytes) for a in (self.sign_mantissa, self.bitstream, self.code_lengths, self.gaps,
                                       self.block_starts))


def _df11_flatten(d: DF11):
  return ((d.sign_mantissa, d.bitstream, d.gaps, d.block_starts),
          (np.asarray(d.code_lengths, np.uint8).tobytes(), d.shape, d.total_bits, d.bytes_per_chunk,
           d.chunks_per_block))


def _df11_unflatten(aux, children) -> DF11:
  lengths, shape, total_bits, bytes_per_chunk, chunks_per_block = aux
  return DF11(*children[:2], np.frombuffer(lengths, np.uint8), *children[2:], shape=shape, total_bits=total_bits,
              bytes_per_chunk=bytes_per_chunk, chunks_per_block=chunks_per_block)


# A pytree (buffers as leaves; the code table, shape and layout static) so that DF11 tensors pass through jit.
jax.tree_util.register_pytree_node(DF11, _df11_flatten, _df11_unflatten)


def _pack_gaps(gaps: np.ndarray) -> np.ndarray:
  """5-bit gaps densely packed, in :func:`paperlab.quant.packing.pack_bits`'s layout (little-endian bit stream),
  with NumPy so the host codec needs no XLA compilation."""
  bits = ((gaps[:, None].astype(np.uint8) >> np.arange(_GAP_BITS, dtype=np.uint8)) & 1).reshape(-1)
  return np.packbits(bits, bitorder="little")


def _unpack_gaps(packed: np.ndarray, n: int) -> np.ndarray:
  bits = np.unpackbits(packed, bitorder="little")[:n * _GAP_BITS].reshape(n, _GAP_BITS).astype(np.int64)
  return (bits << np.arange(_GAP_BITS)).sum(1)


def _as_bf16_bits(x: Any) -> np.ndarray:
  a = np.asarray(x)
  if a.dtype != np.dtype(ml_dtypes.bfloat16):
    raise TypeError(f"x must be bfloat16 (DFloat11 is lossless for bfloat16 only), got dtype {a.dtype}.")
  return np.ascontiguousarray(a).reshape(-1).view(np.uint16)


def huffman_code_lengths(counts: np.ndarray, max_len: int = _MAX_CODE_LEN) -> np.ndarray:
  """Optimal (Huffman) code length per symbol for the given counts (0 for absent symbols), limited to ``max_len``.

  Lengths above ``max_len`` (only for extremely skewed counts) are avoided by halving the counts, rounding up, until
  the code fits; the result then stays a complete prefix code, near optimal.
  """
  counts = np.asarray(counts, np.int64)
  if counts.ndim != 1 or np.any(counts < 0):
    raise ValueError(f"counts must be a 1-D array of non-negative integers, got shape {counts.shape}.")
  present = np.nonzero(counts)[0]
  lengths = np.zeros(counts.shape, np.uint8)
  if present.size == 0:
    return lengths
  if present.size == 1:
    lengths[present] = 1
    return lengths
  c = counts.copy()
  while True:
    heap = [(int(c[s]), int(s), [int(s)]) for s in present]  # (count, tie-break, leaves)
    heapq.heapify(heap)
    depth = np.zeros(counts.shape, np.int64)
    while len(heap) > 1:
      fa, ta, a = heapq.heappop(heap)
      fb, tb, b = heapq.heappop(heap)
      depth[a + b] += 1
      heapq.heappush(heap, (fa + fb, min(ta, tb), a + b))
    if depth.max() <= max_len:
      lengths[present] = depth[present]
      return lengths
    c = np.where(c > 0, (c + 1) // 2, 0)


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
  """Canonical Huffman codes (symbols sorted by (length, value), consecutive codes per length)."""
  codes = np.zeros(lengths.shape, np.uint64)
  order = sorted((int(l), s) for s, l in enumerate(lengths) if l > 0)
  code, prev = 0, order[0][0] if order else 0
  for l, s in order:
    code <<= l - prev
    codes[s] = code
    code += 1
    prev = l
  return codes


def exponent_entropy(x: Any) -> float:
  """Shannon entropy (bits) of the 8-bit exponents of a bfloat16 array or pytree of them (DFloat11, section 2)."""
  leaves = jax.tree.leaves(x)
  counts = np.zeros(256, np.int64)
  for leaf in leaves:
    counts += np.bincount((_as_bf16_bits(leaf) >> 7) & 0xFF, minlength=256)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def df11_encode(x: Any, *, bytes_per_chunk: int = 8, chunks_per_block: int = 256) -> DF11:
  """Compress a bfloat16 array losslessly (DFloat11, arXiv:2504.11651, section 3; host-side NumPy).

  Args:
    x: bfloat16 array (NumPy ``ml_dtypes.bfloat16`` or a JAX array).
    bytes_per_chunk: bytes of the exponent stream per decoding chunk (one GPU thread in the paper: 8).
    chunks_per_block: chunks per block, each block storing the index of its first output element (paper: 256
      threads per block).

  Returns:
    :class:`DF11`.

  Raises:
    TypeError: ``x`` is not bfloat16.
    ValueError: non-positive chunk layout.
  """
  for name, v in (("bytes_per_chunk", bytes_per_chunk), ("chunks_per_block", chunks_per_block)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int, got {v!r}.")
  if bytes_per_chunk * 8 < _MAX_CODE_LEN:
    raise ValueError(f"bytes_per_chunk must be >= {_MAX_CODE_LEN // 8} so every chunk holds a code start, "
                     f"got {bytes_per_chunk}.")
  shape = tuple(np.shape(x))
  w = _as_bf16_bits(x)
  exp = ((w >> 7) & 0xFF).astype(np.int64)
  sign_mant = (((w >> 8) & 0x80) | (w & 0x7F)).astype(np.uint8)
  lengths = huffman_code_lengths(np.bincount(exp, minlength=256))
  codes = _canonical_codes(lengths)
  sym_len = lengths[exp].astype(np.int64)
  starts = np.concatenate([[0], np.cumsum(sym_len)[:-1]]) if exp.size else np.zeros(0, np.int64)
  total_bits = int(sym_len.sum())
  # bit j (MSB first) of every code, laid out at starts[i] + j
  owner = np.repeat(np.arange(exp.size), sym_len)
  j = np.arange(total_bits) - np.repeat(starts, sym_len)
  bits = ((codes[exp][owner] >> (sym_len[owner] - 1 - j).astype(np.uint64)) & np.uint64(1)).astype(np.uint8)
  bitstream = np.packbits(bits)
  chunk_bits = 8 * bytes_per_chunk
  n_chunks = max(1, -(-total_bits // chunk_bits))
  # every chunk holds a code start (codes are at most 32 <= chunk_bits bits long), so the gap is < 32
  first = np.searchsorted(starts, np.arange(n_chunks) * chunk_bits, side="left")  # first code starting in chunk
  first_start = starts[np.minimum(first, exp.size - 1)] if exp.size else np.zeros(n_chunks, np.int64)
  gaps = (first_start - np.arange(n_chunks) * chunk_bits).astype(np.uint8)
  block_starts = first[::chunks_per_block].astype(np.uint32)
  return DF11(sign_mantissa=sign_mant, bitstream=bitstream, code_lengths=lengths,
              gaps=_pack_gaps(gaps), block_starts=block_starts, shape=shape,
              total_bits=total_bits, bytes_per_chunk=bytes_per_chunk, chunks_per_block=chunks_per_block)


def _decode_tables(code_lengths: np.ndarray) -> tuple:
  """Canonical-Huffman decoding tables (host NumPy) shared by both decoders: ``max_len``; a first-level table over
  the leading ``lut_bits = min(max_len, 12)`` bits (``lut_sym``, ``lut_len``; length 0 = a longer code); and the
  per-length ranges of the canonical code: for length ``l`` the codes ``first[l] .. first[l] + count[l] - 1`` map to
  ``syms[offset[l] + k]`` (the paper's hierarchical lookup tables, section 3.3)."""
  lengths = np.asarray(code_lengths).astype(np.int64)
  codes = _canonical_codes(np.asarray(code_lengths)).astype(np.int64)
  max_len = int(lengths.max())
  syms = np.array(sorted((l, s) for s, l in enumerate(lengths) if l > 0), np.int64)[:, 1]
  count = np.bincount(lengths[lengths > 0], minlength=max_len + 1)
  first = np.zeros(max_len + 1, np.int64)
  offset = np.zeros(max_len + 1, np.int64)
  for l in range(1, max_len + 1):
    sl = syms[lengths[syms] == l]
    first[l] = codes[sl[0]] if sl.size else 0
    offset[l] = np.searchsorted(lengths[syms], l, side="left")
  lut_bits = min(max_len, 12)
  lut_sym = np.zeros(1 << lut_bits, np.int64)
  lut_len = np.zeros(1 << lut_bits, np.int64)
  for s, l in enumerate(lengths):
    if 0 < l <= lut_bits:
      lo = int(codes[s]) << (lut_bits - l)
      lut_sym[lo:lo + (1 << (lut_bits - l))] = s
      lut_len[lo:lo + (1 << (lut_bits - l))] = l
  return max_len, lut_bits, lut_sym, lut_len, syms, count, first, offset


def df11_decode(d: DF11) -> np.ndarray:
  """Decompress a :class:`DF11` to the bit-identical bfloat16 NumPy array (host-side, vectorized over chunks like
  the paper's two-phase kernel: decode every chunk's codes in lock step, then place them by the block starts plus
  the prefix sum of per-chunk counts)."""
  n = d.size
  if n == 0:
    return np.zeros(d.shape, ml_dtypes.bfloat16)
  max_len, lut_bits, lut_sym, lut_len, syms, count, first, offset = _decode_tables(d.code_lengths)
  chunk_bits = 8 * d.bytes_per_chunk
  n_chunks = max(1, -(-d.total_bits // chunk_bits))
  gaps = _unpack_gaps(d.gaps, n_chunks)
  stream = np.concatenate([d.bitstream, np.zeros(8, np.uint8)]).astype(np.uint64)
  pos = np.arange(n_chunks, dtype=np.int64) * chunk_bits + gaps
  end = np.minimum((np.arange(n_chunks, dtype=np.int64) + 1) * chunk_bits, d.total_bits)
  out_sym, out_valid = [], []
  while True:
    active = pos < end
    if not active.any():
      break
    byte = pos >> 3
    window = np.zeros(n_chunks, np.uint64)  # 40 bits from the byte holding pos, then aligned to pos
    for k in range(5):
      window = (window << np.uint64(8)) | stream[np.minimum(byte + k, stream.size - 1)]
    window = (window >> (np.uint64(40 - max_len) - (pos & 7).astype(np.uint64))) & np.uint64((1 << max_len) - 1)
    w = window.astype(np.int64)
    # first level: a table over the leading lut_bits bits resolves every code that short (nearly all of them);
    # the rare longer codes are resolved by the canonical per-length ranges (the paper's hierarchical LUTs)
    sym = lut_sym[w >> (max_len - lut_bits)]
    length = lut_len[w >> (max_len - lut_bits)]
    miss = np.nonzero(length == 0)[0]
    if miss.size:
      wm = w[miss]
      lm = np.zeros(miss.size, np.int64)
      sm = np.zeros(miss.size, np.int64)
      for l in range(max_len, lut_bits, -1):  # the shortest matching length wins
        if count[l] == 0:
          continue
        c = wm >> (max_len - l)
        hit = (c >= first[l]) & (c < first[l] + count[l])
        lm = np.where(hit, l, lm)
        sm = np.where(hit, syms[np.clip(offset[l] + c - first[l], 0, syms.size - 1)], sm)
      sym, length = sym.copy(), length.copy()
      sym[miss], length[miss] = sm, lm
    out_sym.append(sym)
    out_valid.append(active)
    pos = np.where(active, pos + length, pos)
  sym = np.stack(out_sym, 1)
  valid = np.stack(out_valid, 1)
  per_chunk = valid.sum(1)
  # output position of each chunk: its block's start plus the exclusive prefix sum of counts within the block
  block = np.arange(n_chunks) // d.chunks_per_block
  csum = np.cumsum(per_chunk) - per_chunk
  chunk_out = d.block_starts.astype(np.int64)[block] + csum - csum[block * d.chunks_per_block]
  exp = np.zeros(n, np.int64)
  rows, cols = np.nonzero(valid)
  exp[chunk_out[rows] + cols] = sym[rows, cols]
  sm = d.sign_mantissa.astype(np.uint16)
  bits = ((sm & 0x80) << 8) | (exp.astype(np.uint16) << 7) | (sm & 0x7F)
  return bits.view(ml_dtypes.bfloat16).reshape(d.shape)


def df11_decode_jax(d: DF11) -> jax.Array:
  """Decompress a :class:`DF11` to the bit-identical bfloat16 array with JAX: jittable, for decompressing on the
  accelerator inside the program that uses the weights (the point of DFloat11's GPU kernel).

  The same two-phase decoding as the paper's kernel (Zhang et al., arXiv:2504.11651, section 3.3, Algorithm 1) and
  :func:`df11_decode`: phase 1 decodes every chunk's codes in lock step (a ``lax.scan`` of
  ``ceil(8 bytes_per_chunk / shortest code)`` steps, each reading the 32-bit window at every chunk's bit position
  and resolving it with the first-level table or, for codes longer than 12 bits, the canonical per-length ranges);
  phase 2 places each chunk's symbols at its block's start plus the prefix sum of the per-chunk counts. :class:`DF11`
  is a pytree whose buffers are its leaves and whose code lengths, shape and layout are static, so
  ``jax.jit(lambda d, x: x @ df11_decode_jax(d))(d, x)`` compiles the decoding tables in as constants (one program
  per code table and shape).

  Args:
    d: a :class:`DF11` (host buffers, or traced leaves under ``jit``).

  Returns:
    ``bfloat16`` array of shape ``d.shape``, bit-identical to the encoded array.

  Raises:
    ValueError: the exponent stream has ``2**31 - 64`` bits or more (bit positions are int32 without x64).
  """
  n = d.size
  if n == 0:
    return jnp.zeros(d.shape, jnp.bfloat16)
  if d.total_bits >= 2 ** 31 - 64:
    raise ValueError(f"d.total_bits must be < 2**31 - 64 for the int32 bit positions, got {d.total_bits}: split "
                     "the tensor.")
  max_len, lut_bits, lut_sym, lut_len, syms, count, first, offset = _decode_tables(d.code_lengths)
  chunk_bits = 8 * d.bytes_per_chunk
  n_chunks = max(1, -(-d.total_bits // chunk_bits))
  steps = -(-chunk_bits // int(d.code_lengths[d.code_lengths > 0].min()))  # codes that can start in one chunk
  packed = jnp.asarray(d.gaps, jnp.uint8).astype(jnp.int32)
  gap_bit = jnp.arange(n_chunks * _GAP_BITS, dtype=jnp.int32)
  gap_bits = (packed[gap_bit >> 3] >> (gap_bit & 7)) & 1  # little-endian 5-bit gaps, as _pack_gaps
  gaps = jnp.sum(gap_bits.reshape(n_chunks, _GAP_BITS) << jnp.arange(_GAP_BITS, dtype=jnp.int32), axis=1)
  stream = jnp.concatenate([jnp.asarray(d.bitstream, jnp.uint8), jnp.zeros(16, jnp.uint8)]).astype(jnp.uint32)
  chunk = jnp.arange(n_chunks, dtype=jnp.int32)
  end = jnp.minimum((chunk + 1) * chunk_bits, d.total_bits)
  long_lengths = [l for l in range(max_len, lut_bits, -1) if count[l]]  # longest first: the shortest match wins
  lut_sym_j, lut_len_j = jnp.asarray(lut_sym, jnp.int32), jnp.asarray(lut_len, jnp.int32)

  def step(pos, _):
    active = pos < end
    byte, shift = jnp.minimum(pos >> 3, stream.shape[0] - 5), (pos & 7).astype(jnp.uint32)
    b = [stream[byte + k] for k in range(5)]
    hi = (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
    window = (hi << shift) | (b[4] >> (8 - shift))  # the 32 bits from pos on, most significant first
    top = (window >> (32 - lut_bits)).astype(jnp.int32)
    sym, length = lut_sym_j[top], lut_len_j[top]
    miss = length == 0
    for l in long_lengths:
      c = window >> (32 - l)
      lo = jnp.uint32(first[l])
      hit = miss & (c >= lo) & (c - lo < jnp.uint32(count[l]))  # no overflow at the 32-bit code 2**32 - 1
      length = jnp.where(hit, l, length)
      sym = jnp.where(hit, jnp.asarray(syms, jnp.int32)[jnp.clip(offset[l] + (c - lo).astype(jnp.int32), 0,
                                                                   syms.size - 1)], sym)
    return jnp.where(active, pos + length, pos), (sym, active)

  _, (sym, valid) = jax.lax.scan(step, chunk * chunk_bits + gaps, None, length=steps)
  sym, valid = sym.T, valid.T  # (chunk, code)
  per_chunk = jnp.sum(valid, axis=1, dtype=jnp.int32)
  block = chunk // d.chunks_per_block
  csum = jnp.cumsum(per_chunk) - per_chunk
  chunk_out = jnp.asarray(d.block_starts).astype(jnp.int32)[block] + csum - csum[block * d.chunks_per_block]
  where = jnp.where(valid, chunk_out[:, None] + jnp.arange(steps, dtype=jnp.int32), n)
  exp = jnp.zeros(n, jnp.uint16).at[where.reshape(-1)].set(sym.reshape(-1).astype(jnp.uint16), mode="drop")
  sm = jnp.asarray(d.sign_mantissa, jnp.uint8).astype(jnp.uint16)
  bits = ((sm & 0x80) << 8) | (exp << 7) | (sm & 0x7F)
  return jax.lax.bitcast_convert_type(bits, jnp.bfloat16).reshape(d.shape)


def df11_compress_params(params: Any, **kwargs: Any) -> Any:
  """:func:`df11_encode` every bfloat16 leaf of a pytree (other leaves are kept); host-side."""
  return jax.tree.map(lambda a: df11_encode(a, **kwargs) if np.asarray(a).dtype == ml_dtypes.bfloat16 else a,
                      params)


def df11_decompress_params(params: Any) -> Any:
  """Inverse of :func:`df11_compress_params`: :class:`DF11` leaves back to bfloat16 arrays."""
  return jax.tree.map(lambda a: df11_decode(a) if isinstance(a, DF11) else a, params,
                      is_leaf=lambda a: isinstance(a, DF11))
