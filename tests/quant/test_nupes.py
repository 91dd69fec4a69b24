"""PowerQuant / NUPES (paperlab.quant.nupes): the search, the learned layer, the model walk, jit and errors (the
closed forms -- a = 1 is RTN, phi^-1 o phi = id, multiplicativity -- are in tests/parity)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import models, quant


def _kernel(seed=0, shape=(128, 8)):  # the parity tests' shape: shared compiles
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=shape).astype(np.float32) * 0.1)


def test_searched_exponent_error_is_at_most_uniform_and_below_it_on_gaussian_weights():
  w = _kernel()
  a = quant.search_power_exponent(w, bits=3)
  err = lambda e: float(jnp.sum(jnp.square(quant.power_quant(w, e, bits=3).w_hat - w)))
  grid = np.linspace(0.25, 1.0, 16)
  errors = [err(float(e)) for e in grid]
  assert float(a) == pytest.approx(grid[int(np.argmin(errors))])
  assert err(a) < err(1.0)  # bell-shaped weights: a < 1 wins
  assert float(a) < 1.0
  # a grid of one point returns it; codes stay within the symmetric range
  assert float(quant.search_power_exponent(w, bits=3, grid=jnp.asarray([0.5]))) == 0.5
  q = quant.power_quant(w, a, bits=3)
  assert q.codes.dtype == jnp.int8 and int(jnp.max(jnp.abs(q.codes))) == 3 and q.scale.shape == (1, 8)


def test_nupes_layer_never_reconstructs_worse_than_its_data_free_start():
  w = _kernel(1)
  x = jnp.asarray(np.random.default_rng(2).standard_t(3, size=(64, 128)).astype(np.float32))
  a = quant.search_power_exponent(w, bits=3)
  start = quant.power_quant(w, a, bits=3).w_hat
  q, losses = quant.nupes_layer(w, x, bits=3, a_init=a, steps=60, return_losses=True)
  rel = lambda w_hat: float(jnp.mean(jnp.square(x @ w - x @ w_hat)) / jnp.mean(jnp.square(x @ w)))
  assert losses.shape == (60,) and float(losses[0]) == pytest.approx(rel(start), rel=1e-5)
  assert rel(q.w_hat) <= rel(start) + 1e-7 and rel(q.w_hat) < rel(start)
  assert float(q.a) != float(a)  # the exponent is learned
  # the result is on its own grid: w_hat = phi_a^-1(s q)
  assert q.w_hat.shape == w.shape and int(jnp.max(jnp.abs(q.codes))) <= 3
  assert float(jnp.max(jnp.abs(jnp.abs(q.w_hat) - (jnp.abs(q.codes) * q.scale) ** (1 / q.a)))) < 1e-5


def test_nupes_model_quantizes_every_dense_layer_and_data_free_is_the_search():
  model = models.MLP(16, [32], 4, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (64, 16))
  qm, res = quant.nupes_model(model, [x], bits=3, data_free=True)
  assert set(res) == {"hidden/0", "head"}
  k = model.hidden[0].kernel[...]
  a = quant.search_power_exponent(k, bits=3)
  np.testing.assert_array_equal(np.asarray(qm.hidden[0].kernel[...]),
                                np.asarray(quant.power_quant(k, a, bits=3).w_hat))


def test_power_quant_jits_and_vmaps_over_exponents():
  w = _kernel(3)
  f = jax.jit(lambda a: quant.power_quant(w, a, bits=3, group_size=32).w_hat)
  np.testing.assert_array_equal(np.asarray(f(0.5)), np.asarray(quant.power_quant(w, 0.5, bits=3, group_size=32).w_hat))
  batch = jax.vmap(f)(jnp.asarray([0.5, 1.0]))
  assert batch.shape == (2, 128, 8)
  np.testing.assert_allclose(np.asarray(batch[1]), np.asarray(f(1.0)), rtol=1e-6, atol=1e-7)


def test_errors_name_the_argument():
  w = _kernel()
  with pytest.raises(ValueError, match="bits"):
    quant.power_quant(w, 0.5, bits=1)
  with pytest.raises(ValueError, match="a must lie"):
    quant.power_quant(w, 0.0)
  with pytest.raises(ValueError, match="group_size"):
    quant.power_quant(w, 0.5, group_size=48)
  with pytest.raises(ValueError, match="grid"):
    quant.search_power_exponent(w, grid=jnp.asarray([0.5, -1.0]))
  with pytest.raises(ValueError, match="x must have shape"):
    quant.nupes_layer(w, jnp.ones((8, 32)))
  with pytest.raises(ValueError, match="steps"):
    quant.nupes_layer(w, jnp.ones((8, 128)), steps=0)
  with pytest.raises(ValueError, match="finite"):
    quant.power_quant(w.at[0, 0].set(jnp.nan), 0.5)
