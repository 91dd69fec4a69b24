"""Unit tests for paperlab.merge.checkpoint: lazy sharded safetensors reading, atomic sharded writing, name maps.
The independent reader/writer is ``safetensors`` (``safe_open``, ``safetensors.numpy``)."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import paperlab.merge as pm
from paperlab.merge import checkpoint as ck


def _all_bits(dtype, n_bits: int) -> np.ndarray:
  return np.arange(2 ** n_bits, dtype=np.uint8 if n_bits == 8 else np.uint16).view(dtype)


def _tensors() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16),
      "model.layers.0.self_attn.q_proj.weight": _all_bits(ml_dtypes.bfloat16, 16).reshape(256, 256),
      "model.layers.0.mlp.up_proj.weight": _all_bits(np.float16, 16).reshape(64, 1024),
      "model.layers.1.input_layernorm.weight": rng.standard_normal(8).astype(np.float32),
      "model.norm.weight": np.asarray([1 / 3, 1e300, -5e-324], np.float64),
      "step": np.asarray([2 ** 40 + 1, -3], np.int64),
      "mask": np.asarray([True, False, True]),
      "fp8.e4m3": _all_bits(ml_dtypes.float8_e4m3fn, 8),
      "fp8.e5m2": _all_bits(ml_dtypes.float8_e5m2, 8),
      "empty": np.zeros((0, 3), np.float32),
  }


def _bits(x) -> bytes:
  return np.ascontiguousarray(x).tobytes()


def test_sharded_write_round_trips_every_dtype_bit_exactly(tmp_path):
  tensors = _tensors()
  out = pm.save_checkpoint(tensors, tmp_path / "out", shard_size="100KB", config={"model_type": "llama"})
  files = sorted(os.listdir(out))
  assert ck.INDEX_NAME in files and "config.json" in files
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) >= 3 and all(f.startswith("model-") and f.endswith(f"-of-{len(shards):05d}.safetensors")
                                  for f in shards)
  with open(os.path.join(out, ck.INDEX_NAME)) as f:
    index = json.load(f)
  assert set(index["weight_map"]) == set(tensors)
  assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
  r = pm.CheckpointReader(out)
  assert sorted(r.keys()) == sorted(tensors)
  for name, x in tensors.items():
    y = r.read(name)
    assert y.dtype == x.dtype and y.shape == x.shape and _bits(y) == _bits(x), name
    with safe_open(os.path.join(out, index["weight_map"][name]), framework="numpy") as f:  # the oracle
      if x.dtype not in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        assert _bits(f.get_tensor(name)) == _bits(x), name
  r.close()


def test_files_read_by_torch_safetensors_bit_exactly(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file

  tensors = _tensors()
  out = pm.save_checkpoint(tensors, tmp_path / "out", shard_size="1GB")
  assert sorted(os.listdir(out)) == ["model.safetensors"]  # one shard: transformers' single-file name
  theirs = load_file(os.path.join(out, "model.safetensors"))
  for name, x in tensors.items():
    assert theirs[name].contiguous().view(torch.uint8).numpy().tobytes() == _bits(x), name


def test_reader_reads_safetensors_written_elsewhere_with_an_index(tmp_path):
  rng = np.random.default_rng(1)
  a = {"w.a": rng.standard_normal((3, 4)).astype(np.float32)}
  b = {"w.b": rng.integers(-5, 5, (7,)).astype(np.int32)}
  d = tmp_path / "m"
  d.mkdir()
  save_file(a, str(d / "model-00001-of-00002.safetensors"))
  save_file(b, str(d / "model-00002-of-00002.safetensors"))
  (d / ck.INDEX_NAME).write_text(json.dumps({"weight_map": {"w.a": "model-00001-of-00002.safetensors",
                                                             "w.b": "model-00002-of-00002.safetensors"}}))
  flat = pm.read_checkpoint(d)
  np.testing.assert_array_equal(flat["w.a"], a["w.a"])
  np.testing.assert_array_equal(flat["w.b"], b["w.b"])
  tree = pm.read_checkpoint(d, nested=True)
  assert tree["w"]["b"].dtype == np.int32


def test_reader_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pm.CheckpointReader(tmp_path / "nope")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
    pm.CheckpointReader(tmp_path / "empty")
  out = pm.save_checkpoint({"x": np.ones((64, 64), np.float32)}, tmp_path / "t")
  path = os.path.join(out, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 10)
  with pytest.raises(ValueError, match="'x'.*truncated"):
    pm.CheckpointReader(out)
  with pytest.raises(KeyError, match="no tensor 'y'"):
    pm.CheckpointReader(pm.save_checkpoint({"x": np.ones(2)}, tmp_path / "u")).read("y")


def test_interrupted_or_failed_write_leaves_nothing_that_looks_complete(tmp_path):
  out = tmp_path / "out"
  specs = [("a", (4,), np.float32), ("b", (4,), np.float32)]
  w = pm.CheckpointWriter(out, specs, shard_size=16)
  w.write("a", np.ones(4, np.float32))
  with pytest.raises(ValueError, match="never written.*'b'"):
    w.commit()
  assert not out.exists() and os.listdir(tmp_path) == []
  with pytest.raises(RuntimeError, match="boom"):
    with pm.CheckpointWriter(out, specs) as w:
      w.write("a", np.ones(4, np.float32))
      raise RuntimeError("boom")
  assert os.listdir(tmp_path) == []
  with pytest.raises(ValueError, match="'a' is float64\\[4\\].*float32\\[4\\]"):
    with pm.CheckpointWriter(out, specs) as w:
      w.write("a", np.ones(4))
  assert os.listdir(tmp_path) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
  first = pm.save_checkpoint({"x": np.ones(3, np.float32)}, tmp_path / "o")
  with pytest.raises(FileExistsError, match="not empty.*overwrite"):
    pm.save_checkpoint({"x": np.zeros(3, np.float32)}, first)
  np.testing.assert_array_equal(pm.read_checkpoint(first)["x"], 1)
  pm.save_checkpoint({"x": np.zeros(3, np.float32)}, first, overwrite=True)
  np.testing.assert_array_equal(pm.read_checkpoint(first)["x"], 0)
  assert sorted(os.listdir(tmp_path)) == ["o"]


def test_a_tensor_larger_than_the_shard_size_gets_its_own_shard(tmp_path):
  tensors = {"small": np.ones(2, np.float32), "big": np.ones(1000, np.float32), "tail": np.ones(2, np.float32)}
  out = pm.save_checkpoint(tensors, tmp_path / "o", shard_size=100)
  with open(os.path.join(out, ck.INDEX_NAME)) as f:
    wm = json.load(f)["weight_map"]
  assert len({wm["small"], wm["big"], wm["tail"]}) == 3


@pytest.mark.parametrize("text,n", [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30),
                                    ("1e9", 10**9), (1234, 1234), ("10 kb", 10**4)])
def test_parse_size(text, n):
  assert pm.parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "5XB", -1, 0, "GB", True])
def test_parse_size_rejects(bad):
  with pytest.raises(ValueError, match="size"):
    pm.parse_size(bad)


def test_name_maps_round_trip():
  flat = {"model.layers.0.mlp.up_proj.weight": np.ones(2), "model.layers.1.mlp.up_proj.weight": np.zeros(2),
          "lm_head.weight": np.ones(3)}
  tree = pm.hf_to_tree(flat)
  assert set(tree["model"]["layers"]) == {0, 1}
  assert pm.tree_to_hf(tree).keys() == flat.keys()
  with pytest.raises(ValueError, match="'a.b.c'"):
    pm.hf_to_tree({"a.b": np.ones(1), "a.b.c": np.ones(1)})
