"""LoRC: low-rank compensation of the weight quantization error (Yao et al., "ZeroQuant-V2: Exploring Post-training
Quantization in LLMs from Comprehensive Study to Low Rank Compensation", arXiv:2303.08302, Sec. 5).

For a quantized kernel ``W_hat`` (from any quantizer: RTN, GPTQ, AWQ...) the error ``E = W - W_hat`` is
approximated by its best rank-``m`` factorization (Eckart-Young): with the SVD ``E = U S V^T``,
``U_hat = U_m S_m^(1/2)`` and ``V_hat = V_m S_m^(1/2)`` (Eq. 5-6 of the paper), and the layer serves
``W_hat + U_hat V_hat^T``. The factors may themselves be quantized (the paper uses 8 bits) and cost
``m (in + out)`` parameters per layer. Jittable with ``rank`` and ``factor_bits`` static; float32 SVD.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp

from paperlab.quant.rtn import check_bits, check_kernel, quantize_rtn

__all__ = ["lorc", "apply_lorc", "lorc_model"]


@functools.partial(jax.jit, static_argnames=("rank",))
def _factors(w, w_hat, rank):
  e = w.astype(jnp.float32) - w_hat.astype(jnp.float32)
  u, s, vt = jnp.linalg.svd(e, full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return u[:, :rank] * root, vt[:rank].T * root


def lorc(w: jax.Array, w_hat: jax.Array, *, rank: int = 8, factor_bits: int | None = None
         ) -> tuple[jax.Array, jax.Array]:
  """LoRC factors ``(U, V)`` with ``w ~ w_hat + U @ V.T`` (ZeroQuant-V2, arXiv:2303.08302, Eq. 5-6).

  Args:
    w: full-precision kernel ``(in, out)``.
    w_hat: its quantized (dequantized) kernel, same shape.
    rank: ``m``, the rank of the compensation (the paper: 8).
    factor_bits: if given (2..8), each factor is RTN-quantized per column (symmetric, one scale per column) and
      returned dequantized; ``None`` keeps them in float32.

  Returns:
    ``U`` of shape ``(in, rank)`` and ``V`` of shape ``(out, rank)``, float32.

  Raises:
    ValueError: mismatched shapes, ``rank`` outside ``[1, min(in, out)]``, unsupported ``factor_bits``,
      non-finite inputs.
  """
  w = check_kernel("w", w)
  w_hat = check_kernel("w_hat", w_hat)
  if w.shape != w_hat.shape:
    raise ValueError(f"w_hat must have the shape of w {tuple(w.shape)}, got {tuple(w_hat.shape)}.")
  if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(w.shape):
    raise ValueError(f"rank must be an int in [1, {min(w.shape)}] for a kernel of shape {tuple(w.shape)}, "
                     f"got {rank!r}.")
  u, v = _factors(w, w_hat, rank)
  if factor_bits is not None:
    bits = check_bits(factor_bits)
    u = quantize_rtn(u, bits=bits, symmetric=True).w_hat
    v = quantize_rtn(v, bits=bits, symmetric=True).w_hat
  return u, v


def apply_lorc(w_hat: jax.Array, factors: tuple[jax.Array, jax.Array]) -> jax.Array:
  """The compensated kernel ``w_hat + U @ V.T`` in ``w_hat``'s dtype."""
  u, v = factors
  if u.shape[0] != w_hat.shape[0] or v.shape[0] != w_hat.shape[1] or u.shape[1] != v.shape[1]:
    raise ValueError(f"factors must have shapes ({w_hat.shape[0]}, m) and ({w_hat.shape[1]}, m), got "
                     f"{tuple(u.shape)} and {tuple(v.shape)}.")
  return (w_hat.astype(jnp.float32) + u @ v.T).astype(w_hat.dtype)


def lorc_model(params: Any, params_q: Any, *, rank: int = 8, factor_bits: int | None = None,
               include: str = r"(^|/)kernel$") -> tuple[Any, dict]:
  """LoRC over every 2-D leaf whose ``/``-joined path matches ``include`` (Flax kernels by default).

  Args:
    params: full-precision parameter pytree (nested dicts or ``nnx.State``).
    params_q: the same pytree after quantization.
    rank, factor_bits: as :func:`lorc`; a kernel smaller than ``rank`` in either dimension is left alone.

  Returns:
    ``(params_compensated, {path: (U, V)})``.
  """
  if jax.tree.structure(params) != jax.tree.structure(params_q):
    raise ValueError("params and params_q must have the same tree structure.")
  factors = {}

  def one(path, w, w_hat):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
    if getattr(w, "ndim", 0) != 2 or re.search(include, name) is None or rank > min(w.shape):
      return w_hat
    factors[name] = lorc(w, w_hat, rank=rank, factor_bits=factor_bits)
    return apply_lorc(w_hat, factors[name])

  return jax.tree_util.tree_map_with_path(one, params, params_q), factors
