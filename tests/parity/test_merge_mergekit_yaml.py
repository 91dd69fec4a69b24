"""Parity of ``paperlab merge`` (paperlab.merge.mergekit_config + streaming) with mergekit-yaml (mergekit's
``run_merge``, LGPL-3.0, used as a test-time oracle only) on the same YAML and the same tiny Llama-shaped sharded
bf16 checkpoints made here with ``transformers`` (hidden 64, 4 layers, shards of 100 KB).

Tolerance: every output tensor within 1 bf16 ulp (of the larger of the two magnitudes) of mergekit's on >= 99.9%
of its elements. TIES and breadcrumbs select the top-k magnitudes of bf16 deltas, which tie often (bf16 deltas
take few distinct values). paperlab keeps all of them by default (``tie_break: keep``, the TIES authors' rule);
with ``tie_break: index`` both keep exactly k entries per tensor, and which of the tied entries survive is a matter
of sort order: mergekit's unstable ``torch.argsort`` (libstdc++'s
introsort order on CPU, another on CUDA) against paperlab's row-major order. So those methods are checked twice:
against mergekit as it is, where the elements beyond 1 ulp must all be entries whose |delta| equals a model's
selection threshold (checked element by element) and the >= 99.9% bound is asserted on the other elements; and
against mergekit with ``torch.argsort``/``torch.sort`` made stable (the same tie order), where the bound holds on
every element. DARE/DELLA are compared per tensor given the same masks (mergekit's ``torch.bernoulli``
returns the masks paperlab draws) and statistically (keep rate, L1 rescale, unbiasedness) in
tests/merge/test_mergekit_config.py.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mk_config = pytest.importorskip("mergekit.config")
mk_merge = pytest.importorskip("mergekit.merge")

from paperlab.merge.checkpoint import CheckpointReader, read_checkpoint  # noqa: E402
from paperlab.merge.mergekit_config import parse_merge_config  # noqa: E402
from paperlab.merge.streaming import run_merge  # noqa: E402

N_LAYERS = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """base + 3 fine-tunes (base + N(0, 0.005) noise on every weight), bf16, sharded, with a tokenizer file."""
  root = tmp_path_factory.mktemp("models")
  cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                 tie_word_embeddings=False)
  torch.manual_seed(0)
  base = transformers.LlamaForCausalLM(cfg)
  with torch.no_grad():
    for name, p in base.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))  # trained norms are not all ones
  base = base.to(torch.bfloat16)
  paths = {"base": str(root / "base")}
  base.save_pretrained(paths["base"], max_shard_size="100KB", safe_serialization=True)
  (root / "base" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
  for i in range(3):
    m = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    m.load_state_dict(base.state_dict())
    with torch.no_grad():
      for p in m.parameters():
        p.add_((0.005 * torch.randn(p.shape)).to(p.dtype))
    paths[f"ft{i}"] = str(root / f"ft{i}")
    m.save_pretrained(paths[f"ft{i}"], max_shard_size="100KB", safe_serialization=True)
  assert os.path.exists(os.path.join(paths["base"], "model.safetensors.index.json"))  # really sharded
  return paths


def _fill(text: str, models: dict) -> dict:
  for k, v in models.items():
    text = text.replace(f"<{k}>", v)
  return yaml.safe_load(text)


def _both(data: dict, tmp_path) -> tuple[dict, dict]:
  opts = mk_merge.MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False)
  mk_merge.run_merge(mk_config.MergeConfiguration.model_validate(data), str(tmp_path / "mk"), opts)
  run_merge(parse_merge_config(data), tmp_path / "pl", shard_size="100KB")
  return read_checkpoint(tmp_path / "pl"), read_checkpoint(tmp_path / "mk")


def _ulp_ok(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """|a - b| <= one bf16 ulp at max(|a|, |b|)."""
  x, y = a.astype(np.float32), b.astype(np.float32)
  m = np.maximum(np.abs(x), np.abs(y)).astype(ml_dtypes.bfloat16)
  ulp = (m.view(np.uint16) + 1).view(ml_dtypes.bfloat16).astype(np.float32) - m.astype(np.float32)
  return np.abs(x - y) <= ulp


def _assert_parity(ours: dict, theirs: dict, tie_free: dict | None = None) -> float:
  assert ours.keys() == theirs.keys()
  worst, close, total = 1.0, 0, 0
  for name in theirs:
    a, b = ours[name], theirs[name]
    assert a.dtype == b.dtype and a.shape == b.shape, name
    ok = _ulp_ok(a, b)
    close, total = close + int(ok.sum()), total + ok.size
    if tie_free is not None:
      ties = ~tie_free[name]
      assert np.all(ok | ties), f"{name}: {np.sum(~ok & ~ties)} elements beyond 1 ulp are not threshold ties"
      ok = ok[~ties]
    frac = float(ok.mean()) if ok.size else 1.0
    worst = min(worst, frac)
    assert frac >= 0.999, f"{name}: only {frac:.5f} of elements within 1 bf16 ulp"
  print(f"worst tensor {worst:.5f} within 1 ulp{' (tie-free elements)' if tie_free else ''}; all elements "
        f"{close / total:.5f}")
  return worst


def _tie_free(models: dict, names: list[str], densities: dict, data: dict, kind: str, gamma: float = 0.0) -> dict:
  """Per output tensor, True where no model's |delta| equals its selection threshold(s) (mergekit's convention:
  k = max(1, int(density n)) for TIES' trim, the magnitude_outliers band for breadcrumbs)."""
  base = read_checkpoint(models["base"])
  out = {}
  fts = {m: read_checkpoint(models[m]) for m in names}
  for name, b in base.items():
    free = np.ones(b.shape, bool)
    for m in names:
      d = np.abs(fts[m][name].astype(np.float32) - b.astype(np.float32)).reshape(-1)
      n = d.size
      dens = densities[m]
      s = np.sort(d)
      if kind == "magnitude":
        edges = [s[n - max(1, int(dens * n))]]
      else:
        keep, top = int(dens * n), int(gamma * n)
        bot = max(0, n - keep - top)
        edges = [s[bot], s[bot + keep - 1]]
      for e in edges:
        free &= (d != e).reshape(b.shape)
    out[name] = free
  return out


