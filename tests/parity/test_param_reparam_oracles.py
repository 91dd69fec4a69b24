"""Oracles for the reparametrizations of [5], [126] and [123]: PyTorch's ``F.normalize`` (forward and autograd) for
weight conditioning's row equilibration, van der Sluis' theorem on its condition number, and closed forms for the
compander's derivatives and LAWN's projected step. None of the three papers released code (checked: no official
repository is indexed for arXiv:2306.16993, 2409.03424 or 2108.05839), so there is nothing to transcribe.

Tolerances: float32 against float32 PyTorch 1e-6 (forward) and 1e-5 (gradients); closed forms in float64 NumPy
against float32 JAX 1e-5 relative (1e-6 absolute where float32 cancellation in the saturated tail of the compander
dominates, 1e-4 relative for its a-derivative, a difference of two nearly equal terms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import param

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def test_row_conditioning_matches_torch_normalize_forward_and_backward():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(12, 7)).astype(np.float32)  # Flax (in, out); PyTorch's weight is its transpose
  x = rng.normal(size=(5, 12)).astype(np.float32)
  target = rng.normal(size=(5, 7)).astype(np.float32)

  def loss(k):
    return jnp.mean((x @ param.weight_condition(k) - target) ** 2)

  value, grad = jax.value_and_grad(loss)(jnp.asarray(kernel))
  w = torch.tensor(kernel.T.copy(), requires_grad=True)
  conditioned = torch.nn.functional.normalize(w, p=2.0, dim=1)  # every row (output unit) to unit norm
  ref = torch.mean((torch.tensor(x) @ conditioned.T - torch.tensor(target)) ** 2)
  ref.backward()
  np.testing.assert_allclose(np.asarray(param.weight_condition(kernel)), conditioned.detach().numpy().T, rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_allclose(float(value), float(ref), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), w.grad.numpy().T, rtol=1e-5, atol=1e-6)


def test_row_equilibration_is_within_van_der_sluis_bound_of_every_diagonal_scaling():
  # van der Sluis (1969); Higham, Accuracy and Stability of Numerical Algorithms (2002), Thm 7.5: for nonsingular
  # A (n x n) with rows scaled to unit 2-norm, kappa_2(D_R A) <= sqrt(n) * kappa_2(D A) for every diagonal D
  rng = np.random.default_rng(1)
  n = 8
  for _ in range(20):
    a = rng.normal(size=(n, n)) * np.exp(2 * rng.normal(size=(n, 1)))  # the paper's W, rows = output units
    equilibrated = np.asarray(param.weight_condition(jnp.asarray(a.T, jnp.float32)), np.float64).T
    k_eq = np.linalg.cond(equilibrated)
    for _ in range(10):
      d = np.exp(3 * rng.normal(size=(n, 1)))
      assert k_eq <= np.sqrt(n) * np.linalg.cond(d * a) * (1 + 1e-4)


def test_compander_derivatives_match_their_closed_forms():
  w = np.linspace(-1.5, 1.5, 31)
  a, b = 0.7, 2.5
  u = b * w / a
  sech2 = 1.0 / np.cosh(u) ** 2
  f = lambda w, a, b: param.compander(w, a=a, b=b)
  dw = jax.vmap(jax.grad(f), in_axes=(0, None, None))(jnp.asarray(w, jnp.float32), a, b)
  da = jax.vmap(jax.grad(f, argnums=1), in_axes=(0, None, None))(jnp.asarray(w, jnp.float32), a, b)
  db = jax.vmap(jax.grad(f, argnums=2), in_axes=(0, None, None))(jnp.asarray(w, jnp.float32), a, b)
  np.testing.assert_allclose(np.asarray(f(jnp.asarray(w, jnp.float32), a, b)), a * np.tanh(u), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(np.asarray(dw), b * sech2, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(da), np.tanh(u) - u * sech2, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(db), w * sech2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity", ["layer", "neuron"])
def test_lawn_sgd_step_is_the_projected_step_renormalized(granularity):
  # Gupta et al., arXiv:2108.05839, Algorithm 1 with SGD: g_t = g - (g.w / |w|^2) w; w' = c (w - lr g_t) / |.|
  rng = np.random.default_rng(2)
  w = rng.normal(size=(6, 4))
  grads = [rng.normal(size=(6, 4)) for _ in range(3)]
  lr = 0.3
  tx = param.lawn(optax.sgd(lr), free_steps=1, mask=lambda p: {"k": True}, granularity=granularity)
  params = {"k": jnp.asarray(w, jnp.float32)}
  state = tx.init(params)
  ours = []
  for g in grads:
    u, state = tx.update({"k": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, u)
    ours.append(np.asarray(params["k"]))

  axis = None if granularity == "layer" else 0
  ref = w - lr * grads[0]  # the free step
  np.testing.assert_allclose(ours[0], ref, rtol=1e-5, atol=1e-6)
  c = np.linalg.norm(ref, axis=axis)  # frozen at update free_steps = 1
  for g, got in zip(grads[1:], ours[1:]):
    radial = np.sum(g * ref, axis=axis) / np.sum(ref * ref, axis=axis) * ref
    tangent = g - radial
    assert np.all(np.abs(np.sum(tangent * ref, axis=axis)) < 1e-9 * np.linalg.norm(g) * np.linalg.norm(ref))
    moved = ref - lr * tangent
    ref = c * moved / np.linalg.norm(moved, axis=axis)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
