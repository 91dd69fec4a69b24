"""Quantize a safetensors checkpoint on disk, tensor by tensor, and load the packed result back as ``QArray`` s.

:func:`quantize_checkpoint` streams a Hugging Face checkpoint (a directory of sharded ``*.safetensors`` with
``model.safetensors.index.json``, or one file) through :func:`paperlab.quant.quantize`: each tensor is read on its
own, quantized when a path-regex rule selects it (the rules of :func:`paperlab.quant.quantize_params`), and written
at its final offset in the output shards, so peak memory is a few tensors whatever the model's size. The output is
itself a sharded safetensors checkpoint (with an index when it has several shards), written atomically:

* a tensor no rule quantizes (or a non-floating one) is copied bit for bit under its name;
* a quantized tensor ``name`` becomes ``name.values`` (the densely packed ``uint8`` code stream),
  ``name.scales`` (float scales in ``scale_dtype``, or E8M0 codes for MX formats) and, for asymmetric integer
  formats, ``name.zeros`` (``uint8`` zero points): exactly the buffers of the :class:`~paperlab.quant.QArray`;
* the layout of every quantized tensor (format, logical shape, axis, group size, dtype) is JSON in the shards'
  header metadata under ``"paperlab.quant"`` (safetensors metadata is ``str -> str``).

:func:`load_quantized_checkpoint` reads it back into ``{name: QArray | array}`` (or the nested pytree of
:func:`paperlab.merge.hf_to_tree`), bit-exact. The storage of a quantized tensor is what its buffers hold:
``ceil(n * bits / 8)`` bytes of codes plus the scales (and zero points), e.g. 0.5 + 2/128 bytes per parameter for
int4 with group 128 and bfloat16 scales.

Rules are matched against the tensor name with ``.`` replaced by ``/`` (``model/layers/0/mlp/up_proj/weight``),
which is the ``/``-joined key path of the nested tree that :func:`paperlab.merge.hf_to_tree` builds from the
checkpoint, so the same rules give the same tensors as :func:`paperlab.quant.quantize_params` on that tree. Note
the layout of Hugging Face (PyTorch) weights: ``(out, in)``, whose reduction axis is ``-1`` (``quantize``'s
default); a Flax kernel ``(in, out)`` needs ``axis=0``.

File IO is the lazy reader and atomic writer of :mod:`paperlab.merge.checkpoint` (its public
``CheckpointReader`` / ``CheckpointWriter``, imported when a function is called, so that importing
:mod:`paperlab.quant` does not import :mod:`paperlab.merge`). Host-side orchestration: the per-tensor quantization
is jitted, the loop over tensors is not.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from paperlab.quant import _rules
from paperlab.quant.qarray import QArray, Rule, _rule_kwargs, quantize

__all__ = ["METADATA_KEY", "quantize_checkpoint", "load_quantized_checkpoint"]

METADATA_KEY = "paperlab.quant"
"""Header metadata key of a quantized checkpoint: JSON ``{name: {"fmt", "shape", "axis", "group_size",
"dtype"}}`` of every quantized tensor."""

_PARTS = ("values", "scales", "zeros")


def _compile_rules(rules: Sequence[Rule]) -> list:
  return _rules.compile_rules(rules, _rule_kwargs)


def _floating(dtype: Any) -> bool:
  """Floating, including the ``ml_dtypes`` types (bfloat16, float8...) NumPy itself calls void."""
  return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))


def _plan(reader, compiled) -> tuple[dict, list]:
  """``({name: quantize kwargs or None}, unused rule patterns)`` from the headers alone."""
  plan, used = {}, [False] * len(compiled)
  for name in reader.keys():
    plan[name] = None
    if not _floating(reader.dtype(name)):
      continue
    path = name.replace(".", "/")
    for i, (rx, _, kw) in enumerate(compiled):
      if rx.fullmatch(path):
        used[i] = True
        plan[name] = None if kw is None else dict(kw)
        break
  return plan, [pattern for (_, pattern, _), u in zip(compiled, used) if not u]


def _abstract(name: str, shape, dtype, kw: dict) -> QArray:
  """The QArray that ``quantize`` would return, as shapes and dtypes (no data read)."""
  kw = dict(kw)
  fmt = kw.pop("fmt")
  try:
    return jax.eval_shape(lambda x: quantize(x, fmt, **kw), jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype)))
  except (ValueError, TypeError) as e:
    raise type(e)(f"quantize_checkpoint at tensor {name!r}: {e}") from None


def quantize_checkpoint(src: str | os.PathLike, out_dir: str | os.PathLike, rules: Sequence[Rule], *,
                        shard_size: int | str = "5GB", overwrite: bool = False) -> dict:
  """Quantize the tensors of a safetensors checkpoint chosen by path-regex rules and save the packed result.

  Each selected tensor goes through :func:`paperlab.quant.quantize` (formats: int2..int8, FP8/FP6/FP4, NF4, OCP MX;
  e.g. GPTQ/AWQ-style ``{"fmt": "int4", "group_size": 128}`` or ZeroQuant(4+2)'s FP6, Wu et al.,
  arXiv:2312.08583, ``{"fmt": "fp6_e3m2", "scale_dtype": jnp.float16}``) and is stored as its packed buffers
  (module docstring). Streams tensor by tensor; the output appears atomically (temporary directory, then rename).

  Args:
    src: checkpoint directory (sharded with an index, or ``*.safetensors`` files) or one ``.safetensors`` file.
    out_dir: output directory; must not exist or be empty unless ``overwrite``.
    rules: ``(regex, spec)`` pairs as in :func:`paperlab.quant.quantize_params`, matched (``re.fullmatch``, first
      match wins) against the tensor name with ``.`` replaced by ``/``; ``spec`` is a format name, a dict of
      :func:`~paperlab.quant.quantize` keyword arguments with ``"fmt"``, or ``None`` (keep in float). Tensors no
      rule matches, and non-floating tensors, are copied unchanged.
    shard_size: bytes (or ``"5GB"``-style string) per output shard.
    overwrite: replace a non-empty ``out_dir``.

  Returns:
    A summary: ``{"path", "tensors", "quantized", "params_quantized", "bytes_quantized", "bytes_per_param",
    "bytes_written"}``; ``bytes_quantized`` counts the packed codes, scales and zero points of the quantized
    tensors (measured from the buffers written), ``bytes_per_param`` is their ratio to ``params_quantized``.

  Raises:
    ValueError: a malformed rule, a rule that matches no floating tensor, a :func:`~paperlab.quant.quantize`
      error (unsupported format, group size not dividing the axis, non-finite values), prefixed with the tensor's
      name; an output name that collides with a kept tensor.
    FileNotFoundError: ``src`` holds no safetensors file.
    FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
  """
  from paperlab.merge.checkpoint import CheckpointReader, CheckpointWriter  # pylint: disable=g-import-not-at-top

  compiled = _compile_rules(rules)
  with CheckpointReader(src) as reader:
    plan, unused = _plan(reader, compiled)
    if unused:
      floating = [n.replace(".", "/") for n in reader.keys() if _floating(reader.dtype(n))]
      raise ValueError(f"rules {unused} matched no floating tensor (or only tensors an earlier rule took: the "
                       f"first match wins); the floating tensor paths are {floating[:20]}"
                       f"{' ...' if len(floating) > 20 else ''}.")
    specs, layout = [], {}
    for name in reader.keys():
      kw = plan[name]
      if kw is None:
        specs.append((name, reader.shape(name), reader.dtype(name)))
        continue
      aq = _abstract(name, reader.shape(name), reader.dtype(name), kw)
      layout[name] = {"fmt": aq.fmt, "shape": list(aq.shape), "axis": aq.axis, "group_size": aq.group_size,
                      "dtype": aq.dtype}
      for part in _PARTS:
        buf = getattr(aq, part)
        if buf is not None:
          specs.append((f"{name}.{part}", buf.shape, np.dtype(buf.dtype)))
    metadata = {"format": "pt", METADATA_KEY: json.dumps(layout, sort_keys=True)}
    params_q = bytes_q = 0
    with CheckpointWriter(out_dir, specs, shard_size=shard_size, metadata=metadata, overwrite=overwrite) as w:
      for name in reader.keys():
        x = reader.read(name)
        kw = plan[name]
        if kw is None:
          w.write(name, x)
          continue
        kw = dict(kw)
        try:
          qa = quantize(jnp.asarray(x), kw.pop("fmt"), **kw)
        except (ValueError, TypeError) as e:
          raise type(e)(f"quantize_checkpoint at tensor {name!r}: {e}") from None
        params_q += qa.size
        for part in _PARTS:
          buf = getattr(qa, part)
          if buf is not None:
            host = np.asarray(buf)
            w.write(f"{name}.{part}", host)
            bytes_q += host.nbytes
        del x, qa
      path = w.commit()
      written = w.bytes_written
  return {"path": path, "tensors": len(plan), "quantized": len(layout), "params_quantized": params_q,
          "bytes_quantized": bytes_q, "bytes_per_param": bytes_q / params_q if params_q else float("nan"),
          "bytes_written": written}


def load_quantized_checkpoint(path: str | os.PathLike, *, nested: bool = False) -> dict:
  """Read a checkpoint written by :func:`quantize_checkpoint` back into ``QArray`` s (bit-exact buffers).

  Args:
    path: the quantized checkpoint (directory or file).
    nested: return the nested pytree of :func:`paperlab.merge.hf_to_tree` (``{"model": {"layers": {0: ...}}}``,
      the structure :func:`paperlab.quant.quantize_params` sees) instead of ``{name: leaf}``.

  Returns:
    ``{name: QArray}`` for quantized tensors (buffers as ``jax.Array`` s) and ``{name: np.ndarray}`` (stored
    dtype) for the others; :func:`paperlab.quant.dequantize_params` turns it into float arrays.

  Raises:
    ValueError: the header metadata names a tensor whose buffers are missing, or holds no ``"paperlab.quant"``
      entry (not a quantized checkpoint).
  """
  from paperlab.merge.checkpoint import CheckpointReader, hf_to_tree  # pylint: disable=g-import-not-at-top

  with CheckpointReader(path) as reader:
    if METADATA_KEY not in reader.metadata:
      raise ValueError(f"{os.fspath(path)!r} is not a quantized checkpoint: its safetensors header metadata has no "
                       f"{METADATA_KEY!r} entry (write one with paperlab.quant.quantize_checkpoint).")
    layout: Mapping[str, Any] = json.loads(reader.metadata[METADATA_KEY])
    owned = {f"{n}.{p}": n for n in layout for p in _PARTS}
    out = {}
    for name in reader.keys():
      if name in owned:
        if owned[name] not in out:
          out[owned[name]] = _load_one(reader, path, owned[name], layout[owned[name]])
      else:
        out[name] = reader.read(name)
    for name, lay in layout.items():  # a tensor whose buffers are all missing
      if name not in out:
        out[name] = _load_one(reader, path, name, lay)
  return hf_to_tree(out) if nested else out


def _load_one(reader, path, name: str, lay: Mapping[str, Any]) -> QArray:
  """The QArray ``name`` of a quantized checkpoint from its buffers and layout."""
  missing = [f"{name}.{p}" for p in ("values", "scales") if f"{name}.{p}" not in reader]
  if missing:
    raise ValueError(f"quantized tensor {name!r} has no buffer {missing[0]!r} in {os.fspath(path)!r}.")
  zeros = reader.read(f"{name}.zeros") if f"{name}.zeros" in reader else None
  return QArray(values=jnp.asarray(reader.read(f"{name}.values")),
                scales=jnp.asarray(reader.read(f"{name}.scales")),
                zeros=None if zeros is None else jnp.asarray(zeros), fmt=lay["fmt"],
                shape=tuple(int(s) for s in lay["shape"]),
                axis=None if lay["axis"] is None else int(lay["axis"]),
                group_size=int(lay["group_size"]), dtype=lay["dtype"])
