"""Hugging Face checkpoints on disk: a directory of sharded ``*.safetensors`` files with a
``model.safetensors.index.json`` (or one ``model.safetensors``), read lazily tensor by tensor and written
atomically, so a merge of models larger than memory streams with the memory of a few tensors.

Reading uses positioned reads (``os.preadv``) into fresh host buffers instead of a memory map: pages of a mapped
file count towards the resident set of the process until they are unmapped, so mapping four 2 GB checkpoints
would show an 8 GB peak; a read buffer is freed as soon as its tensor is merged. Dtypes are those of the
safetensors format, decoded bit-exactly through ``ml_dtypes`` (bf16, f16, f32, f64, fp8 variants, ints, bool;
see :mod:`paperlab.merge.io`).

Writing plans every shard before the first byte is written (the names, shapes and dtypes of all output tensors
are known before a merge starts), so each tensor is written once at its final offset, in any order, and shards
are never rewritten. Everything goes to a temporary sibling directory that is renamed onto the output directory
only after the last tensor, the index and ``config.json`` are on disk: an interrupted or failed run (a full disk,
a missing tensor) leaves no directory that looks complete.

:func:`hf_to_tree` / :func:`tree_to_hf` map between Hugging Face's flat ``.``-joined names
(``model.layers.0.self_attn.q_proj.weight``) and a nested pytree (``{"model": {"layers": {0: ...}}}``) for users
who merge in Python with the pytree functions of :mod:`paperlab.merge`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import threading
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from paperlab.merge.io import _CODES, _DTYPE_CODES, _host

PyTree = Any

__all__ = ["CheckpointReader", "CheckpointWriter", "read_checkpoint", "save_checkpoint", "hf_to_tree",
           "tree_to_hf", "parse_size", "INDEX_NAME", "SINGLE_NAME"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_ALIGN = 64
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
          "ti": 2**40, "tib": 2**40}


def parse_size(size: int | str) -> int:
  """Bytes from an int or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"`` or ``"1e9"`` (decimal units for
  ``KB/MB/GB/TB``, binary for ``KiB/MiB/GiB/TiB``, as ``transformers``' ``max_shard_size``)."""
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    n = int(size)
  elif isinstance(size, str) and (m := _SIZE.match(size)):
    n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
  else:
    raise ValueError(f"size must be a positive number of bytes or a string like '5GB' or '500MiB', got {size!r}.")
  if n <= 0:
    raise ValueError(f"size must be positive, got {size!r}.")
  return n


# ----------------------------------------------------------------------------------------------------------------
# reading


def _read_header(path: str) -> tuple[dict, int]:
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path} is not a safetensors file: shorter than its 8-byte header length.")
    (n,) = struct.unpack("<Q", raw)
    size = os.fstat(f.fileno()).st_size
    if n > size - 8:
      raise ValueError(f"{path} is not a safetensors file (or is truncated): header of {n} bytes in a file of "
                       f"{size}.")
    header = json.loads(f.read(n))
  return header, 8 + n


class _TensorInfo:
  __slots__ = ("file", "start", "stop", "dtype", "shape")

  def __init__(self, file: str, start: int, stop: int, dtype: np.dtype, shape: tuple[int, ...]):
    self.file, self.start, self.stop, self.dtype, self.shape = file, start, stop, dtype, shape


