"""Lingle's muP transformer preset (arXiv:2404.05728, catalogue [412]) against the ``mup`` package (Microsoft, the
implementation of Tensor Programs V): ``paperlab.param.mup_transformer``'s per-leaf Adam LR multipliers equal the
group lrs of ``mup.MuAdam(lr=1)`` and its init stds equal those of the same shapes in PyTorch after
``mup.set_base_shapes`` with ``MuReadout(readout_zero_init=True)`` (relative error <= 1e-6), leaf by leaf.

The PyTorch model has ``paperlab.models.CharTransformer``'s parameter shapes (tests/parity/_mup_torch_models.py,
shared with tests/parity/test_param_mup.py); the init std of each tensor is measured from PyTorch's default init (std
``1/sqrt(3 fan_in)`` for ``nn.Linear``) times ``set_base_shapes``' rescaling factor (ratio after / before).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
mup = pytest.importorskip("mup")

from paperlab import param  # noqa: E402
from paperlab.models import CharTransformer  # noqa: E402
import _mup_torch_models as _models  # noqa: E402
from _mup_torch_models import flax_name as _flax_name  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-6
TORCH_GAIN = 1 / math.sqrt(3)
VOCAB, SEQ = 50, 16


def TorchTransformer(d: int) -> torch.nn.Module:  # pylint: disable=invalid-name
  """The shared reference model with Lingle's zero-initialized readout (``MuReadout(readout_zero_init=True)``)."""
  return _models.TorchTransformer(d, vocab=VOCAB, seq=SEQ, readout_zero_init=True)


def _flax(d: int):
  return nnx.eval_shape(lambda: CharTransformer(VOCAB, d, 2, 4, SEQ, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("width,base,delta", [(128, 32, 64), (32, 64, 128)])
def test_preset_lr_multipliers_and_init_stds_equal_mups(width, base, delta):
  torch.manual_seed(0)
  model = TorchTransformer(width)
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  mup.set_base_shapes(model, TorchTransformer(base), delta=TorchTransformer(delta))
  names = {id(p): n for n, p in model.named_parameters()}
  lrs = {names[id(p)]: g["lr"] for g in mup.MuAdam(model.parameters(), lr=1.0).param_groups for p in g["params"]}
  preset = param.mup_transformer(_flax(width), _flax(base), delta=_flax(delta), trainable_gains=True,
                                 init_gain=TORCH_GAIN)
  rules = preset.parametrization.rules
  assert len(rules) == len(lrs)
  checked = 0
  for name, p in model.named_parameters():
    rule = rules[_flax_name(model, name)]
    assert abs(rule.lr_multiplier - lrs[name]) <= TOL * lrs[name], (name, rule.lr_multiplier, lrs[name])
    module = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if name == "pos" or isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding)):
      continue  # not nn.Linear-initialized; the biases are Flax's zeros, PyTorch's uniform: not compared
    if name.endswith("bias"):
      continue
    after = p.detach().numpy()
    if not np.any(after):  # the zero-initialized readout
      assert rule.init_std == 0.0, name
      checked += 1
      continue
    nz = before[name].abs() > 0
    ratio = float((p.detach()[nz] / before[name][nz]).numpy()[0])
    torch_std = TORCH_GAIN / math.sqrt(p.shape[1]) * ratio
    assert abs(rule.init_std - torch_std) <= TOL * torch_std, (name, rule.init_std, torch_std)
    checked += 1
  assert checked == 1 + 2 * 4  # readout + (qkv, out, fc1, fc2) per block


def test_fixed_gains_are_mups_gain_lr_set_to_zero():
  torch.manual_seed(0)
  model = TorchTransformer(128)
  mup.set_base_shapes(model, TorchTransformer(32), delta=TorchTransformer(64))
  names = {id(p): n for n, p in model.named_parameters()}
  lrs = {names[id(p)]: g["lr"] for g in mup.MuAdam(model.parameters(), lr=1.0).param_groups for p in g["params"]}
  rules = param.mup_transformer(_flax(128), _flax(32), delta=_flax(64)).parametrization.rules
  for name in lrs:
    expected = 0.0 if _flax_name(model, name).endswith("scale") else lrs[name]
    assert rules[_flax_name(model, name)].lr_multiplier == pytest.approx(expected, rel=TOL), name
