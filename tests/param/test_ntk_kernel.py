"""NTK parametrization (Jacot et al., "Neural Tangent Kernel", arXiv:1806.07572): the empirical NTK of a 2-layer
ReLU net built with ``param.parametrize(kind="ntk")`` converges at init to the infinite-width kernel.

Oracle: the closed form of the limit -- Jacot et al.'s recursion (Sec. 4, Prop. 1 and Thm. 1) with the ReLU
expectations of Cho & Saul ("Kernel Methods for Deep Learning", NIPS 2009, the arc-cosine kernels of degree 1 and
0):

  Sigma1(x, x') = x.x' / n0 + beta^2,
  Sigma2 = sqrt(s11 s22) / (2 pi) (sin t + (pi - t) cos t) + beta^2,   Sigma2_dot = (pi - t) / (2 pi),
  t = arccos(s12 / sqrt(s11 s22)),   Theta = Sigma1 * Sigma2_dot + Sigma2.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from paperlab import param
from paperlab.models import MLP

N0, BETA = 4, 0.1  # input dim; Jacot et al.'s bias multiplier (paperlab's ntk_bias_mult default)


def _limit_ntk(x: np.ndarray) -> np.ndarray:
  s1 = x @ x.T / N0 + BETA ** 2
  d = np.sqrt(np.diag(s1))
  cos = np.clip(s1 / np.outer(d, d), -1.0, 1.0)
  t = np.arccos(cos)
  s2 = np.outer(d, d) / (2 * math.pi) * (np.sin(t) + (math.pi - t) * cos) + BETA ** 2
  s2_dot = (math.pi - t) / (2 * math.pi)
  return s1 * s2_dot + s2


def _empirical_ntks(width: int, x: jax.Array, seeds: int) -> np.ndarray:
  """``Theta(x, x') = sum_p df(x)/dp df(x')/dp`` over the stored parameters, at init, for ``seeds`` draws."""
  shapes = nnx.eval_shape(lambda: MLP(N0, [width], 1, rngs=nnx.Rngs(0)))
  graphdef = nnx.split(shapes, nnx.Param, ...)[0]
  p = param.parametrize(shapes, nnx.eval_shape(lambda: MLP(N0, [2], 1, rngs=nnx.Rngs(0))), kind="ntk")
  pure = nnx.to_pure_dict(nnx.state(shapes, nnx.Param))

  def f(params):
    return nnx.merge(graphdef, nnx.State(param.apply_multipliers(params, p)))(x)[:, 0]

  def ntk(key):
    params = param.init_params(key, pure, p)
    jac = jax.tree.leaves(jax.jacrev(f)(params))
    flat = jnp.concatenate([j.reshape(x.shape[0], -1) for j in jac], axis=1)
    return flat @ flat.T

  return np.asarray(jax.jit(jax.vmap(ntk))(jax.random.split(jax.random.key(0), seeds)), np.float64)


def test_ntk_rules_are_jacots():
  shapes = nnx.eval_shape(lambda: MLP(N0, [512], 1, rngs=nnx.Rngs(0)))
  rules = param.parametrize(shapes, nnx.eval_shape(lambda: MLP(N0, [2], 1, rngs=nnx.Rngs(0))), kind="ntk").rules
  assert rules["hidden/0/kernel"].multiplier == 1 / math.sqrt(N0) and rules["head/kernel"].multiplier == 1 / 512 ** .5
  assert all(r.init_std == 1.0 for r in rules.values())  # W, b ~ N(0, 1)
  assert rules["hidden/0/bias"].multiplier == BETA and rules["head/bias"].multiplier == BETA


def test_empirical_ntk_converges_to_the_infinite_width_kernel():
  x = jax.random.normal(jax.random.key(1), (6, N0))
  x = x / jnp.linalg.norm(x, axis=1, keepdims=True) * math.sqrt(N0)  # |x|^2 = n0, Jacot's sphere
  limit = _limit_ntk(np.asarray(x, np.float64))
  errors = {}
  for width in (64, 8192):
    kernels = _empirical_ntks(width, x, seeds=4)
    errors[width] = np.linalg.norm(kernels - limit, axis=(1, 2)).mean() / np.linalg.norm(limit)
    if width == 8192:  # the seed mean (the kernel's expectation) equals the limit at any width for a 2-layer net
      np.testing.assert_allclose(kernels.mean(0), limit, rtol=0.05, atol=0.01)
  assert errors[8192] < 0.05, errors  # the catalogue's 5% Frobenius relative error (there at width 4096)
  # fluctuations shrink like 1/sqrt(width): 128x the width gives ~11x less error (measured 21.6% -> 1.9%)
  assert errors[64] / errors[8192] > 4.0, errors