class CheckpointReader:
  """Lazy reader of a safetensors checkpoint: a directory with ``model.safetensors.index.json`` (sharded), a
  directory with one or more ``*.safetensors`` files (no index), or one ``.safetensors`` file.

  Only headers are read on construction; :meth:`read` reads one tensor with a positioned read into a new buffer
  (nothing stays resident after the caller drops it). Tensor names are the file's (Hugging Face's flat names).

  Raises ``FileNotFoundError`` naming the path when it holds no safetensors file, and ``ValueError`` naming the
  file for a truncated or inconsistent header (a tensor whose byte range does not match its shape and dtype, or
  lies beyond the end of its file).
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self.files = self._files()
    self._info: dict[str, _TensorInfo] = {}
    self.metadata: dict[str, str] = {}
    for file in self.files:
      header, start = _read_header(file)
      size = os.path.getsize(file)
      for name, info in header.items():
        if name == "__metadata__":
          self.metadata.update(info or {})
          continue
        if info.get("dtype") not in _CODES:
          raise ValueError(f"{file}: tensor {name!r} has safetensors dtype {info.get('dtype')!r}, which paperlab "
                           f"cannot read; accepted: {sorted(_CODES)}.")
        dtype = _CODES[info["dtype"]]
        lo, hi = info["data_offsets"]
        shape = tuple(int(s) for s in info["shape"])
        if hi - lo != dtype.itemsize * math.prod(shape) or start + hi > size:
          raise ValueError(f"{file}: tensor {name!r} has byte range [{lo}, {hi}) for shape {shape} of "
                           f"{info['dtype']} in a file of {size} bytes (truncated or corrupt).")
        if name in self._info:
          raise ValueError(f"tensor {name!r} is stored twice, in {self._info[name].file} and {file}.")
        self._info[name] = _TensorInfo(file, start + lo, start + hi, dtype, shape)
    self._index_names: dict[str, str] | None = None
    index = os.path.join(self.path, INDEX_NAME)
    if os.path.isdir(self.path) and os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map", {})
      missing = sorted(set(weight_map) - set(self._info))
      if missing:
        raise ValueError(f"{index} lists tensors that no shard holds: {missing[:5]}.")
    self._fds: dict[str, int] = {}
    self._lock = threading.Lock()  # reads may come from prefetch threads

  def _files(self) -> list[str]:
    p = self.path
    if os.path.isfile(p):
      return [p]
    if not os.path.isdir(p):
      raise FileNotFoundError(f"checkpoint path {p!r} does not exist.")
    index = os.path.join(p, INDEX_NAME)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index} has no 'weight_map' object.")
      files = sorted(set(weight_map.values()))
      absent = [x for x in files if not os.path.exists(os.path.join(p, x))]
      if absent:
        raise FileNotFoundError(f"{index} names shards that are not in {p}: {absent[:5]}.")
      return [os.path.join(p, x) for x in files]
    files = sorted(x for x in os.listdir(p) if x.endswith(".safetensors"))
    if not files:
      raise FileNotFoundError(f"{p!r} holds no *.safetensors file (a directory of sharded safetensors with "
                              f"{INDEX_NAME}, or one {SINGLE_NAME}, is expected; .bin checkpoints are not read).")
    return [os.path.join(p, x) for x in files]

  def keys(self) -> list[str]:
    """Tensor names in the order of the files and their headers."""
    return list(self._info)

  def __contains__(self, name: str) -> bool:
    return name in self._info

  def __len__(self) -> int:
    return len(self._info)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._get(name).shape

  def dtype(self, name: str) -> np.dtype:
    return self._get(name).dtype

  def nbytes(self, name: str) -> int:
    info = self._get(name)
    return info.stop - info.start

  def _get(self, name: str) -> _TensorInfo:
    try:
      return self._info[name]
    except KeyError:
      raise KeyError(f"checkpoint {self.path!r} has no tensor {name!r}.") from None

  def read(self, name: str) -> np.ndarray:
    """The tensor ``name`` as a new C-contiguous host array of its stored dtype (bit-exact), 64-byte aligned
    (``jax.device_put(x, may_alias=True)`` then shares it on CPU instead of copying)."""
    info = self._get(name)
    with self._lock:
      fd = self._fds.get(info.file)
      if fd is None:
        fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
    n = info.stop - info.start
    raw = np.empty(n + _ALIGN, np.uint8)  # 64-byte aligned, so XLA on CPU can use the buffer without a copy
    off = -raw.ctypes.data % _ALIGN
    buf = raw[off:off + n]
    view, done = memoryview(buf), 0
    while done < n:
      got = os.preadv(fd, [view[done:]], info.start + done)
      if got <= 0:
        raise OSError(f"{info.file}: unexpected end of file reading tensor {name!r}.")
      done += got
    return buf.view(info.dtype).reshape(info.shape)

  def close(self) -> None:
    with self._lock:
      for fd in self._fds.values():
        os.close(fd)
      self._fds.clear()

  def __enter__(self) -> "CheckpointReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pragma: no cover - interpreter shutdown
      pass


def read_checkpoint(path: str | os.PathLike, *, nested: bool = False) -> dict:
  """Every tensor of a checkpoint as ``{name: np.ndarray}`` (stored dtypes, bit-exact), or as a nested pytree
  with ``nested=True`` (see :func:`hf_to_tree`). Loads the whole model: use :class:`CheckpointReader` to stream."""
  with CheckpointReader(path) as r:
    flat = {k: r.read(k) for k in r.keys()}
  return hf_to_tree(flat) if nested else flat


# ----------------------------------------------------------------------------------------------------------------
# name maps


def hf_to_tree(flat: Mapping[str, Any], sep: str = ".") -> dict:
  """Nest flat Hugging Face names: ``"model.layers.0.mlp.up_proj.weight"`` -> ``tree["model"]["layers"][0]
  ["mlp"]["up_proj"]["weight"]``; all-digit components become int keys (the layout of ``nnx.to_pure_dict``).
  Raises ``ValueError`` naming a name that nests under another tensor."""
  root: dict = {}
  for name, value in flat.items():
    parts = [int(p) if p.isdigit() else p for p in name.split(sep)]
    node = root
    for p in parts[:-1]:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"tensor name {name!r} nests under another tensor.")
    if parts[-1] in node:
      raise ValueError(f"tensor name {name!r} collides with a group of the same name.")
    node[parts[-1]] = value
  return root


def tree_to_hf(tree: PyTree, sep: str = ".") -> dict[str, Any]:
  """Inverse of :func:`hf_to_tree`: ``{"."-joined key path: leaf}`` (also for ``nnx.State`` and any pytree of
  dicts/lists). Raises ``ValueError`` when two paths give one name."""
  from paperlab.merge.io import flatten_to_dict

  out = {}
  for name, leaf in flatten_to_dict(tree).items():
    key = name.replace("/", sep)
    if key in out:
      raise ValueError(f"two leaves map to the tensor name {key!r}.")
    out[key] = leaf
  return out


# ----------------------------------------------------------------------------------------------------------------
# writing


def _header_blob(entries: Sequence[tuple[str, str, tuple[int, ...], int, int]], metadata) -> bytes:
  header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
  for name, code, shape, lo, hi in entries:
    header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [lo, hi]}
  blob = json.dumps(header, separators=(",", ":")).encode()
  return blob + b" " * (-len(blob) % 8)  # the format aligns the data section to 8 bytes


class CheckpointWriter:
  """Atomic writer of a sharded safetensors checkpoint whose tensors are declared up front.

  ``specs`` is a sequence of ``(name, shape, dtype)`` in output order; shards are cut in that order when the
  next tensor would push a shard past ``shard_size`` bytes (a tensor larger than ``shard_size`` gets a shard of its
  own), named ``model-00001-of-0000N.safetensors`` with a ``model.safetensors.index.json``, or
  ``model.safetensors`` when one shard holds everything (``transformers``' conventions). :meth:`write` puts a
  tensor at its final offset, in any order; :meth:`commit` checks that every declared tensor was written, adds
  the index and ``extra_files`` (e.g. ``config.json`` and tokenizer files, copied), then renames the temporary
  directory onto ``out_dir``. Leaving the ``with`` block by an exception (or calling :meth:`abort`) deletes the
  temporary directory; ``out_dir`` is then untouched.

  Args:
    out_dir: the output directory; it must not exist, be empty, or (``overwrite=True``) is replaced.
    specs: ``(name, shape, dtype)`` of every output tensor.
    shard_size: bytes (or a string such as ``"5GB"``, see :func:`parse_size`) per shard, default 5 GB as
      mergekit and ``transformers``.
    metadata: ``str -> str`` header metadata of every shard (``{"format": "pt"}`` by default, which
      ``transformers`` expects).
    overwrite: replace an existing non-empty ``out_dir``.
  """

  def __init__(self, out_dir: str | os.PathLike, specs: Sequence[tuple[str, Sequence[int], Any]], *,
               shard_size: int | str = "5GB", metadata: Mapping[str, str] | None = None, overwrite: bool = False):
    self.out_dir = os.path.abspath(os.fspath(out_dir))
    self.shard_size = parse_size(shard_size)
    if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
      raise FileExistsError(f"out_dir {self.out_dir!r} exists and is not a directory.")
    if os.path.isdir(self.out_dir) and os.listdir(self.out_dir) and not overwrite:
      raise FileExistsError(f"out_dir {self.out_dir!r} exists and is not empty; pass overwrite=True "
                            f"(--overwrite) to replace it.")
    self.overwrite = overwrite
    self.metadata = {"format": "pt"} if metadata is None else dict(metadata)
    self._plan(specs)
    parent = os.path.dirname(self.out_dir)
    os.makedirs(parent, exist_ok=True)
    self.tmp_dir = os.path.join(parent, f".{os.path.basename(self.out_dir)}.partial-{os.getpid()}")
    if os.path.exists(self.tmp_dir):
      shutil.rmtree(self.tmp_dir)
    os.makedirs(self.tmp_dir)
    self._fds: dict[int, int] = {}
    self._written: set[str] = set()
    self.bytes_written = 0
    self._done = False
    try:
      for s, (file, blob, _) in enumerate(self._shards):
        fd = os.open(os.path.join(self.tmp_dir, file), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._fds[s] = fd
        os.pwrite(fd, struct.pack("<Q", len(blob)) + blob, 0)
    except BaseException:
      self.abort()
      raise

  def _plan(self, specs) -> None:
    groups: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
    sizes = [0]
    seen = set()
    for name, shape, dtype in specs:
      if name in seen:
        raise ValueError(f"tensor {name!r} is declared twice.")
      seen.add(name)
      dt = np.dtype(dtype)
      if dt not in _DTYPE_CODES:
        raise TypeError(f"tensor {name!r} has dtype {dt}, which safetensors cannot store; accepted: "
                        f"{sorted(str(d) for d in _DTYPE_CODES)}.")
      shape = tuple(int(s) for s in shape)
      n = dt.itemsize * math.prod(shape)
      if groups[-1] and sizes[-1] + n > self.shard_size:
        groups.append([])
        sizes.append(0)
      groups[-1].append((name, _DTYPE_CODES[dt], shape, n))
      sizes[-1] += n
    if not seen:
      raise ValueError("specs must declare at least one tensor, got none.")
    count = len(groups)
    self._shards: list[tuple[str, bytes, int]] = []
    self._where: dict[str, tuple[int, int, np.dtype, tuple[int, ...]]] = {}
    for s, group in enumerate(groups):
      file = SINGLE_NAME if count == 1 else f"model-{s + 1:05d}-of-{count:05d}.safetensors"
      entries, off = [], 0
      for name, code, shape, n in group:
        entries.append((name, code, shape, off, off + n))
        off += n
      blob = _header_blob(entries, self.metadata)
      start = 8 + len(blob)
      for name, code, shape, lo, _ in entries:
        self._where[name] = (s, start + lo, _CODES[code], shape)
      self._shards.append((file, blob, start + off))
    self.total_size = sum(sizes)

  @property
  def names(self) -> list[str]:
    return list(self._where)

  def write(self, name: str, value) -> None:
    """Write tensor ``name`` (declared in ``specs``; its shape and dtype must match the declaration)."""
    if self._done:
      raise RuntimeError("the checkpoint was already committed or aborted.")
    if name not in self._where:
      raise KeyError(f"tensor {name!r} was not declared in specs.")
    s, off, dtype, shape = self._where[name]
    arr = _host(value, name)
    if arr.dtype != dtype or tuple(arr.shape) != shape:
      raise ValueError(f"tensor {name!r} is {arr.dtype}{list(arr.shape)}, but was declared as "
                       f"{dtype}{list(shape)}.")
    raw = memoryview(arr.reshape(-1).view(np.uint8))
    done = 0
    while done < len(raw):
      done += os.pwrite(self._fds[s], raw[done:], off + done)
    self._written.add(name)
    self.bytes_written += len(raw)

  def commit(self, extra_files: Iterable[str | os.PathLike] = ()) -> str:
    """Finish: check completeness, write the index, copy ``extra_files`` in, rename onto ``out_dir``; returns it."""
    missing = [n for n in self._where if n not in self._written]
    if missing:
      self.abort()
      raise ValueError(f"{len(missing)} declared tensors were never written, e.g. {missing[:3]}; nothing was "
                       f"saved to {self.out_dir}.")
    try:
      for s, fd in self._fds.items():
        os.ftruncate(fd, self._shards[s][2])  # a tensor-less tail (0-size tensors) still has its full length
        os.fsync(fd)
        os.close(fd)
      self._fds.clear()
      if len(self._shards) > 1:
        index = {"metadata": {"total_size": self.total_size},
                 "weight_map": {n: self._shards[w[0]][0] for n, w in self._where.items()}}
        with open(os.path.join(self.tmp_dir, INDEX_NAME), "w") as f:
          json.dump(index, f, indent=2)
      for extra in extra_files:
        shutil.copy(os.fspath(extra), os.path.join(self.tmp_dir, os.path.basename(os.fspath(extra))))
      if os.path.isdir(self.out_dir):
        old = f"{self.tmp_dir}.old"
        os.rename(self.out_dir, old)
        os.rename(self.tmp_dir, self.out_dir)
        shutil.rmtree(old)
      else:
        os.rename(self.tmp_dir, self.out_dir)
    except BaseException:
      self.abort()
      raise
    self._done = True
    return self.out_dir

  def abort(self) -> None:
    """Delete the temporary directory (``out_dir`` is untouched)."""
    for fd in self._fds.values():
      try:
        os.close(fd)
      except OSError:
        pass
    self._fds.clear()
    self._done = True
    shutil.rmtree(self.tmp_dir, ignore_errors=True)

  def __enter__(self) -> "CheckpointWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None or not self._done:
      if not self._done:
        self.abort()


def save_checkpoint(tensors: Mapping[str, Any] | PyTree, out_dir: str | os.PathLike, *,
                    shard_size: int | str = "5GB", config: Mapping[str, Any] | None = None,
                    extra_files: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> str:
  """Write ``{hf_name: array}`` (or a nested pytree, flattened by :func:`tree_to_hf`) as a sharded safetensors
  checkpoint, atomically (see :class:`CheckpointWriter`); ``config`` is written as ``config.json``."""
  flat = dict(tensors) if _is_flat(tensors) else tree_to_hf(tensors)
  arrays = {k: _host(v, k) for k, v in flat.items()}
  with CheckpointWriter(out_dir, [(k, a.shape, a.dtype) for k, a in arrays.items()], shard_size=shard_size,
                        overwrite=overwrite) as w:
    for k, a in arrays.items():
      w.write(k, a)
    extras = list(extra_files)
    if config is not None:
      cfg = os.path.join(w.tmp_dir, "config.json")
      with open(cfg, "w") as f:
        json.dump(dict(config), f, indent=2)
    return w.commit(extras)


def _is_flat(tree) -> bool:
  return isinstance(tree, Mapping) and all(isinstance(k, str) and hasattr(v, "shape") for k, v in tree.items())

