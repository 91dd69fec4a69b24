"""Unit tests for paperlab.merge.mergekit_config (schema, parameter values and precedence, errors) and the random
methods of paperlab.merge.streaming (statistics). mergekit's own ``evaluate_setting`` and ``resolve_parameters``
are the oracles for values and precedence."""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

import paperlab.merge as pm
from paperlab.merge.mergekit_config import ConfigError, evaluate_setting, parse_merge_config, plan_merge
from paperlab.merge.streaming import merge_tensor

N_LAYERS = 3


def _model(path, seed: int, *, layers: int = N_LAYERS, drop: str | None = None, reshape: str | None = None,
           arch: str = "LlamaForCausalLM", dtype=ml_dtypes.bfloat16) -> str:
  rng = np.random.default_rng(seed)
  names = {"model.embed_tokens.weight": (8, 4), "model.norm.weight": (4,), "lm_head.weight": (8, 4)}
  for i in range(layers):
    names |= {f"model.layers.{i}.self_attn.q_proj.weight": (4, 4), f"model.layers.{i}.mlp.up_proj.weight": (6, 4),
              f"model.layers.{i}.input_layernorm.weight": (4,)}
  tensors = {k: rng.standard_normal((5, 4) if k == reshape else s).astype(dtype) for k, s in names.items()
             if k != drop}
  return pm.save_checkpoint(tensors, path, shard_size=200,
                            config={"architectures": [arch], "num_hidden_layers": layers, "torch_dtype": "bfloat16"})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("cfg")
  return {k: _model(root / k, i) for i, k in enumerate(["base", "a", "b", "c"])}


# ----------------------------------------------------------------------------------------------------------------
# values and precedence against mergekit


SETTINGS = [0.3, 2, [0.0, 1.0], [0.1, 0.9, 0.2], [1, 0.5, 0.7, 0.3, 0],
            [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"filter": "mlp", "value": 0.25}, {"value": 0.5}],
            {"filter": "mlp", "value": [0.2, 0.4]}, [{"filter": "norm", "value": 1.0}], [{"filter": "*", "value": 3}]]


@pytest.mark.parametrize("setting", SETTINGS, ids=[str(i) for i in range(len(SETTINGS))])
@pytest.mark.parametrize("name", ["model.layers.1.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight",
                                  "model.norm.weight"])
@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_evaluate_setting_matches_mergekit(setting, name, t):
  mk = pytest.importorskip("mergekit.config")
  if isinstance(setting, dict):
    theirs_setting = mk.ConditionalParameter(**setting)
  elif isinstance(setting, list) and setting and isinstance(setting[0], dict):
    theirs_setting = [mk.ConditionalParameter(**c) for c in setting]
  else:
    theirs_setting = setting
  theirs = mk.evaluate_setting(name, theirs_setting, t, validate=float)
  ours = evaluate_setting(name, setting, t, "float")
  assert ours == theirs


def test_parameter_precedence_matches_mergekit_resolver(models):
  """Model > slice > global for per-model parameters; shared ones (lambda, normalize) skip the model level."""
  mkc = pytest.importorskip("mergekit.config")
  from mergekit.common import ModelReference
  from mergekit.merge_methods import registry
  from mergekit.parameter_resolver import resolve_parameters

  data = {"merge_method": "ties", "base_model": models["base"], "parameters": {
      "weight": 0.3, "density": [0.2, 0.9], "lambda": [{"filter": "mlp", "value": 0.5}, {"value": 1.5}],
      "normalize": False},
      "slices": [{"sources": [
          {"model": models["base"], "layer_range": [0, 3]},
          {"model": models["a"], "layer_range": [0, 3], "parameters": {"weight": [1.0, 2.0], "lambda": 9.0}},
          {"model": models["b"], "layer_range": [0, 3]}],
          "parameters": {"density": [{"filter": "self_attn", "value": 0.7}], "weight": 0.6}}]}
  plan = plan_merge(parse_merge_config(data), {m: pm.CheckpointReader(m) for m in models.values()})
  config = mkc.MergeConfiguration.model_validate(data)
  spec = registry.get("ties").spec
  refs = {p: ModelReference.model_validate(p) for p in models.values()}
  checked = 0
  for job in plan.jobs:
    if ".layers." not in job.out_name:
      continue
    reader = mkc.ConfigReader(config=config, slice_out=config.slices[0], t=job.t)
    shared, per = resolve_parameters(spec, tensor_name=job.out_name, inputs={refs[m]: n for m, n in job.sources},
                                     sources=reader.parameter_sources, base_model=refs[models["base"]], t=job.t)
    assert set(job.shared) - set(shared) == {"tie_break"}  # paperlab's one extension
    assert {k: v for k, v in job.shared.items() if k != "tie_break"} == {k: shared[k] for k in shared}
    for (m, _), ours in zip(job.sources, job.per_input):
      assert ours == per[refs[m]], (job.out_name, m)
    checked += 1
  assert checked == 9


