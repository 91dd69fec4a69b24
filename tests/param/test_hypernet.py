"""paperlab.param.hypernet (MIP, Ortiz et al. 2023): the input encoding against a transcription of the authors'
``hyperlight``, its constant norm, the residual form's function preservation, jit/vmap, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from paperlab import param


def _hyperlight_encode_input(z: np.ndarray, mode):
  """Transcribed from hyperlight 0.0.5, ``hyperlight/hypernet/encoding.py`` ``encode_input`` (JJGO/hyperlight,
  commit 030c8fbeda36d1222e463bf84c2abab7967bf69b), torch -> NumPy:

      if mode is None: return input
      if mode == "cos|sin":
          scaled_z = torch.pi * z / 2
          return torch.cat([torch.cos(scaled_z), torch.sin(scaled_z)], dim=-1)
      if mode == "z|1-z": return torch.cat([z, 1 - z], dim=-1)
  """
  if mode is None:
    return z
  if mode == "cos|sin":
    scaled_z = np.pi * z / 2
    return np.concatenate([np.cos(scaled_z), np.sin(scaled_z)], axis=-1)
  if mode == "z|1-z":
    return np.concatenate([z, 1 - z], axis=-1)
  raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["cos|sin", "z|1-z", None])
def test_encoding_matches_hyperlight(mode):
  gamma = np.random.default_rng(0).uniform(0, 1, (5, 3)).astype(np.float32)
  ours = param.encode_hyperparams(jnp.asarray(gamma), mode)
  np.testing.assert_allclose(ours, _hyperlight_encode_input(gamma, mode), rtol=1e-6, atol=1e-7)
  assert ours.dtype == jnp.float32


@settings(max_examples=20, deadline=None)
@given(gamma=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 5)),
                        elements=st.floats(0, 1, width=32)))
def test_cos_sin_encoding_has_constant_norm(gamma):
  norms = np.linalg.norm(np.asarray(param.encode_hyperparams(jnp.asarray(gamma)), np.float64), axis=-1)
  np.testing.assert_allclose(norms, np.sqrt(gamma.shape[-1]), rtol=1e-6)


def _hyper_apply(omega, z):
  """A one-layer hypernetwork emitting a two-leaf primary weight set."""
  out = z @ omega["w"] + omega["b"]
  return {"kernel": out[..., :6].reshape(out.shape[:-1] + (2, 3)), "bias": out[..., 6:]}


def _omega(key, d_in, scale=1.0):
  return {"w": scale * jax.random.normal(key, (d_in, 9)), "b": scale * jax.random.normal(key, (9,))}


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), gamma=st.floats(0, 1, width=32))
def test_residual_form_preserves_theta0_when_h_outputs_zero(seed, gamma):
  theta0 = {"kernel": jax.random.normal(jax.random.key(seed), (2, 3)), "bias": jnp.arange(3.0)}
  apply = param.mip_hypernet(_hyper_apply)
  zero = _omega(jax.random.key(seed), 2, scale=0.0)
  theta = apply({"hyper": zero, "theta0": theta0}, jnp.array([gamma], jnp.float32))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), theta, theta0)
  shifted = apply({"hyper": _omega(jax.random.key(seed + 1), 2), "theta0": theta0}, jnp.array([gamma], jnp.float32))
  delta = _hyper_apply(_omega(jax.random.key(seed + 1), 2), param.encode_hyperparams(jnp.array([gamma])))
  jax.tree.map(lambda t, t0, d: np.testing.assert_allclose(t, t0 + d, rtol=1e-6), shifted, theta0, delta)


def test_default_hypernetwork_is_h_of_raw_gamma_and_is_proportional_at_zero():
  omega = _omega(jax.random.key(0), 1)
  omega["b"] = jnp.zeros(9)
  default = param.mip_hypernet(_hyper_apply, encoding=None, residual=False)
  theta = default({"hyper": omega}, jnp.array([0.0]))
  # the paper's motivation: without encoding and residual, gamma = 0 gives theta = 0 for a bias-free output layer
  assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(theta))
  np.testing.assert_allclose(default({"hyper": omega}, jnp.array([0.5]))["bias"], 0.5 * omega["w"][0, 6:], rtol=1e-6)


def test_mip_hypernet_jits_and_vmaps_over_gamma():
  apply = param.mip_hypernet(_hyper_apply)
  params = {"hyper": _omega(jax.random.key(0), 2), "theta0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
  gammas = jnp.linspace(0, 1, 4)[:, None]
  batched = jax.jit(jax.vmap(apply, in_axes=(None, 0)))(params, gammas)
  assert batched["kernel"].shape == (4, 2, 3) and batched["kernel"].dtype == jnp.float32
  np.testing.assert_allclose(batched["bias"][2], apply(params, gammas[2])["bias"], rtol=1e-6)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="encoding"):
    param.encode_hyperparams(jnp.ones((1,)), "cossin")
  with pytest.raises(ValueError, match="gamma"):
    param.encode_hyperparams(jnp.ones(()))
  with pytest.raises(ValueError, match="gamma"):
    param.encode_hyperparams(jnp.ones((2,), jnp.int32))
  with pytest.raises(ValueError, match="encoding"):
    param.mip_hypernet(_hyper_apply, encoding="sin")
  with pytest.raises(ValueError, match="residual"):
    param.mip_hypernet(_hyper_apply, residual=1)
  with pytest.raises(ValueError, match="hyper_apply"):
    param.mip_hypernet(None)
  apply = param.mip_hypernet(_hyper_apply)
  with pytest.raises(ValueError, match="theta0"):
    apply({"hyper": _omega(jax.random.key(0), 2)}, jnp.ones((1,)))
  with pytest.raises(ValueError, match="theta0"):
    apply({"hyper": _omega(jax.random.key(0), 2), "theta0": {"kernel": jnp.ones((2, 3))}}, jnp.ones((1,)))
