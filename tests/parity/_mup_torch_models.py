"""PyTorch reference models shared by the muP parity tests (tests/parity/test_param_mup*.py): the parameter shapes of
``paperlab.models.CharTransformer`` built from ``nn.Linear`` / ``nn.Embedding`` / ``nn.LayerNorm`` and ``mup``'s
``MuReadout``, and the map from PyTorch parameter names to Flax leaf paths. Imported by name like
tests/runner/_jax_procs.py (pytest puts each test file's folder on sys.path)."""

from __future__ import annotations

import mup
import torch


class TorchBlock(torch.nn.Module):
  def __init__(self, d: int):
    super().__init__()
    self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
    self.attn = torch.nn.Module()
    self.attn.qkv = torch.nn.Linear(d, 3 * d, bias=False)
    self.attn.out = torch.nn.Linear(d, d, bias=False)
    self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)


class TorchTransformer(torch.nn.Module):
  """Only the parameter shapes and module types matter for the checks it is used in."""

  def __init__(self, d: int, vocab: int = 50, seq: int = 16, layers: int = 2, readout_zero_init: bool = False):
    super().__init__()
    self.embed = torch.nn.Embedding(vocab, d)
    self.pos = torch.nn.Parameter(torch.randn(seq, d) * 0.02)
    self.blocks = torch.nn.ModuleList([TorchBlock(d) for _ in range(layers)])
    self.ln_f = torch.nn.LayerNorm(d)
    self.head = mup.MuReadout(d, vocab, bias=False, readout_zero_init=readout_zero_init)


def flax_name(model: torch.nn.Module, name: str) -> str:
  """The Flax leaf path (``blocks/0/attn/qkv/kernel``) of a PyTorch parameter name (``blocks.0.attn.qkv.weight``)."""
  module_path, _, leaf = name.rpartition(".")
  module = model.get_submodule(module_path) if module_path else model
  if leaf == "weight":
    leaf = {torch.nn.Embedding: "embedding", torch.nn.LayerNorm: "scale"}.get(type(module), "kernel")
  return "/".join(module_path.split(".") + [leaf]) if module_path else leaf