def test_gradients_run_over_layers_and_outside_layers_t_is_zero(models):
  data = {"merge_method": "linear", "models": [{"model": models["a"], "parameters": {"weight": [0.0, 1.0]}},
                                                 {"model": models["b"], "parameters": {"weight": 1.0}}]}
  plan = plan_merge(parse_merge_config(data), {m: pm.CheckpointReader(m) for m in (models["a"], models["b"])})
  w = {j.out_name: j.per_input[0]["weight"] for j in plan.jobs}
  assert [w[f"model.layers.{i}.mlp.up_proj.weight"] for i in range(3)] == [0.0, 0.5, 1.0]
  assert w["model.embed_tokens.weight"] == 0.0 and w["lm_head.weight"] == 0.0
  names = [j.out_name for j in plan.jobs]
  assert names[0] == "model.embed_tokens.weight" and set(names[-2:]) == {"model.norm.weight", "lm_head.weight"}


# ----------------------------------------------------------------------------------------------------------------
# errors: one line, naming the problem


def _cfg(paths, **kw):
  data = {"merge_method": "ties", "base_model": paths["base"],
          "models": [{"model": paths["a"], "parameters": {"weight": 1.0}}]}
  data.update(kw)
  return data


@pytest.mark.parametrize("change,match", [
    ({"merge_method": "tie"}, "unknown merge_method 'tie'; did you mean 'ties'"),
    ({"merge_method": "dare-ties"}, "did you mean 'dare_ties'"),
    ({"out_dtyp": "bfloat16"}, "unknown key 'out_dtyp' in config; did you mean 'out_dtype'"),
    ({"parameters": {"densty": 0.5}}, "unknown parameter 'densty'.*did you mean 'density'"),
    ({"dtype": "bf16"}, "dtype 'bf16' is not supported"),
    ({"base_model": None}, "needs a base_model"),
    ({"slices": [{"sources": [{"model": "x", "layer_range": [0, 1]}]}]}, "exactly one of 'models' or 'slices'"),
    ({"tokenizer_source": "union"}, "union"),
    ({"modules": {}}, "not supported"),
])
def test_config_errors_say_what_is_wrong(models, change, match):
  with pytest.raises(ConfigError, match=match):
    parse_merge_config(_cfg(models, **change))


def test_a_missing_model_directory_is_named(models, tmp_path):
  with pytest.raises(ConfigError, match="models\\[0\\].model 'nope/model' is not a local directory"):
    parse_merge_config(_cfg(models, models=[{"model": "nope/model"}]))


def test_a_missing_required_parameter_names_model_and_tensor(models):
  cfg = parse_merge_config(_cfg(models, models=[{"model": models["a"]}]))
  with pytest.raises(ConfigError, match="missing required parameter 'weight' for .*model.embed_tokens.weight"):
    plan_merge(cfg, {m: pm.CheckpointReader(m) for m in (models["base"], models["a"])})


def test_slice_length_and_input_count_errors(models):
  bad = {"merge_method": "slerp", "base_model": models["base"], "parameters": {"t": 0.5},
         "slices": [{"sources": [{"model": models["base"], "layer_range": [0, 2]},
                                 {"model": models["a"], "layer_range": [0, 3]}]}]}
  with pytest.raises(ConfigError, match="same number of layers"):
    parse_merge_config(bad)
  three = _cfg(models, merge_method="slerp", parameters={"t": 0.5},
               models=[{"model": models["a"]}, {"model": models["b"]}])
  with pytest.raises(ConfigError, match="'slerp' takes exactly 2 input models"):
    parse_merge_config(three)


