"""LSUV, weight selection and weight normalization: properties, errors, and the oracles (PyTorch's weight_norm
parametrization; the official weight-selection code transcribed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import param
from paperlab.models import MLP

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def deep_mlp():
  return MLP(64, [32] * 6, 10, activation="relu", rngs=nnx.Rngs(0))


def test_lsuv_gives_unit_variance_at_every_layer(deep_mlp, digits_jnp):
  x = digits_jnp[0][:128]
  # start from a tiny init, the failure case of the paper
  small = jax.tree.map(lambda w: w * 1e-2, nnx.state(deep_mlp, nnx.Param))
  model = nnx.merge(nnx.graphdef(deep_mlp), small)
  params = param.lsuv(jax.random.key(0), model, x, tol=0.1, max_iter=10)
  outs = param.layer_outputs(nnx.merge(nnx.graphdef(deep_mlp), params), x)
  for name in [f"hidden/{i}" for i in range(6)] + ["head"]:
    assert abs(float(jnp.var(outs[name])) - 1.0) < 0.1, name
  # step (1): kernels are orthonormal up to the LSUV scale (columns orthogonal)
  w = np.asarray(params["hidden"][2]["kernel"])
  gram = w.T @ w
  np.testing.assert_allclose(gram / gram[0, 0], np.eye(32), atol=1e-4)
  with pytest.raises(ValueError, match="selects no kernel"):
    param.lsuv(jax.random.key(0), model, x, include="nothing")
  with pytest.raises(ValueError, match="tol"):
    param.lsuv(jax.random.key(0), model, x, tol=0.0)


# OscarXZQ/weight-selection, weight_selection.py, commit e9b6d0ca0cd288d551c6aa25645863804fc63633 (transcribed)
def _official_uniform_element_selection(wt, s_shape):
  ws = wt.clone()
  for dim in range(wt.dim()):
    assert wt.shape[dim] >= s_shape[dim]
    if wt.shape[dim] % s_shape[dim] == 0:
      step = wt.shape[dim] // s_shape[dim]
      indices = torch.arange(s_shape[dim]) * step
    else:
      indices = torch.round(torch.linspace(0, wt.shape[dim] - 1, s_shape[dim])).long()
    ws = torch.index_select(ws, dim, indices)
  return ws


@pytest.mark.parametrize("t_shape,s_shape", [((512, 512), (128, 128)), ((30, 17), (7, 5)),
                                             ((3, 3, 16, 10), (3, 3, 6, 10)), ((100,), (33,))])
def test_weight_selection_matches_the_official_code(t_shape, s_shape):
  w = np.random.default_rng(0).normal(size=t_shape).astype(np.float32)
  ours = param.weight_selection({"w": jnp.asarray(w)}, {"w": jax.ShapeDtypeStruct(s_shape, jnp.float32)})["w"]
  ref = _official_uniform_element_selection(torch.from_numpy(w), s_shape).numpy()
  np.testing.assert_array_equal(np.asarray(ours), ref)


def test_weight_selection_layers_consistency_and_errors():
  teacher = nnx.to_pure_dict(nnx.state(MLP(64, [512, 512, 512], 10, rngs=nnx.Rngs(0)), nnx.Param))
  shapes = param.param_shapes(nnx.eval_shape(lambda: MLP(64, [128, 128], 10, rngs=nnx.Rngs(1))))
  student = param.weight_selection(teacher, shapes)
  idx = param.uniform_indices(512, 128)
  # the same indices for every tensor sharing the hidden dimension: layer 0's outputs feed layer 1's inputs
  np.testing.assert_array_equal(student["hidden"][0]["kernel"], np.asarray(teacher["hidden"][0]["kernel"])[:, idx])
  np.testing.assert_array_equal(student["hidden"][0]["bias"], np.asarray(teacher["hidden"][0]["bias"])[idx])
  np.testing.assert_array_equal(student["hidden"][1]["kernel"],
                                np.asarray(teacher["hidden"][1]["kernel"])[np.ix_(idx, idx)])
  same = param.weight_selection(teacher, teacher)
  jax.tree.map(np.testing.assert_array_equal, same, teacher)  # equal shapes: unchanged
  with pytest.raises(ValueError, match="larger than the teacher"):
    param.weight_selection(student, teacher)
  with pytest.raises(ValueError, match="no teacher parameter"):
    param.weight_selection({"a": jnp.zeros(3)}, {"b": jnp.zeros(2)})
  with pytest.raises(ValueError, match="method"):
    param.weight_selection(teacher, shapes, method="magnitude")


def test_weight_norm_matches_torch_forward_and_gradients():
  rng = np.random.default_rng(0)
  v, g = rng.normal(size=(12, 7)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)
  x = rng.normal(size=(5, 12)).astype(np.float32)
  lin = torch.nn.Linear(12, 7, bias=False)
  lin = torch.nn.utils.parametrizations.weight_norm(lin, name="weight", dim=0)
  with torch.no_grad():  # PyTorch layout: weight (out, in); original0 = g (out, 1), original1 = v (out, in)
    lin.parametrizations.weight.original0.copy_(torch.from_numpy(g[:, None]))
    lin.parametrizations.weight.original1.copy_(torch.from_numpy(v.T))
  out = torch.sin(lin(torch.from_numpy(x))).sum()
  out.backward()
  loss = lambda v, g: jnp.sum(jnp.sin(jnp.asarray(x) @ param.weight_norm(v, g)))
  ours, (gv, gg) = jax.value_and_grad(loss, (0, 1))(jnp.asarray(v), jnp.asarray(g))
  np.testing.assert_allclose(float(ours), float(out.detach()), rtol=1e-5)
  np.testing.assert_allclose(gv, lin.parametrizations.weight.original1.grad.numpy().T, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gg, lin.parametrizations.weight.original0.grad.numpy()[:, 0], rtol=1e-4, atol=1e-6)
  # the v-gradient is orthogonal to v per unit (Salimans & Kingma Eq. 4)
  cos = jnp.sum(gv * v, 0) / (jnp.linalg.norm(gv, axis=0) * jnp.linalg.norm(v, axis=0))
  assert float(jnp.max(jnp.abs(cos))) < 1e-5


def test_weight_norm_round_trip_and_data_dependent_init(deep_mlp, digits_jnp):
  params = nnx.to_pure_dict(nnx.state(deep_mlp, nnx.Param))
  wn = param.to_weight_norm(params)
  back = param.from_weight_norm(wn)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), back, params)
  x = digits_jnp[0][:256]
  wn = param.weight_norm_init(jax.random.key(0), deep_mlp, x)
  outs = param.layer_outputs(nnx.merge(nnx.graphdef(deep_mlp), param.from_weight_norm(wn)), x)
  for name in [f"hidden/{i}" for i in range(6)] + ["head"]:
    y = outs[name]
    assert float(jnp.max(jnp.abs(jnp.mean(y, 0)))) < 1e-3, name
    assert 0.99 <= float(jnp.min(jnp.std(y, 0))) and float(jnp.max(jnp.std(y, 0))) <= 1.01, name
  with pytest.raises(ValueError, match="shape"):
    param.weight_norm(jnp.ones((3, 4)), jnp.ones(3))