def test_linear_with_a_gradient_weight(models, tmp_path):
  data = _fill("""
models:
  - model: <ft0>
    parameters: {weight: 1.0}
  - model: <ft1>
    parameters: {weight: 0.5}
  - model: <ft2>
    parameters: {weight: [0.2, 1.0]}
merge_method: linear
""", models)
  _assert_parity(*_both(data, tmp_path))


def test_slerp_with_a_filter_conditional_gradient_t(models, tmp_path):
  data = _fill("""
slices:
  - sources:
      - model: <base>
        layer_range: [0, 4]
      - model: <ft0>
        layer_range: [0, 4]
merge_method: slerp
base_model: <base>
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
""", models)
  _assert_parity(*_both(data, tmp_path))


def test_task_arithmetic_float32_math_bf16_out(models, tmp_path):
  data = _fill("""
models:
  - model: <ft0>
    parameters: {weight: 0.7}
  - model: <ft1>
    parameters: {weight: 0.3}
base_model: <base>
merge_method: task_arithmetic
parameters: {lambda: 0.9}
dtype: float32
out_dtype: bfloat16
""", models)
  _assert_parity(*_both(data, tmp_path))


TIES_YAML = """
models:
  - model: <ft0>
    parameters: {weight: 1.0, density: 0.5}
  - model: <ft1>
    parameters: {weight: [0.2, 0.8], density: 0.3}
  - model: <ft2>
    parameters: {weight: 0.6, density: 0.7}
base_model: <base>
merge_method: ties
dtype: float32
out_dtype: bfloat16
"""


def test_ties_with_per_model_density_and_a_gradient_weight(models, tmp_path):
  ours, theirs = _both(_fill(TIES_YAML, models), tmp_path)
  free = _tie_free(models, ["ft0", "ft1", "ft2"], {"ft0": 0.5, "ft1": 0.3, "ft2": 0.7}, None, "magnitude")
  _assert_parity(ours, theirs, free)


