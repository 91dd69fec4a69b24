"""Quantizing a safetensors checkpoint on disk (paperlab.quant.checkpoint): the test checkpoint is written with
``safetensors`` alone (two shards and an index, as ``transformers`` writes them); quantized on disk, reloaded and
dequantized, it must equal :func:`paperlab.quant.quantize_params` on the same tensors in memory, buffer for buffer."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from paperlab import quant

RULES = [
    (r"model/embed_tokens/weight", None),                                  # kept in float (first match wins)
    (r"model/layers/\d+/mlp/up_proj/weight", {"fmt": "int4", "group_size": 128}),
    (r"model/layers/\d+/mlp/down_proj/weight", {"fmt": "int3", "group_size": 128, "symmetric": False}),
    (r"model/layers/\d+/self_attn/q_proj/weight", {"fmt": "fp6_e3m2", "axis": -1, "scale_dtype": jnp.float16}),
    (r"model/layers/\d+/self_attn/k_proj/weight", "mxfp4_e2m1"),
]


def _tensors() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  t = {"model.embed_tokens.weight": rng.normal(size=(40, 16)).astype(np.float32),
       "model.norm.weight": np.ones(16, np.float32),
       "model.position_ids": np.arange(12, dtype=np.int64)}
  for i in range(2):
    p = f"model.layers.{i}."
    t[p + "mlp.up_proj.weight"] = rng.normal(size=(24, 256)).astype(np.float32)
    t[p + "mlp.down_proj.weight"] = (0.02 * rng.standard_t(3, size=(16, 384))).astype(np.float16)
    t[p + "self_attn.q_proj.weight"] = rng.normal(size=(16, 16)).astype(np.float32)
    t[p + "self_attn.k_proj.weight"] = rng.normal(size=(8, 64)).astype(np.float32)
  return t


def _write_sharded(tensors: dict, path) -> None:
  """Two shards and model.safetensors.index.json, written with safetensors only."""
  os.makedirs(path)
  names = list(tensors)
  shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
  for file, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, os.path.join(path, file), metadata={"format": "pt"})
  index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
           "weight_map": {k: f for f, keys in shards.items() for k in keys}}
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump(index, f)


def _nest(flat: dict) -> dict:
  root: dict = {}
  for name, v in flat.items():
    parts = [int(p) if p.isdigit() else p for p in name.split(".")]
    node = root
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return root


def _leaves(tree, prefix=""):
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      yield from _leaves(v, path)
    else:
      yield path, v


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
  tensors = _tensors()
  src = tmp_path_factory.mktemp("ckpt") / "src"
  _write_sharded(tensors, src)
  out = src.parent / "q"
  summary = quant.quantize_checkpoint(src, out, RULES, shard_size=4096)  # several output shards
  return tensors, out, summary


def test_reloaded_checkpoint_equals_in_memory_quantize_params_bit_for_bit(quantized):
  tensors, out, _ = quantized
  assert os.path.exists(out / "model.safetensors.index.json")  # shard_size forced several shards
  loaded = dict(_leaves(quant.load_quantized_checkpoint(out, nested=True)))
  expected = dict(_leaves(quant.quantize_params(_nest({k: jnp.asarray(v) for k, v in tensors.items()}), RULES)))
  assert loaded.keys() == expected.keys()
  n_q = 0
  for path, want in expected.items():
    got = loaded[path]
    if isinstance(want, quant.QArray):
      n_q += 1
      assert isinstance(got, quant.QArray), path
      assert (got.fmt, got.shape, got.axis, got.group_size, got.dtype) == \
             (want.fmt, want.shape, want.axis, want.group_size, want.dtype), path
      for part in ("values", "scales", "zeros"):
        a, b = getattr(got, part), getattr(want, part)
        assert (a is None) == (b is None), (path, part)
        if a is not None:
          assert a.dtype == b.dtype and a.shape == b.shape, (path, part)
          np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
      np.testing.assert_array_equal(np.asarray(got.dequantize()).view(np.uint8),
                                    np.asarray(want.dequantize()).view(np.uint8))
    else:
      orig = tensors[path.replace("/", ".")]
      assert got.dtype == orig.dtype and got.shape == orig.shape
      np.testing.assert_array_equal(got.view(np.uint8), orig.view(np.uint8))
  assert n_q == 8


def test_storage_measured_from_the_saved_buffers(quantized):
  tensors, out, summary = quantized
  sizes: dict[str, int] = {}
  for file in os.listdir(out):
    if file.endswith(".safetensors"):
      with safe_open(str(out / file), "np") as f:
        for k in f.keys():
          sizes[k] = f.get_tensor(k).nbytes

  def per_param(name: str) -> float:
    stored = sum(v for k, v in sizes.items() if k.startswith(name + "."))
    return stored / tensors[name].size

  for i in range(2):
    assert per_param(f"model.layers.{i}.mlp.up_proj.weight") <= 0.53      # W4 g128: 0.5 + 2/128
    assert per_param(f"model.layers.{i}.mlp.down_proj.weight") <= 0.41    # W3 g128 asym: 0.375 + 3/128
    assert per_param(f"model.layers.{i}.self_attn.q_proj.weight") <= 0.75 + 2 / 16
  n_q = sum(tensors[f"model.layers.{i}.{m}.weight"].size for i in range(2)
            for m in ("mlp.up_proj", "mlp.down_proj", "self_attn.q_proj", "self_attn.k_proj"))
  assert summary["params_quantized"] == n_q and summary["quantized"] == 8
  assert summary["bytes_quantized"] == sum(v for k, v in sizes.items() if k.rsplit(".", 1)[-1] in
                                           ("values", "scales", "zeros") and k.rsplit(".", 1)[0] in tensors)


def test_bad_rules_and_targets_raise(quantized, tmp_path):
  _, out, _ = quantized
  src = tmp_path / "src"
  _write_sharded(_tensors(), src)
  with pytest.raises(ValueError, match="matched no floating tensor"):
    quant.quantize_checkpoint(src, tmp_path / "a", [(r"nothing/.*", "int4")])
  with pytest.raises(ValueError, match=r"model.layers.0.mlp.up_proj.weight.*group_size=100"):
    quant.quantize_checkpoint(src, tmp_path / "b", [(r".*up_proj/weight", {"fmt": "int4", "group_size": 100})])
  assert not os.path.exists(tmp_path / "b")  # nothing half-written
  with pytest.raises(ValueError, match="fmt must be one of"):
    quant.quantize_checkpoint(src, tmp_path / "c", [(r".*up_proj/weight", "int9")])
  with pytest.raises(FileExistsError):
    quant.quantize_checkpoint(src, out, RULES)
  with pytest.raises(ValueError, match="not a quantized checkpoint"):
    quant.load_quantized_checkpoint(src)
