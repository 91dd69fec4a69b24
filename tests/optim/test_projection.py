"""AdamP / SGDP projection: unit behaviour (orthogonality, view selection, decay ratio, errors, jit)."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from paperlab import optim


def _scale_invariant_case(key, shape=(3, 3, 4, 8)):
  """A kernel and a gradient orthogonal to it per output channel (as for a kernel followed by a norm layer)."""
  kw, kg, ku = jax.random.split(key, 3)
  w = jax.random.normal(kw, shape)
  g = jax.random.normal(kg, shape)
  w2, g2 = w.reshape(-1, shape[-1]), g.reshape(-1, shape[-1])
  g2 = g2 - w2 * jnp.sum(w2 * g2, 0) / jnp.sum(w2 * w2, 0)
  return w, g2.reshape(shape), jax.random.normal(ku, shape)


def test_projected_update_is_orthogonal_to_each_output_channel():
  w, g, u = _scale_invariant_case(jax.random.key(0))
  p, projected = optim.projection_direction(u, g, w)
  assert bool(projected)
  inner = jnp.sum((w * p).reshape(-1, w.shape[-1]), 0)
  assert float(jnp.max(jnp.abs(inner))) < 1e-4 * float(jnp.linalg.norm(u))
  # Only the radial part is removed: the tangent part of u is untouched.
  w2, u2 = w.reshape(-1, 8), u.reshape(-1, 8)
  tangent = u2 - w2 * jnp.sum(w2 * u2, 0) / jnp.sum(w2 * w2, 0)
  chex.assert_trees_all_close(p.reshape(-1, 8), tangent, atol=1e-5)


def test_channel_view_is_the_last_axis_for_flax_kernels():
  """Orthogonality per LAST-axis slice is what triggers the channel view; per first-axis slice it is not."""
  w, g, u = _scale_invariant_case(jax.random.key(1), (6, 5))
  _, projected = optim.projection_direction(u, g, w)
  assert bool(projected)
  # Orthogonal per FIRST-axis slice of a (6, 5) kernel: the channel (last-axis) test fails, so the layer view
  # projects (the whole-tensor inner product vanishes, the per-channel ones do not).
  wt, gt, ut = _scale_invariant_case(jax.random.key(1), (5, 6))
  p, projected_t = optim.projection_direction(ut.T, gt.T, wt.T)
  assert bool(projected_t)
  assert abs(float(jnp.sum(wt.T * p))) < 1e-4
  assert float(jnp.max(jnp.abs(jnp.sum(wt.T * p, 0)))) > 0.1


def test_layer_view_used_when_only_whole_tensor_is_orthogonal():
  key = jax.random.key(2)
  w = jax.random.normal(key, (16, 4))
  g = jax.random.normal(jax.random.key(3), (16, 4))
  g = g - w * jnp.sum(w * g) / jnp.sum(w * w)  # orthogonal as a whole, not per channel
  u = jax.random.normal(jax.random.key(4), (16, 4))
  cos_c = jnp.abs(jnp.sum(w * g, 0)) / (jnp.linalg.norm(w, axis=0) * jnp.linalg.norm(g, axis=0))
  assert float(jnp.max(cos_c)) >= 0.1 / math.sqrt(16)  # channel test fails here
  p, projected = optim.projection_direction(u, g, w)
  assert bool(projected)
  assert abs(float(jnp.sum(w * p))) < 1e-4


def test_vectors_and_correlated_kernels_are_not_projected():
  w = jax.random.normal(jax.random.key(5), (8, 4))
  b = jnp.ones((4,))
  p, projected = optim.projection_direction({"k": w, "b": b}, {"k": w, "b": b}, {"k": w, "b": b})
  assert not bool(projected["k"]) and not bool(projected["b"])
  chex.assert_trees_all_equal(p, {"k": w, "b": b})


def test_wd_ratio_scales_decay_only_on_projected_leaves():
  w, g, _ = _scale_invariant_case(jax.random.key(6), (5, 3))
  params = {"proj": w, "bias": jnp.ones((3,))}
  grads = {"proj": g, "bias": jnp.zeros((3,))}
  tx = optim.scale_by_projection(optax.scale(0.0), wd_ratio=0.1, weight_decay=0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_close(updates["proj"], 0.5 * 0.1 * w, rtol=1e-6)
  chex.assert_trees_all_close(updates["bias"], 0.5 * jnp.ones((3,)), rtol=1e-6)


def test_decay_mask():
  params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  tx = optim.adamp(1.0, weight_decay=0.1, mask={"a": False, "b": True})
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.max(jnp.abs(updates["a"]))) == 0.0
  assert float(updates["b"][0]) == pytest.approx(-0.1)


def test_wraps_any_base_transformation():
  """scale_by_projection(base) is base's update projected: with a zero gradient component it adds nothing."""
  w, g, _ = _scale_invariant_case(jax.random.key(7), (4, 4, 2, 6))
  for base in (optax.scale_by_rms(), optax.scale_by_lion(), optax.trace(0.9)):
    tx = optim.scale_by_projection(base)
    updates, _ = jax.jit(tx.update)(g, tx.init(w), w)
    inner = jnp.sum((w * updates).reshape(-1, 6), 0)
    assert float(jnp.max(jnp.abs(inner))) < 1e-4 * (1 + float(jnp.linalg.norm(updates)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sgdp_nesterov_is_the_projection_of_the_nesterov_trace(dtype):
  """sgdp(nesterov=True) never materializes the Nesterov step, yet equals scale_by_projection(optax.trace(...,
  nesterov=True)) with the same decay: same state pytree, same updates, step after step."""
  w, _, _ = _scale_invariant_case(jax.random.key(10), (3, 3, 4, 8))
  params = {"conv": w.astype(dtype), "dense": (w.reshape(36, 8) * 2.0).astype(dtype), "bias": jnp.ones(8, dtype)}
  fast = optim.sgdp(0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, mask={"conv": True, "dense": True,
                                                                               "bias": False})
  generic = optax.chain(
      optim.scale_by_projection(optax.trace(0.9, nesterov=True), weight_decay=1e-2 / (1 - 0.9),
                                mask={"conv": True, "dense": True, "bias": False}),
      optax.scale_by_learning_rate(0.1))
  s_fast, s_gen = fast.init(params), generic.init(params)
  assert jax.tree.structure(s_fast) == jax.tree.structure(s_gen)
  for step in range(4):
    # Step 0 gives the conv kernel a radial gradient (in the momentum buffer from then on); later conv gradients
    # are orthogonal to the current kernel per channel, so it is projected while its Nesterov step still has a
    # radial part. The dense kernel's gradient is never orthogonal.
    w2 = params["conv"].astype(jnp.float32).reshape(-1, 8)
    g2 = jnp.cos(3.0 * w2 + step)
    if step:
      g2 = g2 - w2 * jnp.sum(w2 * g2, 0) / jnp.sum(w2 * w2, 0)
    grads = {"conv": g2.reshape(w.shape).astype(dtype), "dense": jnp.cos(params["dense"] + step).astype(dtype),
             "bias": jnp.full(8, 0.1 * step, dtype)}
    u_fast, s_fast = jax.jit(fast.update)(grads, s_fast, params)
    u_gen, s_gen = jax.jit(generic.update)(grads, s_gen, params)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    chex.assert_trees_all_close(u_fast, u_gen, rtol=tol, atol=tol)
    chex.assert_trees_all_equal_dtypes(u_fast, u_gen)
    chex.assert_trees_all_close(s_fast, s_gen, rtol=tol, atol=tol)
    params = optax.apply_updates(params, u_fast)


class TestJit(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_adamp_step_same_with_and_without_jit(self):
    w, g, _ = _scale_invariant_case(jax.random.key(8), (3, 3, 2, 4))
    params, grads = {"k": w, "b": jnp.ones(4)}, {"k": g, "b": jnp.ones(4)}
    tx = optim.adamp(1e-3, weight_decay=1e-2, nesterov=True)
    updates, _ = self.variant(tx.update)(grads, tx.init(params), params)
    ref, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(updates, ref, rtol=1e-6)


def test_bfloat16_params_keep_dtype():
  w, g, u = _scale_invariant_case(jax.random.key(9), (3, 3, 4, 8))
  p, projected = optim.projection_direction(u.astype(jnp.bfloat16), g.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert p.dtype == jnp.bfloat16 and bool(projected)


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=-1e-3), "learning_rate"), (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"),
    (dict(wd_ratio=1.5), "wd_ratio"), (dict(b1=1.0), "b1"), (dict(b2=-0.1), "b2"), (dict(weight_decay=-1), "weight_decay"),
])
def test_adamp_rejects_invalid_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.adamp(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(learning_rate=-0.1), "learning_rate"), (dict(learning_rate=0.1, momentum=1.0), "momentum"),
    (dict(learning_rate=0.1, nesterov=True), "nesterov"), (dict(learning_rate=0.1, delta=2.0), "delta"),
])
def test_sgdp_rejects_invalid_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optim.sgdp(**kwargs)


