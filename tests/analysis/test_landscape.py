"""paperlab.analysis.landscape: filter normalization, the rescaling invariance it buys, grids, PCA, plots, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paperlab import analysis


def _relu_net(key=0, c=1.0):
  k = jax.random.split(jax.random.key(key), 4)
  return {"l1": {"kernel": c * jax.random.normal(k[0], (5, 7)), "bias": c * 0.1 * jax.random.normal(k[1], (7,))},
          "l2": {"kernel": jax.random.normal(k[2], (7, 3)) / c, "bias": 0.1 * jax.random.normal(k[3], (3,))}}


def _loss_fn():
  x = jax.random.normal(jax.random.key(9), (40, 5))
  y = jax.random.randint(jax.random.key(8), (40,), 0, 3)

  def loss(p):
    h = jax.nn.relu(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    logits = h @ p["l2"]["kernel"] + p["l2"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  return loss


def test_filter_normalized_filters_have_the_weights_norms_and_biases_are_ignored():
  params = _relu_net()
  d = jax.jit(lambda k, p: analysis.random_direction(k, p))(jax.random.key(1), params)
  for layer in ("l1", "l2"):
    np.testing.assert_allclose(jnp.linalg.norm(d[layer]["kernel"], axis=0),
                               jnp.linalg.norm(params[layer]["kernel"], axis=0), rtol=1e-6)
    assert not jnp.any(d[layer]["bias"])
  kept = analysis.random_direction(jax.random.key(1), params, ignore=None)
  np.testing.assert_array_equal(kept["l1"]["bias"], params["l1"]["bias"])  # the code's d.copy_(w)
  layer = analysis.random_direction(jax.random.key(1), params, norm="layer")
  np.testing.assert_allclose(jnp.linalg.norm(layer["l2"]["kernel"]), jnp.linalg.norm(params["l2"]["kernel"]),
                             rtol=1e-6)


def test_filter_normalized_curve_is_invariant_to_relu_rescaling():
  loss = _loss_fn()
  alphas = jnp.linspace(-1.0, 1.0, 11)
  base, scaled = _relu_net(c=1.0), _relu_net(c=10.0)  # same function: layer 1 x10, layer 2 x1/10
  np.testing.assert_allclose(loss(base), loss(scaled), rtol=1e-5)
  curves = {}
  for norm in ("filter", None):
    for name, p in (("base", base), ("scaled", scaled)):
      d = analysis.random_direction(jax.random.key(2), p, norm=norm)
      curves[norm, name] = analysis.landscape_1d(loss, p, d, alphas)
  assert float(jnp.max(jnp.abs(curves["filter", "base"] - curves["filter", "scaled"]))) < 1e-5
  assert float(jnp.max(jnp.abs(curves[None, "base"] - curves[None, "scaled"]))) > 0.1


def test_landscape_2d_grid_layout_and_centre():
  loss = _loss_fn()
  params = _relu_net()
  dirs = (analysis.random_direction(jax.random.key(3), params), analysis.random_direction(jax.random.key(4), params))
  alphas, betas = jnp.linspace(-1, 1, 5), jnp.linspace(-0.5, 0.5, 3)
  grid = jax.jit(lambda p: analysis.landscape_2d(loss, p, dirs, alphas, betas, batch_size=4))(params)
  assert grid.shape == (5, 3)
  np.testing.assert_allclose(grid[2, 1], loss(params), rtol=1e-6)
  moved = jax.tree.map(lambda w, a, b: w + alphas[0] * a + betas[2] * b, params, *dirs)
  np.testing.assert_allclose(grid[0, 2], loss(moved), rtol=1e-5)
  line = analysis.landscape_1d(loss, params, dirs[0], alphas, batch_size=None)
  np.testing.assert_allclose(grid[:, 1], line, rtol=1e-6)


def test_trajectory_pca_recovers_a_planar_path():
  params = _relu_net()
  d1 = analysis.random_direction(jax.random.key(5), params, norm=None, ignore=None)
  d2 = analysis.random_direction(jax.random.key(6), params, norm=None, ignore=None)
  ts = jnp.linspace(0, 1, 8)
  path = [jax.tree.map(lambda w, a, b: w + (1 - t) * a + (1 - t) ** 2 * b, params, d1, d2) for t in ts]
  dirs, ratio, coords = analysis.trajectory_pca(path, k=2)
  np.testing.assert_allclose(jnp.sum(ratio), 1.0, rtol=1e-5)  # the path spans two dimensions
  assert coords.shape == (8, 2)
  np.testing.assert_allclose(coords[-1], 0.0, atol=1e-5)  # the final point is the origin
  flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]
  np.testing.assert_allclose(jnp.linalg.norm(flat(dirs[0])), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.vdot(flat(dirs[0]), flat(dirs[1])), 0.0, atol=1e-5)


def test_plot_landscape_writes_png(tmp_path):
  analysis.plot_landscape(np.ones((3, 4)) + np.arange(4), np.linspace(-1, 1, 3), np.linspace(-1, 1, 4),
                          path=tmp_path / "l2.png")
  analysis.plot_landscape(np.arange(1.0, 4.0), np.linspace(-1, 1, 3), log=True, path=tmp_path / "l1.png")
  assert (tmp_path / "l2.png").stat().st_size > 0 and (tmp_path / "l1.png").stat().st_size > 0
  with pytest.raises(ValueError, match="len\\(alphas\\), len\\(betas\\)"):
    analysis.plot_landscape(np.ones((3, 4)), np.ones(4), np.ones(3))


def test_errors_name_the_argument():
  params = _relu_net()
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="norm"):
    analysis.random_direction(key, params, norm="model")
  with pytest.raises(ValueError, match="ignore"):
    analysis.random_direction(key, params, ignore="bn")
  with pytest.raises(TypeError, match="floating"):
    analysis.random_direction(key, {"w": jnp.ones((2, 2), jnp.int32)})
  with pytest.raises(ValueError, match="alphas"):
    analysis.landscape_1d(_loss_fn(), params, params, jnp.ones((2, 2)))
  with pytest.raises(ValueError, match="directions"):
    analysis.landscape_2d(_loss_fn(), params, (params,), jnp.ones(2), jnp.ones(2))
  with pytest.raises(ValueError, match="k must"):
    analysis.trajectory_pca([params, params], k=2)


def test_bfloat16_params_keep_their_dtype():
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), _relu_net())
  d = analysis.random_direction(jax.random.key(1), params)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(d))
  seen = []
  loss = lambda p: (seen.append({leaf.dtype for leaf in jax.tree.leaves(p)}), _loss_fn()(
      jax.tree.map(lambda a: a.astype(jnp.float32), p)))[1]
  curve = analysis.landscape_1d(loss, params, d, jnp.linspace(-1, 1, 3))
  assert seen[-1] == {jnp.dtype(jnp.bfloat16)} and bool(jnp.all(jnp.isfinite(curve)))
