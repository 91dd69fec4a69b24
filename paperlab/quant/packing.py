"""Dense bit packing of k-bit codes into bytes (k = 1..8).

Eight k-bit codes fill exactly k bytes, so every width packs without padding inside the stream: int2 stores 4
codes per byte, int3 8 codes in 3 bytes (not padded to 4 bits), int4/fp4 2 per byte, FP6 4 codes in 3 bytes.
Code ``i`` of a chunk occupies bits ``[i*k, (i+1)*k)`` of the little-endian ``8k``-bit chunk (so for k=4 the first
code is the low nibble). A stream of ``n`` codes is stored in exactly ``ceil(n*k/8)`` bytes: the last chunk is
padded with zero codes and the all-zero trailing bytes are dropped; :func:`unpack_bits` takes ``n`` to undo this.

Both functions are pure ``jnp`` with static shapes, so they ``jit`` and ``vmap``. This is the storage the design
asks for ("sub-byte values are really packed"); ``ml_dtypes``' sub-byte types and qwix store one code per byte.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["pack_bits", "unpack_bits", "packed_nbytes"]


def _check_bits(bits: int) -> int:
  if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
    raise ValueError(f"bits must be an int in [1, 8], got {bits!r}.")
  return bits


def packed_nbytes(n: int, bits: int) -> int:
  """Bytes that :func:`pack_bits` uses for ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``."""
  _check_bits(bits)
  return -(-int(n) * bits // 8)


@functools.partial(jax.jit, static_argnames="bits")
def pack_bits(codes: jax.Array, bits: int) -> jax.Array:
  """Pack the low ``bits`` bits of every code of ``codes`` (flattened, any integer dtype) into a ``uint8`` stream.

  Args:
    codes: integer array; only its low ``bits`` bits are stored (two's-complement codes pack as their bit pattern).
    bits: code width in [1, 8].

  Returns:
    1-D ``uint8`` array of length ``ceil(codes.size * bits / 8)``.
  """
  _check_bits(bits)
  c = jnp.ravel(jnp.asarray(codes)).astype(jnp.uint32) & jnp.uint32(2 ** bits - 1)
  n = c.shape[0]
  if bits == 8:
    return c.astype(jnp.uint8)
  n_chunks = -(-n // 8)
  c = jnp.pad(c, (0, n_chunks * 8 - n)).reshape(n_chunks, 8)
  out = []
  for j in range(bits):  # output byte j of each chunk holds chunk bits [8j, 8j + 8)
    byte = jnp.zeros((n_chunks,), jnp.uint32)
    for i in range(8):
      lo = i * bits - 8 * j  # position of code i's bit 0 relative to byte j's bit 0
      if lo >= 8 or lo + bits <= 0:
        continue
      byte = byte | ((c[:, i] << lo) if lo >= 0 else (c[:, i] >> -lo))
    out.append(byte & jnp.uint32(0xFF))
  return jnp.stack(out, axis=1).reshape(-1)[:packed_nbytes(n, bits)].astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("bits", "n", "signed"))
def unpack_bits(packed: jax.Array, bits: int, n: int, *, signed: bool = False) -> jax.Array:
  """Inverse of :func:`pack_bits`: the first ``n`` codes of a packed stream.

  Args:
    packed: 1-D ``uint8`` stream from :func:`pack_bits`.
    bits: code width in [1, 8].
    n: number of codes to read back (static).
    signed: sign-extend the ``bits``-bit codes (two's complement) and return ``int8``; else ``uint8``.

  Returns:
    1-D array of ``n`` codes.
  """
  _check_bits(bits)
  packed = jnp.asarray(packed)
  if packed.ndim != 1 or packed.dtype != jnp.uint8:
    raise ValueError(f"packed must be a 1-D uint8 array, got shape {packed.shape} and dtype {packed.dtype}.")
  need = packed_nbytes(n, bits)
  if packed.shape[0] != need:
    raise ValueError(f"packed has {packed.shape[0]} bytes but {n} codes of {bits} bits need {need}.")
  p = packed.astype(jnp.uint32)
  if bits == 8:
    c = p
  else:
    n_chunks = -(-n // 8)
    p = jnp.pad(p, (0, n_chunks * bits - need)).reshape(n_chunks, bits)
    cols = []
    for i in range(8):
      code = jnp.zeros((n_chunks,), jnp.uint32)
      for j in range(bits):
        lo = i * bits - 8 * j
        if lo >= 8 or lo + bits <= 0:
          continue
        code = code | ((p[:, j] >> lo) if lo >= 0 else (p[:, j] << -lo))
      cols.append(code & jnp.uint32(2 ** bits - 1))
    c = jnp.stack(cols, axis=1).reshape(-1)[:n]
  if signed:
    c = c.astype(jnp.int32)
    c = jnp.where(c >= 2 ** (bits - 1), c - 2 ** bits, c)
    return c.astype(jnp.int8)
  return c.astype(jnp.uint8)