@pytest.mark.parametrize("kind,match", [
    ("drop", "has no tensor 'model.layers.1.mlp.up_proj.weight'"),
    ("reshape", "'model.layers.1.mlp.up_proj.weight' has shape \\[6, 4\\], but .*reshape has \\[5, 4\\]"),
    ("arch", "mismatched architectures"),
    ("layers", "has no layer 2"),
])
def test_model_directory_problems_are_named(models, tmp_path, kind, match):
  name = "model.layers.1.mlp.up_proj.weight"
  bad = _model(tmp_path / kind, 9, drop=name if kind == "drop" else None,
               reshape=name if kind == "reshape" else None, arch="GPT2LMHeadModel" if kind == "arch" else
               "LlamaForCausalLM", layers=2 if kind == "layers" else N_LAYERS)
  if kind == "layers":
    data = {"merge_method": "passthrough", "slices": [{"sources": [{"model": bad, "layer_range": [0, 3]}]}]}
  else:
    data = _cfg(models, models=[{"model": bad, "parameters": {"weight": 1.0}}])
  cfg = parse_merge_config(data)
  with pytest.raises(ConfigError, match=match):
    plan_merge(cfg, {m: pm.CheckpointReader(m) for m in cfg.referenced_models()})


def test_integer_tensors_are_copied_when_equal_and_rejected_when_different():
  a = np.arange(4, dtype=np.int64)
  out = merge_tensor("linear", [a, a.copy()], None, {"normalize": True}, [{"weight": 1.0}] * 2, name="pos")
  np.testing.assert_array_equal(out, a)
  with pytest.raises(ValueError, match="'pos' differs"):
    merge_tensor("linear", [a, a + 1], None, {"normalize": True}, [{"weight": 1.0}] * 2, name="pos")


def test_dry_run_checks_everything_and_writes_nothing(models, tmp_path):
  cfg = parse_merge_config(_cfg(models, models=[{"model": models["a"], "parameters": {"weight": 1.0}}]))
  s = pm.run_merge(cfg, tmp_path / "out", dry_run=True)
  assert s["dry_run"] and s["tensors"] == 12 and not (tmp_path / "out").exists()


def test_config_json_and_dtype_follow_mergekit(models, tmp_path):
  cfg = parse_merge_config(_cfg(models, dtype="float32", out_dtype="float16", tokenizer_source="base"))
  out = tmp_path / "o"
  pm.run_merge(cfg, out)
  with open(out / "config.json") as f:
    assert json.load(f)["torch_dtype"] == "float16"
  r = pm.CheckpointReader(out)
  assert {str(r.dtype(k)) for k in r.keys()} == {"float16"}
  assert sorted(os.listdir(out))[0].startswith("config.json")


# ----------------------------------------------------------------------------------------------------------------
# random methods: statistics


def _gta_stats(method, density, n=200_000, **shared):
  rng = np.random.default_rng(0)
  base = rng.standard_normal(n).astype(np.float32)
  ft = base + rng.standard_normal(n).astype(np.float32)
  sh = {"lambda": 1.0, "normalize": False, "rescale": False, "int8_mask": False} | shared
  outs = [np.asarray(merge_tensor(method, [base, ft], 0, sh, [{}, {"weight": 1.0, "density": density,
                                                                  "epsilon": 0.1}],
                                  key=jax.random.key(s))) for s in range(4)]
  return base, ft, outs


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
def test_random_methods_keep_density_and_rescale_to_the_l1_norm(method):
  density = 0.3
  base, ft, outs = _gta_stats(method, density, rescale=True)
  d = ft - base
  for out in outs:
    kept = out != base
    sd = np.sqrt(density * (1 - density) / d.size)
    assert abs(kept.mean() - density) < 6 * sd
    np.testing.assert_allclose(np.abs(out - base).sum(), np.abs(d).sum(), rtol=1e-4)  # mergekit's l1 rescale
  assert not np.array_equal(outs[0], outs[1])  # keys differ -> masks differ


