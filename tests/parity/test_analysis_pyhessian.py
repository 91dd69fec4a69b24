"""Parity of paperlab.analysis.hessian with PyHessian 0.1 (``pyhessian.hessian``, the authors' package; Yao et al.,
arXiv:1912.07145) on the same tiny MLP (flax NNX and torch with identical weights) and data.

Tolerances: top eigenvalue 1e-3 relative (PyHessian's power iteration run to convergence vs our Lanczos); trace
and SLQ moments through the *same* probe vectors (injected into PyHessian's ``torch.randint_like`` draws) 1e-4
relative per probe, and both Hutchinson means within 1e-3 of each other. PyHessian's ``density`` calls
``torch.eig``, removed in torch 2; the test supplies it from ``torch.linalg.eigh`` (the tridiagonal is symmetric),
leaving PyHessian's Lanczos untouched.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from paperlab import analysis, models

torch = pytest.importorskip("torch")
pyhessian = pytest.importorskip("pyhessian")


@functools.lru_cache(maxsize=None)
def _setup():
  model = models.MLP(6, [8], 3, activation="tanh", rngs=nnx.Rngs(0))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  params = nnx.to_pure_dict(params)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(32, 6)).astype(np.float32)
  y = rng.integers(0, 3, size=32).astype(np.int64)

  def loss(p, batch):
    xb, yb = batch
    h = jnp.tanh(xb @ p["hidden"][0]["kernel"] + p["hidden"][0]["bias"])
    logits = h @ p["head"]["kernel"] + p["head"]["bias"]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], 1))

  # the closed-form loss must be the library model's forward pass
  np.testing.assert_allclose(loss(params, (x, y.astype(np.int32))),
                             -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(model(x)), y[:, None], 1)), rtol=1e-6)
  net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
  with torch.no_grad():  # torch Linear weight is (out, in): the transpose of the flax kernel
    net[0].weight.copy_(torch.tensor(np.asarray(params["hidden"][0]["kernel"]).T))
    net[0].bias.copy_(torch.tensor(np.asarray(params["hidden"][0]["bias"])))
    net[2].weight.copy_(torch.tensor(np.asarray(params["head"]["kernel"]).T))
    net[2].bias.copy_(torch.tensor(np.asarray(params["head"]["bias"])))
  return loss, params, (jnp.asarray(x), jnp.asarray(y, jnp.int32)), net, (torch.tensor(x), torch.tensor(y))


def _torch_order(tree):
  """One probe of our pytree as PyHessian's parameter list: torch's order, weights transposed to (out, in)."""
  return [np.asarray(tree["hidden"][0]["kernel"]).T, np.asarray(tree["hidden"][0]["bias"]),
          np.asarray(tree["head"]["kernel"]).T, np.asarray(tree["head"]["bias"])]


def _oracle(net, data):
  net.zero_grad(set_to_none=True)  # PyHessian's backward accumulates into .grad: start each oracle clean
  return pyhessian.hessian(net, torch.nn.CrossEntropyLoss(), data=data, cuda=False)


def test_top_eigenvalue_matches_pyhessian():
  loss, params, batch, net, data = _setup()
  torch.manual_seed(0)
  ref, _ = _oracle(net, data).eigenvalues(maxIter=2000, tol=1e-8, top_n=1)
  ours = analysis.hessian_top_eigs(loss, params, batch, jax.random.key(0), k=1, num_iters=40)
  np.testing.assert_allclose(float(ours.values[0]), ref[0], rtol=1e-3)
  power = analysis.hessian_top_eigs(loss, params, batch, jax.random.key(0), k=1, num_iters=2000, method="power",
                                    tol=1e-8)
  np.testing.assert_allclose(float(power.values[0]), ref[0], rtol=1e-3)


def _inject(monkeypatch, probes_torch_order):
  """Make PyHessian's ``torch.randint_like(p, high=2)`` draws return our Rademacher probes as 0/1 (it maps 0 to
  -1 itself), probe after probe, parameter after parameter."""
  queue = [torch.tensor((a > 0).astype(np.float32)) for probe in probes_torch_order for a in probe]

  def randint_like(p, *args, **kwargs):
    nxt = queue.pop(0)
    assert tuple(nxt.shape) == tuple(p.shape)
    return nxt.to(p.dtype)

  monkeypatch.setattr(torch, "randint_like", randint_like)
  return queue


def test_trace_matches_pyhessian_on_the_same_probes(monkeypatch):
  loss, params, batch, net, data = _setup()
  n = 20
  probes = analysis.rademacher_like(jax.random.key(1), params, n)
  per_probe = [_torch_order(jax.tree.map(lambda a: a[i], probes)) for i in range(n)]
  queue = _inject(monkeypatch, per_probe)
  ref = np.asarray(_oracle(net, data).trace(maxIter=n, tol=-1.0))  # tol < 0: no early stop, all n probes
  assert not queue and ref.shape == (n,)
  ours = np.asarray(analysis.hutchinson_samples(loss, params, batch, probes))
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ours.mean(), ref.mean(), rtol=1e-3)
  # and both estimate the exact trace (dense Hessian) within 4 standard errors
  flat, unravel = ravel_pytree(params)
  dense = np.asarray(jax.hessian(lambda f: loss(unravel(f), batch))(flat), np.float64)
  se = np.sqrt(2 * (np.sum(dense**2) - np.sum(np.diag(dense) ** 2)) / n)
  assert abs(ref.mean() - np.trace(dense)) < 4 * se


def test_slq_density_matches_pyhessian_on_the_same_probe(monkeypatch):
  loss, params, batch, net, data = _setup()
  m = 30
  probes = analysis.rademacher_like(jax.random.key(2), params, 1)
  _inject(monkeypatch, [_torch_order(jax.tree.map(lambda a: a[0], probes))])

  def eig(t, eigenvectors=True):  # torch<2 API: (n, 2) [real, imag] eigenvalues and the eigenvectors
    w, v = torch.linalg.eigh(t)
    return torch.stack([w, torch.zeros_like(w)], 1), v

  monkeypatch.setattr(torch, "eig", eig, raising=False)
  ref_nodes, ref_weights = _oracle(net, data).density(iter=m, n_v=1)
  ref_nodes, ref_weights = np.asarray(ref_nodes[0], np.float64), np.asarray(ref_weights[0], np.float64)
  nodes, weights = analysis.hessian_density(loss, params, batch, jax.random.key(0), num_iters=m, num_runs=1,
                                            probes=probes)
  nodes, weights = np.asarray(nodes[0], np.float64), np.asarray(weights[0], np.float64)
  np.testing.assert_allclose(nodes.max(), ref_nodes.max(), rtol=1e-3)
  np.testing.assert_allclose(nodes.min(), ref_nodes.min(), rtol=1e-3, atol=1e-4)
  for p in range(4):  # the quadrature's moments v^T H^p v / |v|^2
    np.testing.assert_allclose(np.sum(weights * nodes**p), np.sum(ref_weights * ref_nodes**p), rtol=1e-4,
                               atol=1e-6)