@pytest.fixture(scope="module")
def few_ulp_models(models, tmp_path_factory):
  """The base and 3 fine-tunes that move every weight by at most 3 bf16 ulps, as bf16 fine-tunes often do: most
  |delta| values tie, the case where streaming guesses TIES' threshold from a sample (and verifies it)."""
  from paperlab.merge.checkpoint import save_checkpoint

  root = tmp_path_factory.mktemp("few_ulp")
  base = read_checkpoint(models["base"])
  cfg = json.loads((open(os.path.join(models["base"], "config.json")).read()))
  paths = {"base": models["base"]}
  for i in range(3):
    rng = np.random.default_rng(i)
    ft = {k: (v.view(np.uint16).astype(np.int32) + rng.integers(-3, 4, v.shape)).astype(np.uint16)
          .view(ml_dtypes.bfloat16) for k, v in base.items()}
    paths[f"ft{i}"] = save_checkpoint(ft, root / f"ft{i}", shard_size="100KB", config=cfg)
  return paths


def test_ties_with_a_guessed_threshold_on_few_ulp_fine_tunes(few_ulp_models, tmp_path, monkeypatch):
  from paperlab.merge import streaming

  monkeypatch.setattr(streaming, "_SPECULATE_MIN", 1024)  # the tiny models' tensors are below the default size
  counted = []
  kernel = streaming._gta_kernel_counted
  monkeypatch.setattr(streaming, "_gta_kernel_counted", lambda *a, **k: counted.append(1) or kernel(*a, **k))
  ours, theirs = _both(_fill(TIES_YAML, few_ulp_models), tmp_path)
  free = _tie_free(few_ulp_models, ["ft0", "ft1", "ft2"], {"ft0": 0.5, "ft1": 0.3, "ft2": 0.7}, None,
                   "magnitude")
  _assert_parity(ours, theirs, free)
  assert counted  # thresholds were guessed (and verified by counting) on some tensors


def test_breadcrumbs(models, tmp_path):
  data = _fill("""
models:
  - model: <ft0>
    parameters: {weight: 1.0, density: 0.8, gamma: 0.05}
  - model: <ft1>
    parameters: {weight: 0.5, density: 0.8, gamma: 0.05}
base_model: <base>
merge_method: breadcrumbs
dtype: float32
out_dtype: bfloat16
""", models)
  ours, theirs = _both(data, tmp_path)
  free = _tie_free(models, ["ft0", "ft1"], {"ft0": 0.8, "ft1": 0.8}, data, "outliers", gamma=0.05)
  _assert_parity(ours, theirs, free)


@pytest.fixture
def stable_mergekit(monkeypatch):
  """mergekit with a stable sort: ``sparsify.magnitude`` / ``magnitude_outliers`` then order tied magnitudes by
  index, the order ``tie_break: index`` uses. Only the order among equal
  magnitudes changes; which magnitudes are kept and how many do not."""
  argsort, sort = torch.argsort, torch.sort
  monkeypatch.setattr(torch, "argsort", lambda x, *a, **k: argsort(x, *a, **{**k, "stable": True}))
  monkeypatch.setattr(torch, "sort", lambda x, *a, **k: sort(x, *a, **{**k, "stable": True}))


BREADCRUMBS_YAML = """
models:
  - model: <ft0>
    parameters: {weight: 1.0, density: 0.8, gamma: 0.05}
  - model: <ft1>
    parameters: {weight: 0.5, density: [0.6, 0.8], gamma: 0.05}
base_model: <base>
merge_method: <method>
parameters: {tie_break: index}
dtype: float32
out_dtype: bfloat16
"""


