"""Import and export parameter pytrees as safetensors files (never pickle), so weights saved elsewhere can be
merged here and merged weights can be loaded elsewhere.

Tensor names are the ``/``-joined key paths of the leaves (``"hidden/0/kernel"``); an ``nnx.State`` is stored
through its pure-dict form, so its names carry no ``/value`` suffix.

The file format (an 8-byte little-endian header length, a JSON header of dtypes, shapes and byte offsets, then the
raw little-endian tensors) is read and written here directly, so every dtype round-trips bit-exactly: the
``safetensors.flax`` helpers go through ``jnp.asarray``, which narrows 64-bit tensors when x64 is off, and do not
read float8. Files interoperate with ``safetensors`` (``safe_open``, ``safetensors.torch``).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from paperlab._tree import path_str

PyTree = Any

__all__ = ["flatten_to_dict", "unflatten_from_dict", "save_safetensors", "load_safetensors"]


def _as_pure(tree: PyTree) -> tuple[PyTree, bool]:
  try:
    from flax import nnx
  except ImportError:  # pragma: no cover
    return tree, False
  if isinstance(tree, nnx.State):
    return nnx.to_pure_dict(tree), True
  return tree, False


def flatten_to_dict(tree: PyTree) -> dict[str, jax.Array]:
  """``{"/"-joined key path: leaf}`` for every leaf of ``tree`` (plain nested containers or ``nnx.State``).

  Raises ``ValueError`` when two paths collide (a key containing ``/``) or a leaf is not an array."""
  pure, _ = _as_pure(tree)
  out: dict[str, jax.Array] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
    name = path_str(path)
    if name in out:
      raise ValueError(f"two leaves share the tensor name {name!r}; keys must not contain '/'.")
    if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
      raise TypeError(f"leaf {name!r} must be an array to be saved as a tensor, got {type(leaf).__name__}.")
    out[name] = leaf
  return out


def _nest(flat: Mapping[str, Any]) -> dict:
  root: dict = {}
  for name, value in flat.items():
    parts = [int(p) if p.isdigit() else p for p in name.split("/")]
    node = root
    for p in parts[:-1]:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"tensor name {name!r} nests under a leaf.")
    node[parts[-1]] = value
  return root


def unflatten_from_dict(flat: Mapping[str, Any], like: PyTree | None = None) -> PyTree:
  """Inverse of :func:`flatten_to_dict`.

  With ``like`` (a pytree or ``nnx.State``) the result has exactly its structure; a missing or unexpected name,
  or a shape differing from ``like``'s, raises ``ValueError`` naming it. Without ``like`` the result is a nested
  dict split on ``/`` in which all-digit components become int keys (the layout of ``nnx.to_pure_dict``)."""
  if like is None:
    return _nest(flat)
  pure, is_state = _as_pure(like)
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(pure)
  names = [path_str(p) for p, _ in leaves_with_path]
  missing = [n for n in names if n not in flat]
  extra = [n for n in flat if n not in set(names)]
  if missing or extra:
    raise ValueError(f"tensor names do not match `like`: missing {missing[:5]}, unexpected {extra[:5]}.")
  out = []
  for name, (_, ref) in zip(names, leaves_with_path):
    value = flat[name]
    if tuple(np.shape(value)) != tuple(np.shape(ref)):
      raise ValueError(f"tensor {name!r} has shape {tuple(np.shape(value))}, expected {tuple(np.shape(ref))}.")
    out.append(value)
  result = jax.tree.unflatten(treedef, out)
  if is_state:
    from flax import nnx

    state = jax.tree.map(lambda x: x, like)
    nnx.replace_by_pure_dict(state, result)
    return state
  return result


# safetensors dtype codes (https://github.com/huggingface/safetensors, ``Dtype`` in safetensors/src/tensor.rs).
_CODES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz), "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32), "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_), "C64": np.dtype(np.complex64), "C128": np.dtype(np.complex128),
}
_DTYPE_CODES = {v: k for k, v in _CODES.items()}


def _host(leaf, name: str) -> np.ndarray:
  """The leaf as a little-endian C-contiguous host array of its own dtype (numpy int64/float64 leaves are not
  narrowed, as ``jnp.asarray`` would do with x64 disabled)."""
  arr = np.asarray(leaf)
  arr = arr if arr.flags.c_contiguous else arr.copy(order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
  if arr.dtype not in _DTYPE_CODES:
    raise TypeError(f"tensor {name!r} has dtype {arr.dtype}, which safetensors cannot store; accepted: "
                    f"{sorted(str(d) for d in _DTYPE_CODES)}.")
  if arr.dtype.byteorder == ">":
    arr = arr.astype(arr.dtype.newbyteorder("<"))
  return arr


def save_safetensors(tree: PyTree, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> None:
  """Write ``tree`` to a ``.safetensors`` file, one tensor per leaf named by its ``/``-joined key path.

  Dtypes and bits are kept exactly: float64/32/16, bfloat16, float8 (e4m3fn, e5m2, fnuz variants, e8m0), signed
  and unsigned integers of 8 to 64 bits, bool and complex. Numpy leaves are written as they are (an ``int64``
  step counter stays ``int64``; JAX arrays hold 64-bit values only with ``jax_enable_x64``). The file is written
  under a temporary name and renamed, so a reader never sees a partial file. ``metadata`` is an optional
  ``str -> str`` header map."""
  if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
    raise TypeError("metadata must map str to str.")
  arrays = {k: _host(v, k) for k, v in flatten_to_dict(tree).items()}
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = dict(metadata)
  offset = 0
  for name, arr in arrays.items():
    header[name] = {"dtype": _DTYPE_CODES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(struct.pack("<Q", len(blob)))
      f.write(blob)
      for arr in arrays.values():
        f.write(arr.tobytes())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _read_header(f) -> tuple[dict, int]:
  raw = f.read(8)
  if len(raw) != 8:
    raise ValueError("not a safetensors file: shorter than its 8-byte header length.")
  (n,) = struct.unpack("<Q", raw)
  header = json.loads(f.read(n))
  return header, 8 + n


def _fits_jax(dtype: np.dtype) -> bool:
  """Whether ``jnp.asarray`` keeps this dtype as it is (64-bit types need ``jax_enable_x64``)."""
  return dtype.itemsize < 8 or (dtype == np.complex64) or bool(jax.config.jax_enable_x64)


def load_safetensors(path: str | os.PathLike, like: PyTree | None = None) -> PyTree:
  """Read a ``.safetensors`` file into a pytree (see :func:`unflatten_from_dict` for ``like``), bit-exactly.

  Tensors are read one at a time from a memory map. Each comes back as a ``jax.Array`` of its stored dtype
  (bfloat16 and float8 included, through ``ml_dtypes``), except 64-bit tensors (int64, uint64, float64,
  complex128) while JAX's ``jax_enable_x64`` is off: JAX would narrow them to 32 bits (``2**40 + 1`` would load as
  ``1``), so they come back as NumPy arrays of their stored dtype (``jax.config.update("jax_enable_x64", True)``
  makes them ``jax.Array`` too). With ``like``, a tensor whose stored dtype differs from the template leaf's raises
  ``ValueError`` naming it. No code is executed while loading (no pickle)."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    header, start = _read_header(f)
  flat: dict[str, Any] = {}
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  try:
    for name, info in header.items():
      if name == "__metadata__":
        continue
      code = info["dtype"]
      if code not in _CODES:
        raise ValueError(f"tensor {name!r} has safetensors dtype {code!r}, which paperlab cannot read; accepted: "
                         f"{sorted(_CODES)}.")
      dtype = _CODES[code]
      lo, hi = info["data_offsets"]
      shape = tuple(info["shape"])
      if hi - lo != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"tensor {name!r}: {hi - lo} bytes for shape {shape} of {code}.")
      arr = np.array(mm[start + lo:start + hi]).view(dtype).reshape(shape)
      flat[name] = jnp.asarray(arr) if _fits_jax(dtype) else arr
  finally:
    del mm
  if like is not None:
    _check_dtypes(flat, like)
  return unflatten_from_dict(flat, like)


def _check_dtypes(flat: Mapping[str, Any], like: PyTree) -> None:
  for name, ref in flatten_to_dict(like).items():
    if name in flat and np.dtype(flat[name].dtype) != np.dtype(ref.dtype):
      raise ValueError(f"tensor {name!r} is stored as {np.dtype(flat[name].dtype)}, but `like` has "
                       f"{np.dtype(ref.dtype)} there; convert it explicitly (weights are never cast on load).")
