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