@pytest.mark.parametrize("fixture", ["models", "few_ulp_models"])
def test_ties_keeps_mergekits_entries_given_a_stable_tie_order(fixture, request, tmp_path, stable_mergekit,
                                                               monkeypatch):
  """Every element, ties included: with the order among tied magnitudes fixed (index order on both sides),
  ``tie_break: index`` keeps exactly mergekit's k entries per tensor and model (thresholds guessed from a sample
  and verified, as on large tensors)."""
  from paperlab.merge import streaming

  monkeypatch.setattr(streaming, "_SPECULATE_MIN", 1024)
  yml = TIES_YAML.replace("merge_method: ties", "merge_method: ties\nparameters: {tie_break: index}")
  ours, theirs = _both(_fill(yml, request.getfixturevalue(fixture)), tmp_path)
  _assert_parity(ours, theirs)


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_keep_mergekits_band_given_a_stable_tie_order(method, models, tmp_path, stable_mergekit):
  ours, theirs = _both(_fill(BREADCRUMBS_YAML.replace("<method>", method), models), tmp_path)
  _assert_parity(ours, theirs)


def test_ties_tie_break_torch_matches_mergekit_as_it_is(few_ulp_models, tmp_path):
  """``tie_break: torch`` against mergekit with its own (unstable) ``torch.argsort``, on fine-tunes whose |delta|
  values tie almost everywhere: the >= 99.9% bound holds on every element, ties included, because both select by
  the same torch sort; in fact every element is within 1 ulp."""
  yml = TIES_YAML.replace("merge_method: ties", "merge_method: ties\nparameters: {tie_break: torch}")
  ours, theirs = _both(_fill(yml, few_ulp_models), tmp_path)
  assert _assert_parity(ours, theirs) == 1.0


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties"])
def test_breadcrumbs_tie_break_torch_matches_mergekit_as_it_is(method, few_ulp_models, tmp_path):
  """The same for breadcrumbs' two-sided band (``torch.sort`` ascending), with and without TIES' sign consensus,
  bf16 math."""
  yml = BREADCRUMBS_YAML.replace("<method>", method).replace("tie_break: index", "tie_break: torch")
  ours, theirs = _both(_fill(yml.replace("dtype: float32\n", "dtype: bfloat16\n"), few_ulp_models), tmp_path)
  assert _assert_parity(ours, theirs) == 1.0


def test_tie_break_keep_keeps_every_tied_entry(few_ulp_models, tmp_path):
  """``tie_break: keep`` (the TIES authors' ``>= kthvalue``) keeps at least k entries per tensor and model, and
  more where magnitudes tie at the threshold: the merged deltas are nonzero at least where ``index``'s are."""
  data = _fill(TIES_YAML, few_ulp_models)  # the default
  index_yml = TIES_YAML.replace("merge_method: ties", "merge_method: ties\nparameters: {tie_break: index}")
  run_merge(parse_merge_config(data), tmp_path / "keep", shard_size="100KB")
  run_merge(parse_merge_config(_fill(index_yml, few_ulp_models)), tmp_path / "index", shard_size="100KB")
  keep, index = read_checkpoint(tmp_path / "keep"), read_checkpoint(tmp_path / "index")
  base = read_checkpoint(few_ulp_models["base"])
  more = 0
  for name, b in base.items():
    dk = keep[name].astype(np.float32) != b.astype(np.float32)
    di = index[name].astype(np.float32) != b.astype(np.float32)
    more += int(dk.sum()) - int(di.sum())
  assert more > 0


def test_model_stock(models, tmp_path):
  data = _fill("""
models:
  - model: <ft0>
  - model: <ft1>
  - model: <ft2>
base_model: <base>
merge_method: model_stock
dtype: float32
out_dtype: bfloat16
""", models)
  _assert_parity(*_both(data, tmp_path))


def test_passthrough_slices_stack_layers_and_set_the_layer_count(models, tmp_path):
  data = _fill("""
slices:
  - sources:
      - model: <base>
        layer_range: [0, 2]
  - sources:
      - model: <ft0>
        layer_range: [1, 3]
  - sources:
      - model: <ft1>
        layer_range: [3, 4]
merge_method: passthrough
""", models)
  ours, theirs = _both(data, tmp_path)
  _assert_parity(ours, theirs)
  assert sum(1 for k in ours if k.endswith("input_layernorm.weight")) == 5
  with open(tmp_path / "pl" / "config.json") as f:
    assert json.load(f)["num_hidden_layers"] == 5


