"""Unit tests for paperlab.merge.averaging: means, interpolation, SLERP, EMA, SWA (+ BatchNorm pass), LAWA."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import paperlab.merge as pm


def _tree(seed, dtype=jnp.float32, step=None):
  """A small model; its integer ``step`` leaf is the same in every model unless ``step`` is given."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"dense": {"kernel": jax.random.normal(k1, (4, 3)).astype(dtype), "bias": jax.random.normal(k2, (3,)).astype(dtype)},
          "step": jnp.asarray(7 if step is None else step, jnp.int32)}


def test_weighted_average_matches_numpy_weighted_mean():
  models = [_tree(i) for i in range(3)]
  w = [1.0, 2.0, 5.0]
  out = pm.weighted_average(models, w)
  expected = np.average(np.stack([np.asarray(m["dense"]["kernel"]) for m in models]), axis=0, weights=w)
  np.testing.assert_allclose(out["dense"]["kernel"], expected, rtol=1e-6)
  assert out["step"] is models[0]["step"]  # an integer leaf equal in every model is kept as it is


def test_weighted_average_refuses_to_merge_differing_integer_leaves_unless_told_how():
  models = [_tree(i, step=i) for i in range(3)]
  with pytest.raises(ValueError, match="'step'.*differs"):
    pm.weighted_average(models)
  assert int(pm.weighted_average(models, integer_leaves="first")["step"]) == 0
  assert int(pm.weighted_average(models, integer_leaves="last")["step"]) == 2
  assert int(pm.weighted_average(models, integer_leaves=lambda path, xs: max(xs))["step"]) == 2
  with pytest.raises(ValueError, match="integer_leaves"):
    pm.weighted_average(models, integer_leaves="base")  # no base model here


def test_weighted_average_without_normalization_is_a_weighted_sum():
  models = [_tree(i) for i in range(2)]
  out = pm.weighted_average(models, [2.0, -1.0], normalize=False)
  np.testing.assert_allclose(out["dense"]["bias"], 2 * models[0]["dense"]["bias"] - models[1]["dense"]["bias"],
                             rtol=1e-6)


def test_average_keeps_bfloat16_and_accumulates_in_float32():
  models = [_tree(i, jnp.bfloat16) for i in range(4)]
  out = pm.uniform_average(models)
  assert out["dense"]["kernel"].dtype == jnp.bfloat16
  exact = np.mean([np.asarray(m["dense"]["kernel"], np.float32) for m in models], axis=0)
  np.testing.assert_allclose(np.asarray(out["dense"]["kernel"], np.float32), exact, rtol=1e-2, atol=1e-2)


def test_average_respects_path_filter():
  models = [_tree(0), _tree(1)]
  out = pm.uniform_average(models, include="kernel")
  np.testing.assert_array_equal(out["dense"]["bias"], models[0]["dense"]["bias"])
  assert not np.allclose(out["dense"]["kernel"], models[0]["dense"]["kernel"])


def test_average_errors_name_the_problem():
  with pytest.raises(ValueError, match="empty"):
    pm.uniform_average([])
  a, b = _tree(0), _tree(1)
  b["dense"]["bias"] = jnp.zeros((4,))
  with pytest.raises(ValueError, match="dense/bias"):
    pm.uniform_average([a, b])
  c = {"dense": {"kernel": a["dense"]["kernel"]}, "step": a["step"]}
  with pytest.raises(ValueError, match="dense/bias"):
    pm.uniform_average([a, c])
  with pytest.raises(ValueError, match="weights"):
    pm.weighted_average([a, a], [1.0])
  with pytest.raises(TypeError, match="models"):
    pm.uniform_average(a)


