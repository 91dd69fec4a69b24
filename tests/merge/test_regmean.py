"""RegMean and per-layer input capture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import merge
from paperlab.models import MLP
from paperlab.train import make_init


def test_gram_matrices_are_input_second_moments_of_each_dense_layer():
  graphdef, init = make_init(lambda r: MLP(6, [5], 3, rngs=r), optax.sgd(0.1))
  params = jax.jit(init)(jax.random.key(0)).params
  x = jax.random.normal(jax.random.key(1), (20, 6))
  grams = jax.jit(lambda p: merge.gram_matrices(graphdef, p, x))(params)
  assert set(grams) == {"hidden/0/kernel", "head/kernel"}
  np.testing.assert_allclose(grams["hidden/0/kernel"], x.T @ x / 20, rtol=1e-5)
  h = jax.nn.relu(x @ params["hidden"][0]["kernel"] + params["hidden"][0]["bias"])
  np.testing.assert_allclose(grams["head/kernel"], h.T @ h / 20, rtol=1e-4, atol=1e-6)


def test_capture_layer_io_records_inputs_and_outputs_in_call_order():
  graphdef, init = make_init(lambda r: MLP(6, [5, 4], 3, rngs=r), optax.sgd(0.1))
  params = jax.jit(init)(jax.random.key(0)).params
  x = jnp.ones((2, 6))
  out, io = merge.capture_layer_io(graphdef, params, x)
  assert list(io) == ["hidden/0", "hidden/1", "head"]
  np.testing.assert_allclose(io["head"][1], out)
  np.testing.assert_allclose(io["hidden/0"][0], x)


def test_regmean_with_identity_grams_is_the_average():
  models = [{"k": jax.random.normal(jax.random.key(i), (4, 3)), "b": jnp.full((3,), float(i))} for i in range(3)]
  grams = [{"k": jnp.eye(4)}] * 3
  merged = jax.jit(lambda ms: merge.regmean_merge(ms, grams))(models)
  np.testing.assert_allclose(merged["k"], np.mean([m["k"] for m in models], 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(merged["b"], np.ones(3))


def test_regmean_reproduces_a_model_that_fits_every_data_set():
  # if all models agree on the data, the least-squares merge has zero residual on every data set
  w = jax.random.normal(jax.random.key(0), (4, 2))
  xs = [jax.random.normal(jax.random.key(i + 1), (30, 4)) for i in range(2)]
  models = [{"k": w}, {"k": w}]
  grams = [{"k": x.T @ x / 30} for x in xs]
  np.testing.assert_allclose(merge.regmean_merge(models, grams, alpha=1.0)["k"], w, rtol=1e-4, atol=1e-5)


def test_regmean_errors():
  m = {"k": jnp.zeros((3, 2))}
  with pytest.raises(ValueError, match="alpha"):
    merge.regmean_merge([m, m], [{"k": jnp.eye(3)}] * 2, alpha=1.5)
  with pytest.raises(ValueError, match="one entry per model"):
    merge.regmean_merge([m, m], [{"k": jnp.eye(3)}])
  with pytest.raises(ValueError, match="not leaves"):
    merge.regmean_merge([m, m], [{"q": jnp.eye(3)}] * 2)
  with pytest.raises(ValueError, match="shape"):
    merge.regmean_merge([m, m], [{"k": jnp.eye(2)}] * 2)
  with pytest.raises(ValueError, match="empty"):
    merge.regmean_merge([], [])


def test_regmean_inputs_dead_on_all_data_fall_back_to_the_average():
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(30, 4)) for _ in range(2)]
  for x in xs:
    x[:, 2] = 0.0  # a dead ReLU unit feeding this layer
  ws = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
  grams = [{"k": jnp.asarray(x.T @ x / 30, jnp.float32)} for x in xs]
  merged = merge.regmean_merge([{"k": w} for w in ws], grams)
  assert np.all(np.isfinite(merged["k"]))
  np.testing.assert_allclose(merged["k"][2], (ws[0][2] + ws[1][2]) / 2, rtol=1e-5)