def test_dare_is_unbiased_and_della_prefers_large_magnitudes():
  density = 0.4
  base, ft, outs = _gta_stats("dare_linear", density, rescale=True)
  d = ft - base
  mean = np.mean([o - base for o in outs], axis=0)
  assert abs(float(np.mean(mean - d))) < 0.01  # E[rescaled mask * d] = d (averaged over entries and keys)
  _, _, della = _gta_stats("della_linear", density)
  a = np.abs(d)
  big, small = a > np.quantile(a, 0.9), a < np.quantile(a, 0.1)
  kept = np.mean([o != base for o in della], axis=0)
  # MagPrune: keep probability density -/+ epsilon from the smallest to the largest magnitude rank
  assert abs(kept[big].mean() - (density + 0.09)) < 0.01 and abs(kept[small].mean() - (density - 0.09)) < 0.01


def test_della_rejects_density_epsilon_outside_the_unit_interval():
  x = np.ones(10, np.float32)
  with pytest.raises(ValueError, match="density=0.1, epsilon=0.15"):
    merge_tensor("della", [x, x + 1], 0, {"lambda": 1.0, "normalize": True, "rescale": True, "int8_mask": False},
                 [{}, {"weight": 1.0, "density": 0.1, "epsilon": 0.15}])


# ----------------------------------------------------------------------------------------------------------------
# paperlab-only methods: streaming tensor by tensor equals the pytree function on the whole model in memory


@pytest.mark.parametrize("method,params,fn", [
    ("pcb", {"ratio": 0.3, "lambda": 0.8}, lambda b, f: pm.pcb(b, f, 0.3, 0.8, scope="tensor")),
    ("iso_c", {"alpha": 1.2}, lambda b, f: pm.iso_c(b, f, 1.2, layout="torch")),
    ("iso_cts", {"alpha": 1.0, "common_fraction": 0.5},
     lambda b, f: pm.iso_cts(b, f, 1.0, common_fraction=0.5, layout="torch")),
])
def test_paperlab_only_methods_stream_like_the_pytree_functions(models, tmp_path, method, params, fn):
  data = {"merge_method": method, "base_model": models["base"], "parameters": params,
          "models": [{"model": models["a"]}, {"model": models["b"]}], "dtype": "float32"}
  pm.run_merge(parse_merge_config(data), tmp_path / "o")
  ours = pm.read_checkpoint(tmp_path / "o")
  load = lambda k: {n: x.astype(np.float32) for n, x in pm.read_checkpoint(models[k]).items()}
  theirs = fn(pm.hf_to_tree(load("base")), [pm.hf_to_tree(load("a")), pm.hf_to_tree(load("b"))])
  for name, x in pm.tree_to_hf(theirs).items():
    np.testing.assert_allclose(ours[name], np.asarray(x), rtol=1e-5, atol=1e-6, err_msg=name)


def test_dare_x_rescales_by_one_over_q():
  rng = np.random.default_rng(0)
  base = rng.standard_normal(100_000).astype(np.float32)
  ft = base + rng.standard_normal(base.size).astype(np.float32)
  out = np.asarray(merge_tensor("dare_x", [base, ft], 0, {"density": 0.2, "q": 0.5, "lambda": 1.0},
                                [{}, {"weight": 1.0}], key=jax.random.key(1)))
  kept = out != base
  assert abs(kept.mean() - 0.2) < 0.01
  np.testing.assert_allclose((out - base)[kept], 2.0 * (ft - base)[kept], rtol=1e-5)


def test_ties_global_streams_like_ties_with_global_scope(models, tmp_path):
  """Two histogram passes find each model's exact global threshold; the result equals ``ties(scope="global")``
  on the whole model in memory."""
  data = {"merge_method": "ties_global", "base_model": models["base"], "parameters": {"density": 0.3, "lambda": 0.9},
          "models": [{"model": models["a"]}, {"model": models["b"]}, {"model": models["c"]}], "dtype": "float32"}
  pm.run_merge(parse_merge_config(data), tmp_path / "o")
  ours = pm.read_checkpoint(tmp_path / "o")
  load = lambda k: {n: x.astype(np.float32) for n, x in pm.read_checkpoint(models[k]).items()}
  theirs = pm.ties(load("base"), [load("a"), load("b"), load("c")], 0.3, 0.9, scope="global")
  for name, x in theirs.items():
    np.testing.assert_allclose(ours[name], np.asarray(x), rtol=1e-6, atol=1e-7, err_msg=name)
