"""Parity of paperlab.analysis.landscape with the PyTorch ``loss-landscapes`` package (3.0.6,
marcellodebernardi/loss-landscapes) on one plane of a bias-free MLP with identical weights in flax NNX and torch.

The directions are drawn in JAX and transferred: ``loss_landscapes.main``'s draws (``rand_u_like`` and
``orthogonal_to``) are replaced by the transferred raw directions, so its ``random_plane`` runs its own filter
normalization, rescaling and grid walk on them. loss-landscapes normalizes 1-D (bias) directions by a different
rule than the paper's ``ignore="biasbn"`` (and divides 0/0 on a zero bias direction), hence the bias-free net.

Checked: (1) ``ModelParameters.filter_normalize_`` on the transferred directions equals our
``normalize_direction(norm="filter")`` (1e-6 relative); (2) every parameter point ``random_plane`` visits lies on
our plane ``theta + alpha d1 + beta d2`` (least-squares residual < 1e-5 of the step), and our
:func:`landscape_2d` at its coordinates gives its losses (1e-5 relative).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import analysis, models

torch = pytest.importorskip("torch")
ll_main = pytest.importorskip("loss_landscapes.main")
from loss_landscapes.metrics.metric import Metric  # noqa: E402
from loss_landscapes.model_interface.model_parameters import ModelParameters  # noqa: E402


def _setup():
  model = models.MLP(6, [8, 8], 3, activation="relu", use_bias=False, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 6)).astype(np.float32)
  y = rng.integers(0, 3, size=64)

  def loss(p):
    h = x
    for i in range(2):
      h = jax.nn.relu(h @ p["hidden"][i]["kernel"])
    logits = h @ p["head"]["kernel"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(y)[:, None], 1))

  np.testing.assert_allclose(loss(params), -jnp.mean(jnp.take_along_axis(
      jax.nn.log_softmax(model(x)), jnp.asarray(y)[:, None], 1)), rtol=1e-6)
  net = torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.ReLU(), torch.nn.Linear(8, 8, bias=False),
                            torch.nn.ReLU(), torch.nn.Linear(8, 3, bias=False))
  with torch.no_grad():
    for t, w in zip((net[0], net[2], net[4]), _kernels(params)):
      t.weight.copy_(torch.tensor(w))
  return loss, params, net, torch.tensor(x), torch.tensor(y)


def _kernels(tree):
  """Our kernels in torch's parameter order and (out, in) layout."""
  return [np.asarray(tree["hidden"][0]["kernel"]).T, np.asarray(tree["hidden"][1]["kernel"]).T,
          np.asarray(tree["head"]["kernel"]).T]


def _flat(tree):
  return np.concatenate([k.reshape(-1) for k in _kernels(tree)]).astype(np.float64)


class _Recorder(Metric):
  """Records the visited parameters (torch order, flat) and the cross-entropy there."""

  def __init__(self, x, y):
    super().__init__()
    self.x, self.y, self.points, self.losses = x, y, [], []

  def __call__(self, wrapper):
    self.points.append(np.concatenate([p.detach().numpy().reshape(-1) for p in wrapper.get_module_parameters()]))
    loss = torch.nn.functional.cross_entropy(wrapper.forward(self.x), self.y).item()
    self.losses.append(loss)
    return loss


def test_plane_matches_loss_landscapes(monkeypatch):
  loss, params, net, x, y = _setup()
  k1, k2 = jax.random.split(jax.random.key(0))
  raw = [analysis.random_direction(k, params, norm=None) for k in (k1, k2)]  # bias-free: nothing ignored
  ours = [analysis.normalize_direction(r, params, norm="filter") for r in raw]

  # (1) filter normalization of the same raw directions
  theta_t = ModelParameters([torch.tensor(w) for w in _kernels(params)])
  for r, o in zip(raw, ours):
    theirs = ModelParameters([torch.tensor(w) for w in _kernels(r)])
    theirs.filter_normalize_(theta_t)
    for a, b in zip(theirs.parameters, _kernels(o)):
      np.testing.assert_allclose(a.numpy(), b, rtol=1e-6)

  # (2) random_plane on the transferred raw directions
  transferred = iter([ModelParameters([torch.tensor(w.copy()) for w in _kernels(r)]) for r in raw])
  monkeypatch.setattr(ll_main, "rand_u_like", lambda _: next(transferred))
  monkeypatch.setattr(ll_main, "orthogonal_to", lambda _: next(transferred))
  recorder = _Recorder(x, y)
  steps = 10
  grid = ll_main.random_plane(net, recorder, distance=1.0, steps=steps, normalization="filter")
  assert grid.shape == (steps, steps)
  basis = np.stack([_flat(o) for o in ours], 1)
  offsets = np.stack(recorder.points).astype(np.float64) - _flat(params)
  coords, *_ = np.linalg.lstsq(basis, offsets.T, rcond=None)
  residual = np.linalg.norm(offsets.T - basis @ coords, axis=0)
  step = np.linalg.norm(basis, axis=0).min() / steps
  assert residual.max() < 1e-5 * step * steps + 1e-5
  # our landscape at the coordinates it visited; evaluate on the grid of its distinct alphas x betas
  alphas, a_idx = np.unique(np.round(coords[0], 5), return_inverse=True)
  betas, b_idx = np.unique(np.round(coords[1], 5), return_inverse=True)
  surface = analysis.landscape_2d(loss, params, tuple(ours), jnp.asarray(alphas, jnp.float32),
                                  jnp.asarray(betas, jnp.float32))
  np.testing.assert_allclose(np.asarray(surface)[a_idx, b_idx], recorder.losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.sort(grid.reshape(-1)), np.sort(recorder.losses), rtol=1e-7)
