"""Unit tests for paperlab.merge.io: safetensors import/export of pytrees."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

import paperlab.merge as pm
from paperlab.models import MLP


def _tree():
  return {"hidden": {0: {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3, jnp.bfloat16)}},
          "head": {"kernel": jnp.full((3, 2), 0.5, jnp.float16)}, "step": jnp.asarray(4, jnp.int32)}


def test_save_load_round_trip_keeps_values_dtypes_and_names(tmp_path):
  tree = _tree()
  path = tmp_path / "m.safetensors"
  pm.save_safetensors(tree, path, metadata={"source": "test"})
  with safe_open(str(path), framework="flax") as f:
    assert sorted(f.keys()) == ["head/kernel", "hidden/0/bias", "hidden/0/kernel", "step"]
    assert f.metadata() == {"source": "test"}
  loaded = pm.load_safetensors(path)
  assert loaded["hidden"][0]["bias"].dtype == jnp.bfloat16
  assert loaded["head"]["kernel"].dtype == jnp.float16
  np.testing.assert_array_equal(loaded["hidden"][0]["kernel"], tree["hidden"][0]["kernel"])
  assert int(loaded["step"]) == 4


def test_load_into_a_template_checks_names_and_shapes(tmp_path):
  tree = _tree()
  path = tmp_path / "m.safetensors"
  pm.save_safetensors(tree, path)
  like = dict(tree, extra=jnp.zeros(1))
  with pytest.raises(ValueError, match="extra"):
    pm.load_safetensors(path, like=like)
  wrong = {**tree, "head": {"kernel": jnp.zeros((2, 2))}}
  with pytest.raises(ValueError, match="head/kernel"):
    pm.load_safetensors(path, like=wrong)


def test_nnx_state_round_trips_through_pure_dict_names(tmp_path):
  state = nnx.split(MLP(4, [3], 2, rngs=nnx.Rngs(0)), nnx.Param)[1]
  path = tmp_path / "mlp.safetensors"
  pm.save_safetensors(state, path)
  with safe_open(str(path), framework="flax") as f:
    assert "hidden/0/kernel" in f.keys()
  template = nnx.split(MLP(4, [3], 2, rngs=nnx.Rngs(1)), nnx.Param)[1]
  loaded = pm.load_safetensors(path, like=template)
  assert isinstance(loaded, nnx.State)
  np.testing.assert_array_equal(loaded["hidden"][0]["kernel"].value, state["hidden"][0]["kernel"].value)


def test_merging_weights_saved_elsewhere(tmp_path):
  base = {"w": jnp.zeros(4)}
  for i in range(2):
    pm.save_safetensors({"w": jnp.full(4, float(i + 1))}, tmp_path / f"ft{i}.safetensors")
  fts = [pm.load_safetensors(tmp_path / f"ft{i}.safetensors", like=base) for i in range(2)]
  np.testing.assert_allclose(pm.task_arithmetic(base, fts, 0.5)["w"], 1.5)


def test_flatten_rejects_colliding_names():
  with pytest.raises(ValueError, match="a/b"):
    pm.flatten_to_dict({"a/b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}})


def _all_bits(dtype, n_bits: int) -> np.ndarray:
  """Every bit pattern of a small dtype (NaNs and infinities included) as an array of that dtype."""
  raw = np.arange(2 ** n_bits, dtype=np.uint8 if n_bits == 8 else np.uint16)
  return raw.view(dtype)


def _exotic_tree():
  import ml_dtypes

  rng = np.random.default_rng(0)
  return {
      "step": np.asarray([2 ** 40 + 1, -(2 ** 62) + 3], np.int64),  # int32 would hold 1 and 3
      "f64": np.asarray([1 / 3, 1e300, -5e-324], np.float64),  # not float32-representable
      "bf16": jnp.asarray(rng.standard_normal((3, 4)), jnp.bfloat16),
      "f16": _all_bits(np.float16, 16),
      "f32": jnp.asarray(rng.standard_normal(5), jnp.float32),
      "i8": np.arange(-128, 128, dtype=np.int8),
      "mask": np.asarray([True, False, True]),
      "e4m3": _all_bits(ml_dtypes.float8_e4m3fn, 8),
      "e5m2": _all_bits(ml_dtypes.float8_e5m2, 8),
  }


def _bits(x) -> bytes:
  return np.asarray(x).tobytes(order="C")


def test_every_dtype_round_trips_bit_exactly_and_survives_a_resave(tmp_path):
  """Default JAX config (x64 off): int64 2**40+1 used to load as 1 and float64 as float32, and re-saving wrote the
  narrowed types; float8 saved but did not load."""
  tree = _exotic_tree()
  path = tmp_path / "x.safetensors"
  pm.save_safetensors(tree, path)
  loaded = pm.load_safetensors(path)
  for name, x in tree.items():
    assert np.dtype(loaded[name].dtype) == np.dtype(x.dtype), name
    assert _bits(loaded[name]) == _bits(x), name
  assert int(loaded["step"][0]) == 2 ** 40 + 1
  pm.save_safetensors(loaded, tmp_path / "again.safetensors")
  again = pm.load_safetensors(tmp_path / "again.safetensors")
  for name, x in tree.items():
    assert np.dtype(again[name].dtype) == np.dtype(x.dtype) and _bits(again[name]) == _bits(x), name


def test_files_interoperate_with_safetensors_torch(tmp_path):
  """The independent reader/writer: ``safetensors.torch`` reads what we write (same dtypes, same bits) and we read
  what it writes."""
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file, save_file

  tree = _exotic_tree()
  ours = tmp_path / "ours.safetensors"
  pm.save_safetensors(tree, ours)
  theirs = load_file(str(ours))
  as_torch = {"step": torch.int64, "f64": torch.float64, "bf16": torch.bfloat16, "f16": torch.float16,
              "f32": torch.float32, "i8": torch.int8, "mask": torch.bool, "e4m3": torch.float8_e4m3fn,
              "e5m2": torch.float8_e5m2}
  for name, x in tree.items():
    t = theirs[name]
    assert t.dtype == as_torch[name], name
    assert t.contiguous().view(torch.uint8).numpy().tobytes() == _bits(x), name
  written = tmp_path / "torch.safetensors"
  save_file({k: v.clone() for k, v in theirs.items()}, str(written))
  back = pm.load_safetensors(written)
  for name, x in tree.items():
    assert np.dtype(back[name].dtype) == np.dtype(x.dtype) and _bits(back[name]) == _bits(x), name


def test_load_with_a_template_of_another_dtype_raises_naming_the_tensor(tmp_path):
  tree = _exotic_tree()
  path = tmp_path / "x.safetensors"
  pm.save_safetensors(tree, path)
  like = dict(tree, bf16=jnp.zeros((3, 4), jnp.float32))
  with pytest.raises(ValueError, match="'bf16'.*bfloat16.*float32"):
    pm.load_safetensors(path, like=like)
  like = dict(tree, step=jnp.zeros(2, jnp.int32))  # what jnp.asarray(int64) gives with x64 off
  with pytest.raises(ValueError, match="'step'.*int64.*int32"):
    pm.load_safetensors(path, like=like)
  assert _bits(pm.load_safetensors(path, like=tree)["step"]) == _bits(tree["step"])


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
  path = tmp_path / "m.safetensors"
  pm.save_safetensors(_tree(), path)
  with pytest.raises(TypeError, match="'bad'"):
    pm.save_safetensors({"bad": np.asarray(["a"])}, path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
  assert int(pm.load_safetensors(path)["step"]) == 4  # the earlier file is intact
