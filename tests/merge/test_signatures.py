"""Robust weight signatures (Cai et al., arXiv:2302.12480): layer-restricted deltas, 8-bit storage, energy share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from paperlab import merge


def _tree(seed):
  k = jax.random.split(jax.random.key(seed), 4)
  return {"hidden": [{"kernel": jax.random.normal(k[0], (6, 5)), "bias": jax.random.normal(k[1], (5,))}],
          "head": {"kernel": jax.random.normal(k[2], (5, 3)), "bias": jax.random.normal(k[3], (3,))}}


def test_signature_keeps_selected_layers_and_patch_round_trips():
  c, r = _tree(0), _tree(1)
  rws = jax.jit(lambda a, b: merge.weight_signature(a, b, include="^hidden/0/"))(c, r)
  np.testing.assert_allclose(rws["hidden"][0]["kernel"], r["hidden"][0]["kernel"] - c["hidden"][0]["kernel"])
  assert float(jnp.abs(rws["head"]["kernel"]).max()) == 0.0
  patched = merge.apply_task_vector(c, rws, 1.0)
  np.testing.assert_allclose(patched["hidden"][0]["bias"], r["hidden"][0]["bias"], rtol=1e-6)
  np.testing.assert_array_equal(patched["head"]["kernel"], c["head"]["kernel"])
  back = merge.apply_task_vector(patched, rws, -1.0)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(c)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  zero = merge.apply_task_vector(c, rws, 0.0)
  for a, b in zip(jax.tree.leaves(zero), jax.tree.leaves(c)):
    np.testing.assert_array_equal(a, b)
  full = merge.weight_signature(c, r)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(merge.task_vector(c, r))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_matches_torch_per_tensor_and_error_bound(bits):
  d = merge.task_vector(_tree(0), _tree(1))
  q = jax.jit(lambda t: merge.quantize_delta(t, bits))(d)
  rec = merge.dequantize_delta(q, like=d)
  qmax = 2 ** (bits - 1) - 1
  for x, c, s, y in zip(jax.tree.leaves(d), jax.tree.leaves(q.codes), jax.tree.leaves(q.scales), jax.tree.leaves(rec)):
    assert c.dtype == jnp.int8 and y.dtype == x.dtype
    assert int(jnp.abs(c).max()) == qmax
    assert float(jnp.abs(x - y).max()) <= float(s) / 2 + 1e-7
    tq = torch.quantize_per_tensor(torch.from_numpy(np.asarray(x)), float(s), 0, torch.qint8)
    np.testing.assert_array_equal(np.asarray(c), tq.int_repr().numpy())


def test_quantize_per_axis_and_zero_leaf():
  x = jnp.asarray([[1.0, 0.0, -4.0], [-2.0, 0.0, 2.0]])
  q = merge.quantize_delta({"k": x}, 8, axis=-1)
  np.testing.assert_allclose(q.scales["k"], [[2.0 / 127, 1.0, 4.0 / 127]], rtol=1e-6)  # zero slice: scale 1
  np.testing.assert_allclose(merge.dequantize_delta(q)["k"], x, atol=4.0 / 254)
  assert float(jnp.abs(merge.dequantize_delta(q)["k"][:, 1]).max()) == 0.0


def test_energy_share():
  d = {"a": jnp.full((3,), 2.0), "b": jnp.ones((1,))}
  e, s = jax.jit(lambda t: merge.delta_energy_share(t, include="^a"))(d)
  np.testing.assert_allclose([e, s], [12.0 / 13.0, 0.75], rtol=1e-6)
  e0, _ = merge.delta_energy_share(jax.tree.map(jnp.zeros_like, d), include="^a")
  assert float(e0) == 0.0


def test_validation_errors():
  d = _tree(0)
  with pytest.raises(ValueError, match="bits"):
    merge.quantize_delta(d, 1)
  with pytest.raises(TypeError, match="include"):
    merge.weight_signature(d, d, include=3)
  with pytest.raises(ValueError):
    merge.weight_signature(d, {"head": d["head"]})
