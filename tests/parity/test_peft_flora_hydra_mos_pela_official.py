"""Parity of FLoRA, Hydra and PELA with transcriptions of their official PyTorch code, and of MoS with the paper's
assembly written in torch (no official MoS code was available here).

Transcribed (torch, forward only, cited by repository, file and commit):
* FLoRA: SJTU-DeepVisionLab/FLoRA ``flora/layers.py`` ``FLoRALayer.forward(style="v2")`` and ``init_parameters``,
  commit d424560e801b72fa06e2f19957514b7c7f2816df; a linear (N=2) and a conv2d (N=4) kernel.
* Hydra: extremebird/Hydra ``nlu/src/transformers/models/adapter.py`` ``Hydra`` and
  ``nlu/src/transformers/models/roberta/modeling_roberta.py`` ``RobertaOutput.forward``,
  commit 4138457859666d49b9ca9e45473d8570586670bb.
* PELA: guoyang9/PELA ``DeiT/low_rank.py`` ``low_rank_approximate`` / ``ModuleLowRank._apply`` and ``DeiT/engine.py``
  ``inf_norm`` and the ``L_fm`` feature loss, commit e0d3e1f7ca216a9712594d406baeaeaead396566.
Tolerances: 1e-5 absolute on float32 outputs and weights (1e-4 on SVD-derived products).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import paperlab.peft as pp  # noqa: E402

RNG = np.random.default_rng(0)


def _randn(*shape):
  return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------ FLoRA (official)


def _flora_official(param_G, params):  # FLoRALayer.forward(style="v2"), scale applied by the caller
  dt_weight = torch.tensordot(param_G, params[0], dims=[[0], [1]])
  for i in range(1, len(params)):
    dt_weight = torch.tensordot(dt_weight, params[i], dims=[[0], [1]])
  if dt_weight.dim() > 1:
    dt_weight = dt_weight.transpose(0, 1)
  return dt_weight


def test_flora_linear_and_conv_updates_match_official_layer():
  scale = 4.0
  # linear: official dims [in, out]; the update is the torch (out, in) weight
  g, p0, p1 = _randn(3, 5), _randn(12, 3), _randn(7, 5)
  want = scale * _flora_official(torch.tensor(g), [torch.tensor(p0), torch.tensor(p1)]).numpy()
  ours = pp.flora_delta(jnp.asarray(g), [jnp.asarray(p0), jnp.asarray(p1)], scale)  # Flax (in, out)
  np.testing.assert_allclose(np.asarray(ours).T, want, atol=1e-5)
  # conv2d: official dims [in, out, kh, kw] -> torch weight (out, in, kh, kw); Flax kernel (kh, kw, in, out)
  g = _randn(2, 3, 2, 2)
  ps = [_randn(4, 2), _randn(6, 3), _randn(3, 2), _randn(3, 2)]
  want = scale * _flora_official(torch.tensor(g), [torch.tensor(p) for p in ps]).numpy()
  core = np.transpose(g, (2, 3, 0, 1))  # our axes (kh, kw, in, out)
  ours = pp.flora_delta(jnp.asarray(core), [jnp.asarray(ps[i]) for i in (2, 3, 0, 1)], scale)
  np.testing.assert_allclose(np.asarray(ours), np.transpose(want, (2, 3, 1, 0)), atol=1e-5)
  # merged conv forward equals the official base conv + FLoRA conv branch
  w_torch, x = _randn(6, 4, 3, 3), _randn(2, 4, 5, 5)
  official = F.conv2d(torch.tensor(x), torch.tensor(w_torch)) + F.conv2d(torch.tensor(x), torch.tensor(want))
  params = {"conv": {"kernel": jnp.asarray(np.transpose(w_torch, (2, 3, 1, 0)))}}
  adapter = {"flora_core": jnp.asarray(core), **{f"flora_factor_{j}": jnp.asarray(ps[i])
                                                 for j, i in enumerate((2, 3, 0, 1))}}
  k = pp.apply_flora(params, {"conv/kernel": adapter}, scale=scale)["conv"]["kernel"]
  ours = jax.lax.conv_general_dilated(jnp.asarray(x), k, (1, 1), "VALID", dimension_numbers=("NCHW", "HWIO", "NCHW"))
  np.testing.assert_allclose(np.asarray(ours), official.numpy(), atol=1e-4)


def test_flora_init_matches_official_kaiming_normal_and_zero_core():
  ours = pp.flora_init(jax.random.key(0), {"w": jnp.zeros((4096, 64))}, include="w", r=8)["w"]
  ref = torch.empty(4096, 8)
  nn.init.kaiming_normal_(ref, a=math.sqrt(3))  # the official init_parameters
  assert float(np.std(np.asarray(ours["flora_factor_0"]))) == pytest.approx(float(ref.std()), rel=0.03)
  assert not np.any(np.asarray(ours["flora_core"]))


# ------------------------------------------------------------------------------------------------ Hydra (official)


class _Hydra(nn.Module):  # nlu/src/transformers/models/adapter.py
  def __init__(self, in_features, out_features, r):
    super().__init__()
    self.hydra_A = nn.Linear(in_features, r, bias=False)
    self.hydra_B = nn.Linear(r, out_features, bias=False)

  def forward(self, x):
    return self.hydra_B(self.hydra_A(x))


class _Output(nn.Module):  # RobertaOutput with apply_hydra (dropout and LayerNorm left out: not part of the update)
  def __init__(self, d_in, d_out, r_par, r_seq):
    super().__init__()
    self.dense = nn.Linear(d_in, d_out)
    self.hydra_par = _Hydra(d_in, d_out, r_par)
    self.hydra_seq = _Hydra(d_out, d_out, r_seq)

  def forward(self, hidden_states):
    hidden_states1 = self.dense(hidden_states)
    hidden_states2 = self.hydra_par(hidden_states)
    hidden_states3 = self.hydra_seq(hidden_states1)
    return hidden_states1 + hidden_states2 + hidden_states3


def test_hydra_merged_layer_matches_official_forward():
  d_in, d_out = 12, 8
  w, b, x = _randn(d_in, d_out), _randn(d_out), _randn(6, d_in)
  a = {"hydra_par_A": _randn(4, d_in), "hydra_par_B": _randn(d_out, 4), "hydra_seq_A": _randn(8, d_out),
       "hydra_seq_B": 0.3 * _randn(d_out, 8)}
  net = _Output(d_in, d_out, 4, 8)
  with torch.no_grad():
    net.dense.weight.copy_(torch.tensor(w.T))
    net.dense.bias.copy_(torch.tensor(b))
    for branch, tag in ((net.hydra_par, "par"), (net.hydra_seq, "seq")):
      branch.hydra_A.weight.copy_(torch.tensor(a[f"hydra_{tag}_A"]))
      branch.hydra_B.weight.copy_(torch.tensor(a[f"hydra_{tag}_B"]))
    want = net(torch.tensor(x)).numpy()
  merged = pp.apply_hydra({"dense": {"kernel": w, "bias": b}}, {"dense/kernel": a})["dense"]
  np.testing.assert_allclose(x @ np.asarray(merged["kernel"]) + np.asarray(merged["bias"]), want, atol=1e-4)
  np.testing.assert_allclose(np.asarray(pp.hydra_linear(x, w, b, a)), want, atol=1e-4)


# ------------------------------------------------------------------------------------------------ PELA (official)


def _low_rank_approximate(mat_org, rank):  # DeiT/low_rank.py
  u, s, vh = np.linalg.svd(mat_org.detach().numpy(), full_matrices=True)
  s_val = np.sqrt(np.diag(s[:rank]))
  mat_q = torch.tensor(u[:, :rank] @ s_val)
  mat_r = torch.tensor(s_val @ vh[:rank, :])
  return mat_q, mat_r.t()


def _inf_norm_pair(rebuild, param_t, eps):  # DeiT/engine.py inf_norm, one layer
  return F.mse_loss(torch.norm(rebuild - param_t, float("inf")), torch.tensor(eps))


def test_pela_factors_rank_and_regularizers_match_official():
  d_in, d_out, ratio = 24, 16, 2.0
  torch_w = _randn(d_out, d_in)  # nn.Linear weight; the official code factors weight.t() = the Flax kernel
  rank = int((d_in * d_out) // (ratio * (d_in + d_out)))  # ModuleLowRank._apply
  assert pp.pela_rank((d_in, d_out), ratio) == rank
  mat_q, mat_r = _low_rank_approximate(torch.tensor(torch_w).t(), rank)
  module_l_weight, module_r_weight = mat_q.t(), mat_r  # module_l (rank, in), module_r (out, rank)
  f = pp.pela_init({"fc": {"kernel": jnp.asarray(torch_w.T)}}, include="fc", compress_ratio=ratio)["fc/kernel"]
  assert f["pela_A"].shape == tuple(module_l_weight.shape) and f["pela_B"].shape == tuple(module_r_weight.shape)
  for k in range(rank):  # each rank-1 component, which is sign-free
    ours = np.outer(np.asarray(f["pela_A"])[k], np.asarray(f["pela_B"])[:, k])
    want = np.outer(module_l_weight[k].numpy(), module_r_weight[:, k].numpy())
    np.testing.assert_allclose(ours, want, atol=1e-4)
  x = _randn(3, d_in)
  seq = nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False))
  with torch.no_grad():
    seq[0].weight.copy_(module_l_weight)
    seq[1].weight.copy_(module_r_weight)
    np.testing.assert_allclose(np.asarray(pp.pela_linear(x, f)), seq(torch.tensor(x)).numpy(), atol=1e-4)
    rebuild = torch.mm(seq[1].weight, seq[0].weight)
    want = _inf_norm_pair(rebuild, torch.tensor(torch_w), 1e-3).item()
  got = pp.pela_weight_regularizer({"fc": {"kernel": jnp.asarray(torch_w.T)}}, {"fc/kernel": f})
  assert float(got) == pytest.approx(want, rel=1e-4)
  fs, ft = [_randn(4, 5), _randn(2, 3)], [_randn(4, 5), _randn(2, 3)]
  want = sum(F.mse_loss(torch.tensor(s), torch.tensor(t)).item() for s, t in zip(fs, ft)) / 2
  assert float(pp.pela_feature_loss([jnp.asarray(s) for s in fs], [jnp.asarray(t) for t in ft])) == pytest.approx(
      want, rel=1e-5)


# ------------------------------------------------------------------------------------------------ MoS (paper, torch)


def test_mos_forward_and_shard_gradients_match_torch_assembly():
  """Each layer's A row / B column is the concatenation of its routed shards (private first, then shared), the
  update LoRA's; torch autograd through the same gather gives the gradient of every shared and private shard."""
  params = {"l0": {"kernel": jnp.asarray(_randn(8, 8))}, "l1": {"kernel": jnp.asarray(_randn(8, 8))}}
  r, l, alpha = 2, 2, 8.0
  shards, routing = pp.mos_init(jax.random.key(0), params, include="l", r=r, pool_size=3, shards_per_vector=l,
                                private=1)
  shards = jax.tree.map(lambda s: s + jnp.asarray(_randn(*s.shape)), shards)
  x = _randn(5, 8)

  def ours(sh):
    p = pp.apply_adapters(params, pp.mos_to_lora(sh, routing, r), alpha=alpha)
    return jnp.sum(jnp.tanh(x @ p["l0"]["kernel"]) @ p["l1"]["kernel"])

  t = jax.tree.map(lambda s: torch.tensor(np.asarray(s), requires_grad=True), shards)
  out = torch.tensor(x)
  for name in ("l0", "l1"):
    path = f"{name}/kernel"
    mats = {}
    for mat in ("A", "B"):
      pool = torch.cat([t["private"][path][mat], t["shared"][f"{mat}/4"]])
      mats[mat] = torch.stack([torch.cat([pool[int(i)] for i in routing[path][mat][k * l:(k + 1) * l]])
                               for k in range(r)])  # (r, d)
    w = torch.tensor(np.asarray(params[name]["kernel"])) + (alpha / r) * mats["A"].T @ mats["B"]
    out = torch.tanh(out @ w) if name == "l0" else out @ w
  loss = out.sum()
  loss.backward()
  np.testing.assert_allclose(float(ours(shards)), loss.item(), rtol=1e-5)
  grads = jax.grad(ours)(shards)
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(t)):
    np.testing.assert_allclose(np.asarray(got), ref.grad.numpy(), atol=1e-4, rtol=1e-4)
