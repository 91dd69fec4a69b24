"""GaLore parity with ``pytorch_optimizer.GaLore`` (projection type ``std``): the projector spans the same
subspace, and 100 optimizer steps match when the subspace is computed once (``update_proj_gap`` longer than the
run, so the sign ambiguity of singular vectors cannot enter through a refresh)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import GaLore
from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

from paperlab import optim


@pytest.mark.parametrize("shape", [(24, 10), (10, 24)])
def test_galore_basis_spans_pytorch_optimizer_projector(shape):
  g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  proj = GaLoreProjector(rank=3, update_proj_gap=10, projection_type="std")
  low_t = proj.project(torch.from_numpy(g), 1)
  basis = optim.galore_basis(jnp.asarray(g), 3)
  ortho = proj.ortho_matrix.numpy()
  ortho = ortho.T if shape[0] >= shape[1] else ortho  # torch keeps Vh rows for right projection
  np.testing.assert_allclose(np.asarray(basis @ basis.T), ortho @ ortho.T, atol=1e-5)
  back_t = proj.project_back(low_t).numpy()
  back = optim.from_subspace(optim.to_subspace(jnp.asarray(g), basis), basis, shape)
  np.testing.assert_allclose(np.asarray(back), back_t, rtol=1e-4, atol=1e-5)


def test_galore_adam_matches_pytorch_optimizer_over_100_steps():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 20)).astype(np.float32)
  y = rng.normal(size=(64, 12)).astype(np.float32)
  w0 = (0.1 * rng.normal(size=(20, 12))).astype(np.float32)
  lr, steps = 1e-2, 100

  opt = optim.galore(lr, rank=4, update_proj_gap=1000, eps=1e-8)
  w = jnp.asarray(w0)
  state = opt.init(w)

  @jax.jit
  def step(w, s):
    g = jax.grad(lambda w: jnp.mean(jnp.square(jnp.asarray(x) @ w - jnp.asarray(y))))(w)
    u, s = opt.update(g, s, w)
    return optax.apply_updates(w, u), s

  for _ in range(steps):
    w, state = step(w, state)

  wt = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  topt = GaLore([{"params": [wt], "rank": 4, "update_proj_gap": 1000, "scale": 1.0, "projection_type": "std"}],
                lr=lr, eps=1e-8)
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  for _ in range(steps):
    topt.zero_grad()
    torch.mean(torch.square(xt @ wt - yt)).backward()
    topt.step()
  ref = wt.detach().numpy()
  rel = np.linalg.norm(np.asarray(w) - ref) / np.linalg.norm(ref)
  assert rel <= 1e-5, rel
  assert np.linalg.norm(ref - w0) / np.linalg.norm(w0) > 0.05
