"""u-muP parity with the ``unit-scaling`` package (Graphcore, PyTorch; the implementation of u-muP, arXiv:2407.17465).

Same shapes on both sides, names mapped and PyTorch's ``(out, in)`` kernels transposed to Flax's ``(in, out)``:

* learning-rate multipliers: the per-parameter lr of ``unit_scaling.optim.scaled_parameters(params,
  lr_scale_func_adam, lr=1)`` (what ``unit_scaling.optim.Adam`` and, with ``readout_constraint=None``, ``SGD`` use)
  equals ``parametrize(kind="umup").lr_multipliers`` -- with the residual blocks in a ``DepthModuleList`` (depth
  factor ``L^-1/2``) against ``depth_mup(num_blocks=L, base_blocks=1, blocks=...)`` (relative error <= 1e-6);
* init: ``unit_scaling``'s layers draw weights from ``N(0, 1)`` and zero biases (``Linear.reset_parameters``,
  ``nn.Embedding``); the parametrization's ``init_std`` is 1 and 0, and the empirical std of ``uu.Linear`` weights at
  width 1024 is within 1% of it;
* forward multipliers: with the same weights, a ``uu.Linear -> relu -> uu.Linear -> relu -> uu.LinearReadout`` MLP
  (with biases: a unit-scaled layer scales ``x W^T + b``) and the Flax MLP run through ``apply_multipliers`` give the
  same logits (rtol 1e-5).

The learned positional embedding of ``CharTransformer`` has no ``unit_scaling`` counterpart and is left out.
"""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
uu = pytest.importorskip("unit_scaling")

from paperlab import param  # noqa: E402
from paperlab.models import MLP, CharTransformer  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-6


class UuMLP(torch.nn.Module):
  def __init__(self, width: int):
    super().__init__()
    self.hidden = torch.nn.ModuleList([uu.Linear(64, width, bias=True), uu.Linear(width, width, bias=True)])
    self.head = uu.LinearReadout(width, 10, bias=True)

  def forward(self, x):
    for layer in self.hidden:
      x = torch.relu(layer(x))
    return self.head(x)


class UuBlock(torch.nn.Module):
  def __init__(self, d: int):
    super().__init__()
    self.ln1 = uu.LayerNorm(d, elementwise_affine=True)
    self.ln2 = uu.LayerNorm(d, elementwise_affine=True)
    self.attn = torch.nn.Module()
    self.attn.qkv = uu.Linear(d, 3 * d)
    self.attn.out = uu.Linear(d, d)
    self.fc1, self.fc2 = uu.Linear(d, 4 * d, bias=True), uu.Linear(4 * d, d, bias=True)


class UuTransformer(torch.nn.Module):
  def __init__(self, d: int, vocab: int = 50, layers: int = 3):
    super().__init__()
    self.embed = uu.Embedding(vocab, d)
    self.blocks = uu.DepthModuleList([UuBlock(d) for _ in range(layers)])
    self.ln_f = uu.LayerNorm(d, elementwise_affine=True)
    self.head = uu.LinearReadout(d, vocab)


def _flax_name(model, name: str) -> str:
  module_path, _, leaf = name.rpartition(".")
  module = model.get_submodule(module_path) if module_path else model
  if leaf == "weight":
    leaf = {uu.Embedding: "embedding", uu.LayerNorm: "scale"}.get(type(module), "kernel")
  return "/".join(module_path.split(".") + [leaf])


def _lrs(model) -> dict:
  groups = uu.optim.scaled_parameters(model.parameters(), uu.optim.lr_scale_func_adam, lr=1.0)
  names = {id(p): n for n, p in model.named_parameters()}
  return {names[id(g["params"][0])]: float(g["lr"]) for g in groups}


@pytest.mark.parametrize("width", [64, 256])
def test_umup_lr_multipliers_and_init_equal_unit_scaling(width):
  layers = 3
  model = UuTransformer(width, layers=layers)
  flax_model = nnx.eval_shape(lambda: CharTransformer(50, width, layers, 4, 16, rngs=nnx.Rngs(0)))
  base = nnx.eval_shape(lambda: CharTransformer(50, 32, layers, 4, 16, rngs=nnx.Rngs(0)))
  delta = nnx.eval_shape(lambda: CharTransformer(50, 48, layers, 4, 16, rngs=nnx.Rngs(0)))
  lrs = _lrs(model)
  for opt in ("adam", "sgd"):  # uu.optim.SGD(readout_constraint=None) uses the Adam rule
    p = param.parametrize(flax_model, base, delta=delta, kind="umup", optimizer=opt)
    p = param.depth_mup(p, num_blocks=layers, base_blocks=1, branch=None, blocks=r"^blocks/")
    for name, tparam in model.named_parameters():
      rule = p.rules[_flax_name(model, name)]
      assert abs(rule.lr_multiplier - lrs[name]) <= TOL * lrs[name], (opt, name, rule.lr_multiplier, lrs[name])
      if tparam.ndim == 2:
        assert rule.init_std == 1.0, name
      elif name.endswith("bias"):
        assert rule.init_std == 0.0 and not bool(tparam.detach().abs().any()), name
      else:
        assert rule.init_mean == 1.0 and rule.init_std == 0.0 and bool((tparam.detach() == 1).all()), name
  big = uu.Linear(1024, 1024).weight.detach().numpy()
  assert abs(big.std() - 1.0) <= 0.01


def test_umup_forward_equals_unit_scaling():
  width = 128
  torch.manual_seed(0)
  model = UuMLP(width)
  with torch.no_grad():
    for layer in [*model.hidden, model.head]:
      layer.bias.normal_()  # non-zero biases, so the bias multiplier is tested
  flax_model = MLP(64, [width, width], 10, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(flax_model, nnx.Param)
  params = {"hidden": {}, "head": {}}
  for i, layer in enumerate(model.hidden):
    params["hidden"][i] = {"kernel": jnp.asarray(layer.weight.detach().numpy().T),
                           "bias": jnp.asarray(layer.bias.detach().numpy())}
  params["head"] = {"kernel": jnp.asarray(model.head.weight.detach().numpy().T),
                    "bias": jnp.asarray(model.head.bias.detach().numpy())}
  base = nnx.eval_shape(lambda: MLP(64, [32, 32], 10, rngs=nnx.Rngs(0)))
  p = param.parametrize(flax_model, base, kind="umup")
  assert p.rules["head/kernel"].multiplier == 1 / width
  assert abs(p.rules["hidden/1/kernel"].multiplier - width ** -0.5) <= 1e-12
  x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
  ours = nnx.merge(graphdef, param.apply_multipliers(params, p))(jnp.asarray(x.numpy()))
  np.testing.assert_allclose(np.asarray(ours), model(x).detach().numpy(), rtol=1e-5, atol=1e-6)
