"""LAWN (Gupta et al., arXiv:2108.05839): free phase = base, then the masked layers' norms frozen at every step,
unmasked leaves updated exactly as by the base optimizer; jit, state, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import param


def _params(key=0):
  k = jax.random.split(jax.random.key(key), 3)
  return {"hidden": {"kernel": jax.random.normal(k[0], (6, 5)), "bias": jnp.zeros(5)},
          "head": {"kernel": jax.random.normal(k[1], (5, 3)), "bias": jnp.zeros(3)}}


def _run(tx, params, steps=8, jit=False):
  def step(p, s, i):
    g = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(jax.random.key(9), i), x.shape), p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  step = jax.jit(step) if jit else step
  s, p, trace = tx.init(params), params, []
  for i in range(steps):
    p, s = step(p, s, i)
    trace.append(p)
  return trace, s


@pytest.mark.parametrize("granularity", ["layer", "neuron"])
def test_masked_norms_stay_frozen_and_unmasked_leaves_follow_the_base(granularity):
  params = _params()
  tx = param.lawn(optax.adam(0.1), free_steps=3, mask=r"head/kernel$", granularity=granularity)
  trace, state = _run(tx, params, jit=granularity == "layer")  # once under jit, once op by op
  ref, _ = _run(optax.adam(0.1), params)
  axis = None if granularity == "layer" else 0
  frozen = np.linalg.norm(np.asarray(trace[2]["head"]["kernel"]), axis=axis)
  for p in trace[3:]:
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p["head"]["kernel"]), axis=axis), frozen, rtol=1e-5)
  np.testing.assert_allclose(state.norms["head"]["kernel"], frozen, rtol=1e-6)
  # the free phase is the base optimizer, and unmasked leaves are always updated exactly as by the base
  for a, b in zip(trace[:3], ref[:3]):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  for a, b in zip(trace, ref):
    np.testing.assert_allclose(a["hidden"]["kernel"], b["hidden"]["kernel"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a["head"]["bias"], b["head"]["bias"], rtol=1e-6, atol=1e-7)
  assert not np.allclose(trace[-1]["head"]["kernel"], ref[-1]["head"]["kernel"])


def test_mask_as_pytree_or_callable_is_the_same_as_the_regex():
  params = _params(1)
  tree = jax.tree.map(lambda _: False, params)
  tree["head"]["kernel"] = True
  a, _ = _run(param.lawn(optax.sgd(0.1), free_steps=0, mask=r"head/kernel$"), params, 2)
  b, _ = _run(param.lawn(optax.sgd(0.1), free_steps=0, mask=tree), params, 2)
  c, _ = _run(param.lawn(optax.sgd(0.1), free_steps=0, mask=lambda p: tree), params, 2)
  for x, y, z in zip(jax.tree.leaves(a[-1]), jax.tree.leaves(b[-1]), jax.tree.leaves(c[-1])):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)


def test_errors():
  with pytest.raises(ValueError, match="free_steps"):
    param.lawn(optax.sgd(0.1), free_steps=-1, mask="head")
  with pytest.raises(ValueError, match="granularity"):
    param.lawn(optax.sgd(0.1), free_steps=1, mask="head", granularity="unit")
  tx = param.lawn(optax.sgd(0.1), free_steps=1, mask="nothing")
  with pytest.raises(ValueError, match="selects no parameter"):
    tx.init(_params())
  tx = param.lawn(optax.sgd(0.1), free_steps=1, mask="head")
  with pytest.raises(ValueError, match="needs params"):
    tx.update(_params(), tx.init(_params()))
  with pytest.raises(ValueError, match="ndim >= 2"):
    param.lawn(optax.sgd(0.1), free_steps=1, mask="bias", granularity="neuron").init(_params())