def test_nuslerp(models, tmp_path):
  data = _fill("""
models:
  - model: <ft0>
    parameters: {weight: 0.3}
  - model: <ft1>
    parameters: {weight: 0.7}
base_model: <base>
merge_method: nuslerp
dtype: float32
out_dtype: bfloat16
""", models)
  _assert_parity(*_both(data, tmp_path))


def test_merged_model_loads_in_transformers_and_runs(models, tmp_path):
  data = _fill("""
models:
  - model: <ft0>
    parameters: {weight: 0.5, density: 0.5}
  - model: <ft1>
    parameters: {weight: 0.5, density: 0.5}
base_model: <base>
merge_method: ties
""", models)
  out = tmp_path / "merged"
  run_merge(parse_merge_config(data), out, shard_size="100KB")
  assert (out / "tokenizer_config.json").exists()  # the base's tokenizer files come along
  assert CheckpointReader(out).keys()
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)
  logits = model(torch.arange(8)[None]).logits
  assert logits.shape == (1, 8, 128) and torch.isfinite(logits).all()
  merged = read_checkpoint(out)
  state = model.state_dict()
  for name, x in merged.items():
    assert state[name].view(torch.uint16).numpy().tobytes() == x.tobytes(), name


@pytest.mark.parametrize("method,rescale", [("dare_ties", True), ("dare_linear", False), ("della", True),
                                            ("della_linear", False)])
def test_random_methods_match_mergekit_given_the_same_masks(method, rescale, monkeypatch):
  """mergekit draws masks with ``torch.bernoulli``; it is fed the masks paperlab draws for the same key (model j
  uses ``fold_in(key, j)``), so the rest of the method (rescale, weights, consensus, normalize, lambda) is
  compared exactly. Tolerance 1e-5 of the largest output magnitude (float32 inputs)."""
  import jax
  import jax.numpy as jnp
  from mergekit.merge_methods import registry
  from mergekit.merge_methods.base import TensorGroup

  from paperlab.merge import streaming, task_vectors

  rng = np.random.default_rng(7)
  base = rng.standard_normal((16, 12)).astype(np.float32)
  fts = [base + 0.1 * rng.standard_normal(base.shape).astype(np.float32) for _ in range(3)]
  dens, weights, eps = [0.4, 0.6, 0.5], [1.0, 0.5, 0.8], [0.1, 0.2, 0.15]
  key = jax.random.key(5)
  masks = []
  for j, ft in enumerate(fts):
    k = jax.random.fold_in(key, j)
    if method.startswith("dare"):
      m = task_vectors._draw_mask(k, jnp.float32(dens[j]), base.shape, "hash")
    else:
      m = streaming._della_mask(k, jnp.asarray(ft - base), jnp.float32(dens[j]), jnp.float32(eps[j]))
    masks.append(np.asarray(m))
  assert all(0.2 < m.mean() < 0.8 for m in masks)
  it = iter(masks)
  monkeypatch.setattr(torch, "bernoulli", lambda x, *a, **k: torch.from_numpy(next(it).astype(np.float32)))
  per = {"weight": {i + 1: w for i, w in enumerate(weights)}, "density": {i + 1: d for i, d in enumerate(dens)}}
  if method.startswith("della"):
    per["epsilon"] = {i + 1: e for i, e in enumerate(eps)}
  group = TensorGroup.from_tensors([torch.from_numpy(t) for t in [base, *fts]], base_index=0)
  theirs = registry.get(method)([group], parameters={**per, "lambda": 0.7, "rescale": rescale})[0].numpy()
  spec = registry.get(method).spec
  shared = {p.name: p.default for p in spec.shared_parameters} | {"lambda": 0.7, "rescale": rescale}
  per_input = [{}] + [{"weight": w, "density": d, "epsilon": e} for w, d, e in zip(weights, dens, eps)]
  ours = np.asarray(streaming.merge_tensor(method, [base, *fts], 0, shared, per_input, key=key))
  assert float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))) <= 1e-5
