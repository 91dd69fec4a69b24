"""Calibration capture from Flax NNX models and the true-sequential layer walk."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab.quant import calibration, gptq, rtn


class Net(nnx.Module):
  """``b`` is called before ``a`` (forward order differs from the alphabetical tree order); ``a`` twice."""

  def __init__(self, rngs):
    self.a = nnx.Linear(8, 8, rngs=rngs)
    self.b = nnx.Linear(4, 8, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.b(x))
    return self.a(h) + self.a(2.0 * h)


def _setup():
  net = Net(nnx.Rngs(0))
  batches = [jax.random.normal(jax.random.key(i), (3, 5, 4)) for i in range(2)]
  return net, batches


def test_captured_inputs_are_what_each_layer_sees():
  net, batches = _setup()
  xs = calibration.capture_inputs(net, batches)
  x = jnp.concatenate([b.reshape(-1, 4) for b in batches])
  np.testing.assert_allclose(xs["b"], x, atol=1e-6)
  per_batch = [jax.nn.relu(net.b(b)).reshape(-1, 8) for b in batches]
  a_in = jnp.concatenate([jnp.concatenate([h, 2.0 * h]) for h in per_batch])  # both calls of `a`, per batch
  np.testing.assert_allclose(xs["a"], a_in, atol=1e-5)
  assert isinstance(net.a, nnx.Linear)  # the user's model is not modified


def test_hessians_are_gptq_hessians_of_the_inputs():
  net, batches = _setup()
  xs = calibration.capture_inputs(net, batches)
  hs = calibration.capture_hessians(net, batches, include="^a$")
  assert set(hs) == {"a"}
  np.testing.assert_allclose(hs["a"], gptq.hessian(xs["a"]), rtol=1e-5, atol=1e-5)


def test_layer_order_follows_the_forward_pass():
  net, batches = _setup()
  assert calibration.linear_paths(net) == ["a", "b"]
  assert calibration.layer_order(net, batches[0]) == ["b", "a"]


def test_true_sequential_measures_each_layer_on_the_quantized_earlier_layers():
  net, batches = _setup()
  seen = {}

  def solve(path, kernel, x):
    seen[path] = x
    w_hat = jnp.zeros_like(kernel) if path == "b" else kernel  # "quantize" b to zero
    return rtn.QuantizedWeight(w_hat, None, None, None, None)

  qnet, results = calibration.sequential(net, batches, solve, statistic="inputs")
  relu_bias = jnp.broadcast_to(jax.nn.relu(net.b.bias[...]), (30, 8))
  np.testing.assert_allclose(seen["a"], jnp.concatenate([relu_bias[:15], 2 * relu_bias[:15]] * 2), atol=1e-6)
  assert np.all(np.asarray(qnet.b.kernel[...]) == 0) and np.any(np.asarray(net.b.kernel[...]) != 0)
  _, _ = calibration.sequential(net, batches, solve, statistic="inputs", true_sequential=False)
  assert not np.allclose(seen["a"][:15], relu_bias[:15])  # from the full-precision model


def test_gptq_model_quantizes_every_layer_onto_its_grid():
  net, batches = _setup()
  qnet, results = gptq.gptq_model(net, batches, bits=4, act_order=True)
  assert set(results) == {"a", "b"}
  for path, layer in (("a", qnet.a), ("b", qnet.b)):
    q = results[path]
    np.testing.assert_array_equal(layer.kernel[...], q.w_hat)
    assert len(np.unique(np.asarray(q.w_hat[:, 0]))) <= 16


def test_errors():
  net, batches = _setup()
  with pytest.raises(ValueError, match="statistic must be one of"):
    calibration.capture(net, batches, statistic="mean")
  with pytest.raises(ValueError, match="no layer"):
    calibration.capture_inputs(net, batches, include="nothing")
  with pytest.raises(ValueError, match="at least one calibration batch"):
    calibration.capture_inputs(net, [])
  with pytest.raises(TypeError, match="flax.nnx.Module"):
    calibration.capture_inputs(lambda x: x, batches)
  with pytest.raises(ValueError, match="must be finite"):
    calibration.capture_inputs(net, [batches[0].at[0, 0, 0].set(jnp.nan)])
  with pytest.raises(ValueError, match="must have shape"):
    calibration.replace_kernels(net, {"a": jnp.zeros((3, 3))})
