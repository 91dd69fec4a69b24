"""WEMoE: routed task vectors, router initialisation, test-time adaptation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import merge
from paperlab.models import MLP, CharTransformer
from paperlab.train import make_init


def _models(model_fn, n=3, seed=0):
  graphdef, init = make_init(model_fn, optax.sgd(0.1))
  base = jax.jit(init)(jax.random.key(seed)).params
  # fine-tunes = base + N(0, 0.2^2) noise drawn on the host: a per-leaf jax.random program costs seconds to compile
  noise = lambda b, rng: jax.tree.map(lambda v: v + jnp.asarray(0.2 * rng.standard_normal(v.shape), v.dtype), b)
  fts = [noise(base, np.random.default_rng(100 + i)) for i in range(n)]
  return graphdef, base, fts


def _task_arithmetic(base, fts, lam):
  return jax.tree.map(lambda b, *f: b + lam * sum(x - b for x in f), base, *fts)


def _mlp(r):
  return MLP(6, [5, 4], 3, rngs=r)


def test_router_frozen_at_lambda_gives_task_arithmetic():
  graphdef, base, fts = _models(_mlp)
  params = merge.wemoe_init(jax.random.key(1), base, fts, "hidden/1|head", lam=0.4, init_lambda=0.4,
                            router_hidden_layers=0)
  x = jax.random.normal(jax.random.key(2), (7, 6))
  ta = _task_arithmetic(base, fts, 0.4)
  out = jax.jit(lambda p: merge.wemoe_apply(graphdef, p, x))(params)
  np.testing.assert_allclose(out, jax.jit(merge.model_apply(graphdef))(ta, x), atol=1e-5)
  static = merge.wemoe_static_params(params, 0.4)
  for a, b in zip(jax.tree.leaves(static), jax.tree.leaves(ta)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_initial_routers_output_init_lambda_so_wemoe_starts_at_task_arithmetic():
  graphdef, base, fts = _models(_mlp)
  params = merge.wemoe_init(jax.random.key(1), base, fts, "hidden/.*", init_lambda=0.3)
  assert set(params.routers) == {"hidden/0", "hidden/1"}
  x = jax.random.normal(jax.random.key(2), (9, 6))
  out, weights = jax.jit(lambda p: merge.wemoe_apply(graphdef, p, x, return_weights=True))(params)
  for w in weights.values():
    assert w.shape == (9, 3)
    np.testing.assert_allclose(w, 0.3, atol=1e-3)
  ta = _task_arithmetic(base, fts, 0.3)
  np.testing.assert_allclose(out, jax.jit(merge.model_apply(graphdef))(ta, x), atol=1e-2)


def test_one_expert_with_weight_one_is_the_finetune():
  graphdef, base, fts = _models(_mlp, n=1)
  params = merge.wemoe_init(jax.random.key(1), base, fts, "hidden/0", lam=1.0, init_lambda=1.0,
                            router_hidden_layers=0)
  x = jax.random.normal(jax.random.key(2), (4, 6))
  apply = jax.jit(merge.model_apply(graphdef))
  np.testing.assert_allclose(jax.jit(lambda p: merge.wemoe_apply(graphdef, p, x))(params), apply(fts[0], x),
                             atol=1e-5)


def test_wemoe_dense_equals_the_materialized_per_sample_weights():
  ks = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(ks[0], (6, 4))
  base = {"kernel": jax.random.normal(ks[1], (4, 3)), "bias": jax.random.normal(ks[2], (3,))}
  experts = {"kernel": jax.random.normal(ks[3], (2, 4, 3)), "bias": jax.random.normal(ks[4], (2, 3))}
  w = jax.random.uniform(jax.random.key(9), (6, 2))
  got = jax.jit(merge.wemoe_dense)(x, base, experts, w)
  for n in range(6):
    kernel = base["kernel"] + jnp.tensordot(w[n], experts["kernel"], axes=1)
    bias = base["bias"] + w[n] @ experts["bias"]
    np.testing.assert_allclose(got[n], x[n] @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_example_routing_averages_the_token_weights_of_a_sequence():
  graphdef, base, fts = _models(lambda r: CharTransformer(11, 8, 1, 2, 6, rngs=r), n=2)
  params = merge.wemoe_init(jax.random.key(1), base, fts, r"blocks/\d+/fc1")
  assert set(params.experts) == {"blocks/0/fc1"}
  params = params._replace(routers=jax.tree.map(lambda v: v * 50.0, params.routers))  # make routing input-dependent
  x = jax.random.randint(jax.random.key(2), (3, 6), 0, 11)
  routed = jax.jit(lambda p, routing: merge.wemoe_apply(graphdef, p, x, routing=routing, return_weights=True)[1],
                   static_argnums=1)
  per_token, per_example = routed(params, "token"), routed(params, "example")
  assert per_token["blocks/0/fc1"].shape == (3, 6, 2)
  assert per_example["blocks/0/fc1"].shape == (3, 1, 2)
  # the first routed layer sees the same input under both routings
  np.testing.assert_allclose(per_example["blocks/0/fc1"][:, 0], per_token["blocks/0/fc1"].mean(1), rtol=1e-5)
  assert float(jnp.std(per_token["blocks/0/fc1"], axis=1).max()) > 1e-4


def test_tta_step_lowers_the_entropy_and_trains_only_the_routers():
  graphdef, base, fts = _models(lambda r: MLP(6, [16, 16], 4, rngs=r))
  params = merge.wemoe_init(jax.random.key(1), base, fts, "hidden/1")
  x = jax.random.normal(jax.random.key(2), (32, 6))
  opt = optax.adam(1e-2)
  step = jax.jit(merge.wemoe_tta_step(graphdef, opt))
  state = opt.init(params.routers)
  new, losses = params, []
  for _ in range(10):
    new, state, loss = step(new, state, x)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  for a, b in zip(jax.tree.leaves((params.merged, params.experts)), jax.tree.leaves((new.merged, new.experts))):
    np.testing.assert_array_equal(a, b)
  assert any(float(jnp.abs(a - b).max()) > 0 for a, b in zip(jax.tree.leaves(params.routers),
                                                              jax.tree.leaves(new.routers)))


def test_prediction_entropy():
  logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [50.0, 0.0, 0.0, 0.0]])
  ent = merge.prediction_entropy(logits)
  np.testing.assert_allclose(ent, [np.log(4.0), 0.0], atol=1e-6)
  np.testing.assert_allclose(merge.prediction_entropy(logits, where=jnp.array([False, True])), [0.0, 0.0], atol=1e-6)


def test_router_init_shapes():
  for depth, keys in ((0, {"out"}), (1, {"out"}), (2, {"hidden", "out"})):
    r = merge.router_init(jax.random.key(0), 7, 3, hidden_layers=depth, init_lambda=0.2)
    assert set(r) == keys
    assert merge.router_apply(r, jnp.ones((5, 7))).shape == (5, 3)
  assert merge.router_init(jax.random.key(0), 7, 3)["hidden"]["kernel"].shape == (7, 6)


def test_errors_name_the_problem():
  graphdef, base, fts = _models(_mlp)
  with pytest.raises(ValueError, match="empty"):
    merge.wemoe_init(jax.random.key(0), base, [], "hidden/0")
  with pytest.raises(ValueError, match="matches no linear layer"):
    merge.wemoe_init(jax.random.key(0), base, fts, "blocks/0")
  with pytest.raises(ValueError, match="lam"):
    merge.wemoe_init(jax.random.key(0), base, fts, "hidden/0", lam=float("nan"))
  with pytest.raises(ValueError, match="hidden_layers"):
    merge.wemoe_init(jax.random.key(0), base, fts, "hidden/0", router_hidden_layers=3)
  params = merge.wemoe_init(jax.random.key(0), base, fts, "hidden/0")
  with pytest.raises(ValueError, match="routing"):
    merge.wemoe_apply(graphdef, params, jnp.ones((2, 6)), routing="sample")
  with pytest.raises(ValueError, match="finetuned\\[1\\]"):
    merge.wemoe_init(jax.random.key(0), base, [fts[0], {"x": 1}], "hidden/0")