def test_scale_by_projection_type_and_params_errors():
  with pytest.raises(TypeError, match="inner"):
    optim.scale_by_projection(lambda g: g)
  tx = optim.scale_by_projection(optax.identity())
  with pytest.raises(ValueError, match="params"):
    tx.update({"a": jnp.ones(2)}, tx.init({"a": jnp.ones(2)}))


def _traced_vs_python(factory, kwargs, changed, steps=3):
  """Updates of ``inject_hyperparams(factory)`` under one jit, switching to ``changed`` after the first step,
  against the same optimizer built with Python floats (first ``kwargs``, then ``changed``)."""
  w, g, _ = _scale_invariant_case(jax.random.key(11), (3, 3, 4, 8))
  params = {"k": w, "b": jnp.linspace(-1.0, 1.0, 8), "d": w.reshape(-1, 8)[:6]}
  grads = {"k": g, "b": jnp.ones(8) * 0.1, "d": jnp.cos(w.reshape(-1, 8)[:6])}
  tx = optax.inject_hyperparams(factory)(**kwargs)
  step = jax.jit(tx.update)
  state, ref_state = tx.init(params), None
  ref_a, ref_b = factory(**kwargs), factory(**{**kwargs, **changed})
  ref_state = ref_a.init(params)
  for i in range(steps):
    if i == 1:
      state = state._replace(hyperparams={**state.hyperparams,
                                          **{k: jnp.asarray(v, jnp.float32) for k, v in changed.items()}})
    ref = ref_a if i == 0 else ref_b
    updates, state = step(grads, state, params)
    expected, ref_state = ref.update(grads, ref_state, params)
    chex.assert_trees_all_close(updates, expected, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_hyperparameters_are_traceable(nesterov):
  """issue 20: inject_hyperparams + jit failed on delta / weight_decay; every numeric one may now change mid-run."""
  _traced_vs_python(functools.partial(optim.adamp, nesterov=nesterov),
                    dict(learning_rate=1e-2, weight_decay=0.1, delta=0.1, wd_ratio=0.1, b1=0.9, b2=0.999),
                    dict(learning_rate=3e-2, weight_decay=0.5, delta=0.5, wd_ratio=0.3, b1=0.8, b2=0.99))


@pytest.mark.parametrize("nesterov,project_buffer", [(False, False), (False, True), (True, False)])
def test_sgdp_hyperparameters_are_traceable(nesterov, project_buffer):
  """issue 20: inject_hyperparams + jit failed on momentum / dampening / weight_decay."""
  damp = 0.0 if nesterov else 0.1
  _traced_vs_python(functools.partial(optim.sgdp, nesterov=nesterov, project_buffer=project_buffer),
                    dict(learning_rate=1e-2, momentum=0.9, dampening=damp, weight_decay=0.1, delta=0.1),
                    dict(learning_rate=3e-2, momentum=0.5, dampening=damp * 2, weight_decay=0.5, delta=0.5))


def test_fused_adamp_matches_the_generic_projection_wrapper():
  """adamp's two-pass update equals scale_by_projection(optax.scale_by_adam()) chained with the learning rate."""
  w, g, _ = _scale_invariant_case(jax.random.key(12), (3, 3, 4, 8))
  params = {"k": w, "b": jnp.linspace(-1.0, 1.0, 8), "d": w.reshape(-1, 8)[:6]}
  grads = {"k": g, "b": jnp.ones(8) * 0.1, "d": jnp.cos(w.reshape(-1, 8)[:6])}
  fused = optim.adamp(1e-2, weight_decay=0.1, mask={"k": True, "b": False, "d": True})
  generic = optax.chain(optim.scale_by_projection(optax.scale_by_adam(), weight_decay=0.1,
                                                  mask={"k": True, "b": False, "d": True}),
                        optax.scale_by_learning_rate(1e-2))
  sf, sg = fused.init(params), generic.init(params)
  for _ in range(4):
    uf, sf = jax.jit(fused.update)(grads, sf, params)
    ug, sg = generic.update(grads, sg, params)
    chex.assert_trees_all_close(uf, ug, rtol=2e-5, atol=1e-8)
    params = optax.apply_updates(params, uf)
