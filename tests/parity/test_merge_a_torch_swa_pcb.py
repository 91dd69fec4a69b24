"""Parity with independent oracles: SWA averaging and BatchNorm recomputation vs ``torch.optim.swa_utils``, and PCB
vs a PyTorch transcription of the PCB paper's equations (arXiv:2410.02396, eq. 2-6) written for this test."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import paperlab.merge as pm  # noqa: E402


def test_swa_running_mean_matches_torch_averaged_model():
  torch.manual_seed(0)
  net = torch.nn.Linear(5, 3)
  avg = torch.optim.swa_utils.AveragedModel(net)
  ours = None
  for _ in range(4):
    with torch.no_grad():
      for p in net.parameters():
        p.add_(torch.randn_like(p))
    avg.update_parameters(net)
    params = {"kernel": jnp.asarray(net.weight.detach().numpy().T), "bias": jnp.asarray(net.bias.detach().numpy())}
    ours = pm.swa_update(ours if ours is not None else pm.swa_init(params), params)
  np.testing.assert_allclose(ours.mean["kernel"], avg.module.weight.detach().numpy().T, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ours.mean["bias"], avg.module.bias.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_bn_update_matches_torch_update_bn():
  import optax
  from paperlab.models import MLP
  from paperlab.train import make_init

  graphdef, init = make_init(lambda rngs: MLP(5, [4], 3, norm="batch", rngs=rngs), optax.sgd(0.1))
  state = init(jax.random.key(0))
  batch = 8
  xs = [np.asarray(jax.random.normal(jax.random.key(i), (batch, 5))) * (i + 1) for i in range(3)]
  ours = pm.bn_update(graphdef, state.params, state.model_state, xs)

  lin = torch.nn.Linear(5, 4)
  bn = torch.nn.BatchNorm1d(4)
  with torch.no_grad():
    lin.weight.copy_(torch.from_numpy(np.array(state.params["hidden"][0]["kernel"]).T.copy()))
    lin.bias.copy_(torch.from_numpy(np.array(state.params["hidden"][0]["bias"])))
  model = torch.nn.Sequential(lin, bn)
  loader = [torch.from_numpy(x) for x in xs]
  torch.optim.swa_utils.update_bn(loader, model)
  np.testing.assert_allclose(ours["norms"][0]["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  # torch keeps the unbiased batch variance, Flax the biased one
  np.testing.assert_allclose(np.asarray(ours["norms"][0]["var"]) * batch / (batch - 1), bn.running_var.numpy(),
                             rtol=1e-4, atol=1e-6)


def _torch_pcb(tau: torch.Tensor, ratio: float, clamp_q: float) -> torch.Tensor:
  """PCB on (n, d) task vectors, transcribed from the paper's equations with torch.quantile-free sorting."""
  n, d = tau.shape

  def clip_rows(x, lo_q, hi_q):
    srt = x.sort(dim=1).values
    lo = srt[:, int(d * lo_q)].unsqueeze(1)
    hi = srt[:, max(int(d * (1 - hi_q)) - 1, 0)].unsqueeze(1)
    return torch.maximum(torch.minimum(x, hi), lo)

  def rescale01(x):
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo)

  mag = clip_rows(tau.abs(), clamp_q, clamp_q)
  intra = torch.exp(n * rescale01(mag) ** 2)
  inter = torch.tanh(tau * tau.sum(dim=0, keepdim=True))
  weight = rescale01(clip_rows(intra * inter, 1 - ratio, 0.0))
  return (tau.sign() * mag * weight).sum(0) / weight.sum(0).clamp(min=1e-12)


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_pcb_matches_a_torch_transcription(ratio):
  rng = np.random.default_rng(0)
  base = rng.standard_normal(500).astype(np.float32)
  fts = [base + 0.1 * rng.standard_normal(500).astype(np.float32) for _ in range(4)]
  tau = torch.from_numpy(np.stack(fts) - base)
  theirs = base + 0.8 * _torch_pcb(tau, ratio, 1e-3).numpy()
  ours = pm.pcb({"w": jnp.asarray(base)}, [{"w": jnp.asarray(f)} for f in fts], ratio, 0.8, clamp_q=1e-3)["w"]
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
