"""Parity with Hugging Face ``peft`` (0.21, the maintained PyTorch implementation) on the same base weights: LoRA,
DoRA, LoHa (FedPara) and Bone / Bat (peft's ``MissConfig``, Bone's successor in peft) forward outputs and merged
weights within 1e-5, and adapters round-tripped both ways (paperlab -> ``PeftModel.from_pretrained``, peft
``save_pretrained`` -> :func:`paperlab.peft.load_adapters`) giving the same outputs. AdaLoRA (``AdaLoraConfig``,
``RankAllocator``): forward outputs within 1e-5, the budget schedule at every step and the masked triplets identical
at every one of 20 steps of the same gradient sequence, and the orthogonality regularizer.

The torch network mirrors ``paperlab.models.MLP(8, [16, 16], 4)`` module for module (``hidden.0``, ``hidden.1``,
``head``), with ``weight = kernel.T``."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

@pytest.fixture(scope="module", autouse=True)
def _import_peft():
  """peft (and transformers under it), imported when this module's first test runs, not when it is collected:
  the import costs ~7 CPU-s and every xdist worker collects every test module."""
  global peft, RankAllocator, get_peft_model_state_dict  # pylint: disable=global-variable-undefined
  import peft  # pylint: disable=g-import-not-at-top,redefined-outer-name
  from peft.tuners.adalora.layer import RankAllocator  # pylint: disable=g-import-not-at-top
  from peft.utils import get_peft_model_state_dict  # pylint: disable=g-import-not-at-top

import paperlab.peft as pp  # noqa: E402
from paperlab.models import MLP  # noqa: E402

TOL = 1e-5
ALPHA = 6.0


class TorchMLP(torch.nn.Module):

  def __init__(self):
    super().__init__()
    self.hidden = torch.nn.ModuleList([torch.nn.Linear(8, 16), torch.nn.Linear(16, 16)])
    self.head = torch.nn.Linear(16, 4)

  def forward(self, x):
    for layer in self.hidden:
      x = torch.relu(layer(x))
    return self.head(x)


def _base():
  model = MLP(8, [16, 16], 4, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params = nnx.to_pure_dict(params)
  net = TorchMLP()
  with torch.no_grad():
    for name, mod in [("hidden.0", net.hidden[0]), ("hidden.1", net.hidden[1]), ("head", net.head)]:
      p = params["head"] if name == "head" else params["hidden"][int(name[-1])]
      mod.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).T.copy()))
      mod.bias.copy_(torch.from_numpy(np.array(p["bias"])))
  x = np.asarray(jax.random.normal(jax.random.key(1), (5, 8)), np.float32)
  return graphdef, params, net, x


def _ours(graphdef, params, adapters, x):
  return np.asarray(nnx.merge(graphdef, pp.apply_adapters(params, adapters, alpha=ALPHA))(jnp.asarray(x)))


def _randomize(adapters, seed=2):
  """Non-zero values everywhere (the zero-initialized factors would make the test blind to them)."""
  leaves, treedef = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [0.3 * jax.random.normal(k, x.shape, x.dtype) + (x if x.ndim == 1 else 0)
                                      for k, x in zip(keys, leaves)])


CASES = {
    "lora": lambda p: pp.lora_init(jax.random.key(0), p, include=r"hidden/\d/kernel", r=4),
    "dora": lambda p: pp.dora_init(jax.random.key(0), p, include=r"hidden/\d/kernel", r=4),
    "loha": lambda p: pp.loha_init(jax.random.key(0), p, include=r"hidden/\d/kernel", r=4),
    "bone": lambda p: pp.bone_init(p, include=r"hidden/\d/kernel", r=4),
    "bat": lambda p: pp.bone_init(p, include=r"hidden/1/kernel|head", r=4, variant="bat"),
    "adalora": lambda p: pp.adalora_init(jax.random.key(0), p, include=r"hidden/\d/kernel", r=3),
}


def _peft_config(kind, modules, r=4):
  if kind in ("lora", "dora"):
    return peft.LoraConfig(r=r, lora_alpha=ALPHA, target_modules=modules, use_dora=kind == "dora",
                           init_lora_weights=False)
  if kind == "loha":
    return peft.LoHaConfig(r=r, alpha=ALPHA, target_modules=modules, init_weights=False)
  return peft.MissConfig(r=r, target_modules=modules, init_weights="bat" if kind == "bat" else True)


def _torch_out(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x)).numpy()


def _merged_torch_weights(peft_model):
  merged = peft_model.merge_and_unload()
  return {"hidden/0/kernel": merged.hidden[0].weight.detach().numpy().T,
          "hidden/1/kernel": merged.hidden[1].weight.detach().numpy().T,
          "head/kernel": merged.head.weight.detach().numpy().T}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_paperlab_adapter_loads_in_peft_with_same_outputs_and_merged_weights(kind, tmp_path):
  graphdef, params, net, x = _base()
  adapters = _randomize(CASES[kind](params))
  if kind in ("bone", "bat"):  # Bone's blocks enter additively at scale 1; keep them small like a trained delta
    adapters = jax.tree.map(lambda a: 0.1 * a, adapters)
  pp.save_pretrained(tmp_path, adapters, alpha=ALPHA)
  model = peft.PeftModel.from_pretrained(copy.deepcopy(net), str(tmp_path))
  out = _ours(graphdef, params, adapters, x)
  assert np.abs(out - _torch_out(net, x)).max() > 1e-2  # the adapter changes the function
  np.testing.assert_allclose(out, _torch_out(model, x), atol=TOL, rtol=TOL)
  merged_ours = pp.merge_adapters(params, adapters, alpha=ALPHA)
  for path, w in _merged_torch_weights(model).items():
    ours = merged_ours["head"]["kernel"] if path == "head/kernel" else merged_ours["hidden"][int(path[7])]["kernel"]
    np.testing.assert_allclose(np.asarray(ours), w, atol=TOL, rtol=TOL, err_msg=path)


@pytest.mark.parametrize("kind", sorted(set(CASES) - {"adalora"}))  # AdaLoRA's peft -> paperlab: tests below
def test_peft_adapter_loads_in_paperlab_with_same_outputs(kind, tmp_path):
  graphdef, params, net, x = _base()
  modules = ["hidden.1", "head"] if kind == "bat" else ["hidden.0", "hidden.1"]
  model = peft.get_peft_model(copy.deepcopy(net), _peft_config(kind, modules))
  torch.manual_seed(3)
  with torch.no_grad():  # every adapter tensor non-zero (peft initializes B or w2_b or the blocks at zero)
    for name, prm in model.named_parameters():
      if any(s in name for s in ("lora_", "hada_", "miss_")):
        prm.add_(0.1 * torch.randn_like(prm))
  model.save_pretrained(str(tmp_path))
  adapters = pp.load_adapters(tmp_path / "adapter_model.safetensors")
  assert sorted(adapters) == sorted(pp.kernel_path(m) for m in modules)
  assert {pp.adapter_kind(a) for a in adapters.values()} == {kind}
  out = _ours(graphdef, params, adapters, x)
  assert np.abs(out - _torch_out(net, x)).max() > 1e-2  # the adapter changes the function
  np.testing.assert_allclose(out, _torch_out(model, x), atol=TOL, rtol=TOL)


def test_lora_kaiming_uniform_init_matches_peft_distribution_bound():
  """peft draws lora_A with kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)); lora_B is zero."""
  _, params, net, _ = _base()
  model = peft.get_peft_model(copy.deepcopy(net), peft.LoraConfig(r=4, target_modules=["hidden.1"]))
  a_torch = model.base_model.model.hidden[1].lora_A["default"].weight.detach().numpy()
  ours = pp.lora_init(jax.random.key(0), params, include="hidden/1/kernel", r=4)["hidden/1/kernel"]
  bound = 1 / np.sqrt(16)
  assert np.abs(a_torch).max() <= bound and np.abs(np.asarray(ours["lora_A"])).max() <= bound
  assert a_torch.shape == ours["lora_A"].shape and np.all(np.asarray(ours["lora_B"]) == 0)


CFG = dict(init_r=4, target_r=2, tinit=2, tfinal=4, deltaT=2, total_step=24, lora_alpha=6.0)
MODULES = ["hidden.0", "hidden.1", "head"]


def _peft_model(net):
  config = peft.AdaLoraConfig(target_modules=MODULES, r=CFG["init_r"], **CFG)
  model = peft.get_peft_model(copy.deepcopy(net), config)
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lora_E" in name:
        p.copy_(torch.randn_like(p))
  return model, config


def _ours_from(model):
  return {k: {n: jnp.asarray(v) for n, v in a.items()}
          for k, a in pp.adapters_from_state_dict({k: v.detach().numpy() for k, v in
                                                   get_peft_model_state_dict(model).items()}).items()}


def test_adalora_forward_matches_peft():
  graphdef, params, net, x = _base()
  model, _ = _peft_model(net)
  adapters = _ours_from(model)
  assert {pp.adapter_kind(a) for a in adapters.values()} == {"adalora"}
  ours = np.asarray(nnx.merge(graphdef, pp.apply_adapters(params, adapters, alpha=CFG["lora_alpha"]))(jnp.asarray(x)))
  assert np.abs(ours - _torch_out(net, x)).max() > 1e-3
  np.testing.assert_allclose(ours, _torch_out(model, x), atol=1e-5, rtol=1e-5)


def test_budget_schedule_and_masks_match_rank_allocator_for_20_steps():
  _, _, net, _ = _base()
  model, config = _peft_model(net)
  allocator = RankAllocator(model, config, "default")
  adapters = _ours_from(model)
  state = pp.adalora_importance_init(adapters)
  init_budget = sum(a["lora_E"].shape[0] for a in adapters.values())
  named = dict(model.named_parameters())
  masked_steps = 0
  for step in range(1, 21):
    grads = {}
    for path, a in adapters.items():
      mod = pp.module_name(path)
      grads[path] = {}
      for n, v in a.items():
        g = np.asarray(jax.random.normal(jax.random.key(hash((step, path, n)) % 2**31), v.shape), np.float32)
        named[f"base_model.model.{mod}.{n}.default"].grad = torch.from_numpy(g.copy())
        grads[path][n] = jnp.asarray(g)
    budget_t, mask_t = allocator.update_and_allocate(model, step)
    budget, mask_now = pp.adalora_budget(step, init_budget=init_budget, target_budget=2 * 3, tinit=2, tfinal=4,
                                         total_step=24, delta_t=2)
    assert (budget, mask_now) == (budget_t, mask_t is not None), step
    state = jax.jit(pp.adalora_update_importance)(state, adapters, grads)
    if mask_now:
      masked_steps += 1
      adapters, keep = pp.adalora_mask_to_budget(state, adapters, budget)
      for path in adapters:
        torch_e = named[f"base_model.model.{pp.module_name(path)}.lora_E.default"].detach().numpy().reshape(-1)
        np.testing.assert_array_equal(np.asarray(keep[path]), torch_e != 0, err_msg=f"step {step} {path}")
        np.testing.assert_allclose(np.asarray(adapters[path]["lora_E"]).reshape(-1), torch_e, rtol=1e-6)
  assert masked_steps >= 5


def test_orthogonality_regularizer_matches_peft_formula():
  _, _, net, _ = _base()
  model, _ = _peft_model(net)
  reg = 0.0
  count = 0
  for n, p in model.named_parameters():
    if "lora_A" in n or "lora_B" in n:
      cov = p @ p.T if "lora_A" in n else p.T @ p
      reg += torch.norm(cov - torch.eye(*cov.size()), p="fro")
      count += 1
  np.testing.assert_allclose(float(pp.adalora_orth_reg(_ours_from(model))), float(reg / count), rtol=1e-5)


def test_eva_init_matches_peft_subspaces_and_rank_distribution():
  """peft's ``initialize_lora_eva_weights`` (incremental PCA until convergence, tau=0.99, rho=2) on the same layer
  inputs: the same rank per layer and principal angles between the ``lora_A`` row spaces below 1e-3 rad."""
  from peft.tuners.lora.eva import initialize_lora_eva_weights

  graphdef, params, net, _ = _base()
  x = np.asarray(jax.random.normal(jax.random.key(4), (256, 8)), np.float32)
  config = peft.LoraConfig(r=2, target_modules=["hidden.0", "hidden.1", "head"], init_lora_weights="eva",
                           eva_config=peft.EvaConfig(rho=2.0, tau=0.99))
  model = peft.get_peft_model(copy.deepcopy(net), config, low_cpu_mem_usage=True)
  initialize_lora_eva_weights(model, dataloader=[torch.from_numpy(x.copy())] * 4, forward_fn=lambda m, i: m(i),
                              prepare_model_inputs_fn=None, prepare_layer_inputs_fn=None, show_progress_bar=False)
  h0 = jax.nn.relu(x @ params["hidden"][0]["kernel"] + params["hidden"][0]["bias"])
  h1 = jax.nn.relu(h0 @ params["hidden"][1]["kernel"] + params["hidden"][1]["bias"])
  acts = {"hidden/0/kernel": jnp.asarray(x), "hidden/1/kernel": h0, "head/kernel": h1}
  adapters, ranks = pp.eva_init(acts, params, r=2, rho=2.0)
  assert sum(ranks.values()) == 2 * 3
  named = dict(model.named_parameters())
  for path, rank in ranks.items():
    a_peft = named[f"base_model.model.{pp.module_name(path)}.lora_A.default.weight"].detach().numpy()
    assert a_peft.shape[0] == rank, path
    cosines = np.linalg.svd(np.asarray(adapters[path]["lora_A"]) @ a_peft.T, compute_uv=False)
    assert np.arccos(np.clip(cosines.min(), -1, 1)) < 1e-3, (path, cosines)
    assert not np.any(np.asarray(adapters[path]["lora_B"]))