def test_interpolate_endpoints_and_traced_alpha():
  a, b = _tree(0), _tree(1)
  np.testing.assert_array_equal(pm.interpolate(a, b, 0.0)["dense"]["kernel"], a["dense"]["kernel"])
  np.testing.assert_allclose(pm.interpolate(a, b, 1.0)["dense"]["kernel"], b["dense"]["kernel"], rtol=1e-6)
  out = jax.jit(pm.interpolate)(a, b, jnp.float32(0.25))
  np.testing.assert_allclose(out["dense"]["bias"], 0.75 * a["dense"]["bias"] + 0.25 * b["dense"]["bias"], rtol=1e-6)


def test_negative_flip_rate_counts_old_right_new_wrong():
  y = jnp.array([0, 1, 2, 3])
  old = jnp.array([0, 1, 0, 0])
  new = jnp.array([0, 2, 2, 0])
  assert float(pm.negative_flip_rate(old, new, y)) == pytest.approx(0.25)
  assert float(pm.negative_flip_rate(old, old, y)) == 0.0


def test_slerp_stays_on_the_sphere_between_orthonormal_vectors():
  a = {"w": jnp.array([1.0, 0.0, 0.0])}
  b = {"w": jnp.array([0.0, 1.0, 0.0])}
  for t in (0.0, 0.3, 0.5, 1.0):
    out = pm.slerp(a, b, t)["w"]
    assert float(jnp.linalg.norm(out)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(out[:2], [np.cos(t * np.pi / 2), np.sin(t * np.pi / 2)], atol=1e-6)


def test_slerp_per_axis_equals_slerp_of_each_slice():
  a, b = _tree(0), _tree(1)
  out = pm.slerp(a, b, 0.4, axis=-1)["dense"]["kernel"]
  for j in range(3):
    col = pm.slerp({"w": a["dense"]["kernel"][:, j]}, {"w": b["dense"]["kernel"][:, j]}, 0.4)["w"]
    np.testing.assert_allclose(out[:, j], col, rtol=1e-5, atol=1e-6)


def test_ema_matches_closed_form():
  p0, p1, p2 = _tree(0), _tree(1), _tree(2)
  s = pm.ema_init(p0)
  s = jax.jit(pm.ema_update)(s, p1, 0.9)
  s = pm.ema_update(s, p2, 0.9)
  expected = 0.81 * p0["dense"]["bias"] + 0.09 * p1["dense"]["bias"] + 0.1 * p2["dense"]["bias"]
  np.testing.assert_allclose(s.ema["dense"]["bias"], expected, rtol=1e-5)
  assert int(s.count) == 2
  with pytest.raises(ValueError, match="decay"):
    pm.ema_update(s, p2, 1.5)


def test_swa_running_mean_equals_mean_of_snapshots():
  snaps = [_tree(i) for i in range(5)]
  s = pm.swa_init(snaps[0])
  update = jax.jit(pm.swa_update)
  for p in snaps:
    s = update(s, p)
  np.testing.assert_allclose(s.mean["dense"]["kernel"], np.mean([p["dense"]["kernel"] for p in snaps], 0),
                             rtol=1e-6, atol=1e-6)
  assert int(s.n) == 5


def test_swa_schedule_switches_to_constant_or_cyclic_rate():
  sched = pm.swa_schedule(0.1, start_step=10, swa_lr=0.05)
  assert float(sched(3)) == pytest.approx(0.1)
  assert float(sched(12)) == pytest.approx(0.05)
  cyc = pm.swa_schedule(lambda s: 0.1 * jnp.ones(()), start_step=10, swa_lr=0.05, cycle=5, min_lr=0.01)
  vals = [float(cyc(s)) for s in range(10, 20)]
  assert vals[4] == pytest.approx(0.01) and vals[9] == pytest.approx(0.01)  # cycle ends at the low rate
  assert vals[0] > vals[1] > vals[2] > vals[3] > vals[4]
  assert vals[5] > vals[4]


def _bn_model(norm):
  from paperlab.models import MLP
  from paperlab.train import make_init
  import optax

  graphdef, init = make_init(lambda rngs: MLP(5, [6], 3, norm=norm, rngs=rngs), optax.sgd(0.1))
  return graphdef, init(jax.random.key(0))


def test_bn_update_sets_running_stats_to_the_mean_of_batch_statistics():
  graphdef, state = _bn_model("batch")
  xs = [jax.random.normal(jax.random.key(i), (16, 5)) * (i + 1) for i in range(3)]
  new_state = pm.bn_update(graphdef, state.params, state.model_state, xs)
  kernel, bias = state.params["hidden"][0]["kernel"], state.params["hidden"][0]["bias"]
  pre = [x @ kernel + bias for x in xs]
  np.testing.assert_allclose(new_state["norms"][0]["mean"], np.mean([h.mean(0) for h in pre], 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_state["norms"][0]["var"], np.mean([h.var(0) for h in pre], 0), rtol=1e-4, atol=1e-6)


def test_bn_update_is_a_no_op_without_batchnorm():
  graphdef, state = _bn_model(None)
  out = pm.bn_update(graphdef, state.params, state.model_state, [jnp.ones((4, 5))])
  assert jax.tree.structure(out) == jax.tree.structure(state.model_state)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(state.model_state)):
    np.testing.assert_array_equal(a, b)


def test_lawa_averages_the_latest_k_checkpoints_across_wraparound():
  snaps = [_tree(i, step=i) for i in range(7)]
  s = pm.lawa_init(snaps[0], 3)
  update = jax.jit(pm.lawa_update)
  params = jax.jit(functools.partial(pm.lawa_params, integer_leaves="last"))
  for i, p in enumerate(snaps):
    s = update(s, p)
    got = params(s)
    want = pm.latest_average(snaps[: i + 1], 3, integer_leaves="last")
    np.testing.assert_allclose(got["dense"]["kernel"], want["dense"]["kernel"], rtol=1e-6, atol=1e-6)
  assert int(got["step"]) == 6 == int(want["step"])  # integer leaves: the latest checkpoint's, as asked
  with pytest.raises(ValueError, match="'step'.*differs"):
    pm.lawa_params(s)  # the checkpoints' step counters differ: never averaged silently
  with pytest.raises((ValueError, RuntimeError), match="'step'.*differs"):
    jax.jit(pm.lawa_params)(s)  # under jit the check runs at run time
  same = pm.lawa_init(_tree(0), 3)
  for i in range(4):
    same = pm.lawa_update(same, _tree(i))
  assert int(jax.jit(pm.lawa_params)(same)["step"]) == 7


def test_lawa_with_k_one_returns_the_latest_checkpoint():
  s = pm.lawa_init(_tree(0), 1)
  for i in range(3):
    s = pm.lawa_update(s, _tree(i))
  np.testing.assert_array_equal(pm.lawa_params(s)["dense"]["bias"], _tree(2)["dense"]["bias"])
  with pytest.raises(ValueError, match="k"):
    pm.lawa_init(_tree(0), 0)


def test_average_works_on_nnx_state():
  from paperlab.models import MLP

  states = [nnx.split(MLP(4, [3], 2, rngs=nnx.Rngs(i)), nnx.Param)[1] for i in range(2)]
  out = pm.uniform_average(states)
  assert isinstance(out, nnx.State)
  np.testing.assert_allclose(out["head"]["kernel"].value,
                             (states[0]["head"]["kernel"].value + states[1]["head"]["kernel"].value) / 2, rtol=1e-6)


def test_weighted_average_is_differentiable_in_traced_mixing_weights():
  """Learned soups fit softmax mixing weights by gradient: the average must be jittable and differentiable."""
  models = [{"w": jnp.full((3,), float(i))} for i in range(3)]
  loss = jax.jit(jax.grad(lambda z: jnp.sum(pm.weighted_average(models, jax.nn.softmax(z))["w"])))
  g = loss(jnp.zeros(3))
  # d/dz_i of sum_j softmax(z)_j * 3j at z=0: 3 * p_i (i - mean) = (i - 1)
  np.testing.assert_allclose(g, [-1.0, 0.0, 1.0], atol=1e-6)
