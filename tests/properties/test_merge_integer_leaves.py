"""One policy for integer and bool leaves (step counters, masks) across the whole public surface of paperlab.merge:
equal in every model -> kept bit-exactly; different -> ValueError naming the path (mergekit's behaviour: it merges
floating tensors only and refuses to interpolate integer ones), unless the caller passes ``integer_leaves=``.

Every public function of ``paperlab.merge`` is either called below (``MERGES`` / ``LOSSES``) or listed in
``NOT_MERGES`` with the reason it does not combine parameter trees; a new public function fails
``test_every_public_function_is_covered`` until it is placed in one of them.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paperlab.merge as pm

N = 3
STEP = np.int32(2 ** 30 + 7)  # not representable in float32: an average-and-cast would change it


def _model(seed: int, step=STEP, mask=(True, False, True)):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"dense": {"kernel": jax.random.normal(k1, (4, 3)), "bias": jax.random.normal(k2, (3,))},
          "meta": {"step": jnp.asarray(step, jnp.int32), "mask": jnp.asarray(mask, jnp.bool_)}}


def _pool(variant: str):
  """Base and 3 fine-tunes with equal integer leaves, or with ``finetuned[1]`` differing in one of them."""
  base = _model(0)
  fts = [_model(i + 1) for i in range(N)]
  if variant == "meta/step":
    fts[1]["meta"]["step"] = jnp.asarray(STEP + 1, jnp.int32)
  elif variant == "meta/mask":
    fts[1]["meta"]["mask"] = jnp.asarray([True, True, True])
  return base, fts


def _score(p) -> float:
  return -float(jnp.sum(p["dense"]["kernel"] ** 2))


def _loss(p, batch=None):
  return jnp.sum(p["dense"]["kernel"] ** 2) + jnp.sum(p["dense"]["bias"]) + 0.0 * jnp.sum(p["meta"]["step"])


def _grams(names=("dense/kernel",)):
  return [{n: jnp.eye(4) + 0.1 * i for n in names} for i in range(N)]


def _ones_like(tree):
  return jax.tree.map(lambda x: jnp.ones(jnp.shape(x), jnp.float32), tree)


KEY = jax.random.key(0)

# public function -> call on (base, finetuned) returning the merged parameter tree
MERGES = {
    "weighted_average": lambda b, f: pm.weighted_average(f, [1.0, 2.0, 3.0]),
    "uniform_average": lambda b, f: pm.uniform_average(f),
    "interpolate": lambda b, f: pm.interpolate(f[0], f[1], 0.3),
    "slerp": lambda b, f: pm.slerp(f[0], f[1], 0.3),
    "ema_update": lambda b, f: pm.ema_update(pm.ema_init(f[0]), f[1], 0.9).ema,
    "swa_update": lambda b, f: pm.swa_update(pm.swa_update(pm.swa_init(f[0]), f[0]), f[1]).mean,
    "lawa_params": lambda b, f: pm.lawa_params(pm.lawa_update(pm.lawa_update(pm.lawa_init(f[0], 3), f[0]), f[1])),
    "latest_average": lambda b, f: pm.latest_average(f, 3),
    "uniform_soup": lambda b, f: pm.uniform_soup(f),
    "greedy_soup": lambda b, f: pm.greedy_soup(f, _score)[0],
    "diwa": lambda b, f: pm.diwa(f),
    "model_stock": lambda b, f: pm.model_stock(b, f),
    "bcwi_select": lambda b, f: pm.bcwi_select(f[0], f[1], [0.0, 0.5], _score)[0],
    "task_vector": lambda b, f: pm.task_vector(b, f[1]),
    "apply_task_vector": lambda b, f: pm.apply_task_vector(b, f[1], 0.5),
    "task_arithmetic": lambda b, f: pm.task_arithmetic(b, f),
    "ties": lambda b, f: pm.ties(b, f, 0.5),
    "dare_merge": lambda b, f: pm.dare_merge(KEY, b, f, 0.5),
    "dare": lambda b, f: pm.dare(KEY, b, f[1], 0.5),
    "darex_q": lambda b, f: pm.darex_q(KEY, b, f[1], 0.5, [0.5, 1.0], _score)[0],
    "breadcrumbs": lambda b, f: pm.breadcrumbs(b, f, 0.3, 0.1),
    "pcb": lambda b, f: pm.pcb(b, f, 0.5),
    "extrapolate": lambda b, f: pm.extrapolate(b, f[1]),
    "bitdelta": lambda b, f: pm.bitdelta(b, f[1]),
    "iso_c": lambda b, f: pm.iso_c(b, f),
    "iso_cts": lambda b, f: pm.iso_cts(b, f),
    "mats": lambda b, f: pm.mats(b, f, _grams(), iters=3),
    "fisher_merge": lambda b, f: pm.fisher_merge(f, [_ones_like(m) for m in f]),
    "gradient_matching": lambda b, f: pm.gradient_matching(b, f, [_ones_like(m) for m in f]),
    "regmean_merge": lambda b, f: pm.regmean_merge(f, _grams()),
    "opcm_step": lambda b, f: pm.opcm_params(pm.opcm_step(pm.opcm_step(pm.opcm_init(b), f[0]), f[1])),
    "aggregate": lambda b, f: pm.aggregate(f, [1.0, 2.0, 1.0]),
    "learnable_aggregate": lambda b, f: pm.learnable_aggregate(f, 0.9, jnp.zeros(N)),
    "fit_learnable_aggregate": lambda b, f: pm.fit_learnable_aggregate(_loss, f, None, steps=2)[0],
    "task_arithmetic_recipe": lambda b, f: pm.task_arithmetic_recipe(b, f)(jnp.full((N,), 0.3)),
    "dam_apply": lambda b, f: pm.dam_apply(f, pm.dam_init(f)),
    "wemoe_init": lambda b, f: pm.wemoe_init(KEY, b, f, "dense").merged,
    "weight_signature": lambda b, f: pm.weight_signature(b, f[1], include="dense"),
}

# functions that merge internally and return a loss: equal integer leaves run, different ones raise
LOSSES = {
    "dam_loss": lambda b, f: pm.dam_loss(lambda p, x, i: x @ p["dense"]["kernel"], f, pm.dam_init(f),
                                         [jnp.ones((2, 4))] * N),
    "interpolation_curve": lambda b, f: pm.interpolation_curve(_loss, f[0], f[1], jnp.linspace(0, 1, 3))[1],
    "star_barriers": lambda b, f: pm.star_barriers(_loss, b, f, alphas=jnp.linspace(0, 1, 3)),
    "starlight_loss": lambda b, f: pm.starlight_loss(_loss, b, jax.tree.map(lambda *x: jnp.stack(x), *f), KEY, None),
    "riemann_delta_loss": lambda b, f: pm.riemann_delta_loss(_loss, b, f[0], f[1], 2),
}

NOT_MERGES = {
    "activation_matching": "finds permutations from activations; no parameters are combined",
    "add_proximal_gradient": "an optax transformation of gradients",
    "apply_permutation": "permutes one model's axes",
    "backbone_of": "selects a sub-tree of one model",
    "bn_update": "recomputes BatchNorm statistics of one model from data",
    "capture_layer_io": "records one model's layer inputs",
    "cnn_spec": "builds a permutation spec",
    "conv_patches": "im2col of an activation array",
    "dam_init": "creates DAM coefficients (its integer leaves' coefficients are unused by dam_apply)",
    "delta_energy_share": "reads one delta's floating leaves",
    "dequantize_delta": "decodes one quantized delta",
    "diag_fisher": "estimates one model's Fisher",
    "disjoint_merge": "operates on arrays of one leaf (TIES step 3)",
    "elect_sign": "operates on arrays of one leaf (TIES step 2)",
    "ema_init": "copies one model",
    "evolve_merge": "a CMA-ES loop over a user recipe (task_arithmetic_recipe is covered)",
    "finetune_grid": "trains models",
    "finetune_task_pool": "trains models",
    "flatten_spectrum": "a matrix function",
    "flatten_to_dict": "renames one tree's leaves",
    "format_scores": "formats a table",
    "gram_matrices": "computes one model's Grams",
    "invert_permutation": "inverts permutations",
    "lawa_init": "allocates a checkpoint buffer",
    "lawa_update": "stores a checkpoint (lawa_params merges and is covered)",
    "load_safetensors": "reads one tree",
    "loss_barrier": "arithmetic on a loss curve",
    "magnitude_threshold": "an order statistic of arrays",
    "mean_subspace_alignment": "a scalar diagnostic over floating 2-D leaves only",
    "mlp_spec": "builds a permutation spec",
    "model_apply": "builds an apply function",
    "negative_flip_rate": "compares predictions",
    "opcm_init": "wraps one model",
    "opcm_params": "reads the state (opcm_step merges and is covered)",
    "output_gradient_grams": "computes one model's Grams",
    "permutation_spec": "builds a permutation spec",
    "prediction_entropy": "a loss on logits",
    "project_out_merged": "a matrix function (OPCM's projection)",
    "prox_loss": "wraps a loss",
    "prox_term": "a penalty between one model and its anchor",
    "quantize_delta": "encodes one delta",
    "random_mask": "draws masks shaped like one tree",
    "random_permutation": "draws permutations",
    "repair": "recomputes normalisation statistics of a merged model from data",
    "router_apply": "applies a router",
    "router_init": "creates a router",
    "save_safetensors": "writes one tree",
    "scores_summary": "summarises a table",
    "subspace_alignment_ratio": "a matrix diagnostic",
    "swa_init": "allocates an empty average",
    "swa_schedule": "a learning-rate schedule",
    "transformer_spec": "builds a permutation spec",
    "trim_to_density": "sparsifies an array",
    "unflatten_from_dict": "rebuilds one tree",
    "weight_matching": "finds permutations; no parameters are combined",
    "wemoe_apply": "runs a WEMoE model",
    "wemoe_dense": "a layer function",
    "wemoe_static_params": "fixes routing weights of one WEMoE model (wemoe_init merges and is covered)",
    "wemoe_tta_step": "an optimizer step on routers",
    # checkpoint IO and the mergekit-style config (issue 14): they read, plan or write; the one function that
    # combines tensors, merge_tensor, has its own integer case below, and run_merge applies it per tensor
    "evaluate_setting": "evaluates a config parameter for one tensor name",
    "hf_to_tree": "renames one checkpoint's keys",
    "tree_to_hf": "renames one tree's keys",
    "load_merge_config": "reads a YAML file",
    "parse_merge_config": "validates a config mapping",
    "plan_merge": "resolves per-tensor jobs from a config",
    "parse_size": "parses a byte size",
    "peak_rss_bytes": "reads the process's peak memory",
    "read_checkpoint": "reads one checkpoint",
    "save_checkpoint": "writes one tree",
    "run_merge": "streams merge_tensor over the tensors of checkpoints on disk",
    "merge_tensor": "combines one tensor per model; its integer policy is test_merge_tensor_integer_policy",
}


def test_merge_tensor_integer_policy():
  """The streaming merge's per-tensor function follows the same policy: equal integer tensors kept, different ones
  an error naming the tensor."""
  steps = [np.array([3, 4], np.int64), np.array([3, 4], np.int64)]
  out = pm.merge_tensor("linear", steps, None, {"normalize": True}, [{"weight": 0.5}, {"weight": 0.5}], name="step")
  np.testing.assert_array_equal(np.asarray(out), steps[0])
  assert np.asarray(out).dtype == np.int64
  with pytest.raises(ValueError, match="'step'"):
    pm.merge_tensor("linear", [steps[0], steps[0] + 1], None, {"normalize": True},
                    [{"weight": 0.5}, {"weight": 0.5}], name="step")


def _public_functions() -> set[str]:
  return {n for n in pm.__all__ if callable(getattr(pm, n)) and not inspect.isclass(getattr(pm, n))}


def test_every_public_function_is_covered():
  covered = set(MERGES) | set(LOSSES) | set(NOT_MERGES)
  assert not (set(MERGES) | set(LOSSES)) & set(NOT_MERGES)
  missing = sorted(_public_functions() - covered)
  stale = sorted(covered - _public_functions())
  assert not missing, f"public functions of paperlab.merge with no integer-leaf case here: {missing}"
  assert not stale, f"names listed here that paperlab.merge no longer exports: {stale}"


def test_every_merge_takes_an_integer_leaves_rule():
  for name in sorted(set(MERGES) | set(LOSSES)):
    assert "integer_leaves" in inspect.signature(getattr(pm, name)).parameters, name


@pytest.mark.parametrize("name", sorted(MERGES))
def test_equal_integer_and_bool_leaves_are_kept_bit_exactly(name):
  base, fts = _pool("equal")
  out = MERGES[name](base, fts)
  assert out["meta"]["step"].dtype == jnp.int32 and int(out["meta"]["step"]) == int(STEP), name
  assert out["meta"]["mask"].dtype == jnp.bool_, name
  np.testing.assert_array_equal(out["meta"]["mask"], base["meta"]["mask"])
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out["dense"]))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_run_with_equal_integer_leaves(name):
  base, fts = _pool("equal")
  assert bool(jnp.all(jnp.isfinite(jnp.asarray(LOSSES[name](base, fts)))))


@pytest.mark.parametrize("path", ["meta/step", "meta/mask"])
@pytest.mark.parametrize("name", sorted(set(MERGES) | set(LOSSES)))
def test_differing_integer_or_bool_leaves_raise_naming_the_path(name, path):
  base, fts = _pool(path)
  call = MERGES.get(name) or LOSSES[name]
  with pytest.raises(ValueError, match=f"'{path}'.*differs"):
    call(base, fts)


def test_a_rule_chooses_instead_of_raising():
  base, fts = _pool("meta/step")
  out = pm.task_arithmetic(base, fts, integer_leaves="base")
  assert out["meta"]["step"] is base["meta"]["step"]
  pick = lambda path, xs: max(xs, key=int) if path == "meta/step" else xs[0]
  out = pm.task_arithmetic(base, fts, integer_leaves=pick)
  assert int(out["meta"]["step"]) == int(STEP) + 1
  out = pm.uniform_average(fts, integer_leaves="last")
  assert out["meta"]["step"] is fts[-1]["meta"]["step"]
  with pytest.raises(ValueError, match="integer_leaves"):
    pm.task_arithmetic(base, fts, integer_leaves="mean")


def test_under_jit_equal_leaves_are_kept_and_different_ones_stop_at_run_time():
  base, fts = _pool("equal")
  merge = jax.jit(lambda b, f: pm.task_arithmetic(b, f))
  assert int(merge(base, fts)["meta"]["step"]) == int(STEP)
  base, fts = _pool("meta/step")
  with pytest.raises((ValueError, RuntimeError), match="'meta/step'.*differs"):
    jax.block_until_ready(merge(base, fts))


def test_python_scalar_leaves_are_merged_not_crashed_on():
  models = [{"w": jnp.ones(2) * i, "lr": 0.1 * (i + 1), "step": 3, "flag": True} for i in range(3)]
  out = pm.uniform_average(models)
  np.testing.assert_allclose(out["lr"], 0.2, rtol=1e-6)
  assert int(out["step"]) == 3 and bool(out["flag"])
  with pytest.raises(ValueError, match="'step'"):
    pm.task_arithmetic(models[0], [dict(models[1], step=4)])
