"""Parity of gradient-free structured pruning (Nova et al., arXiv:2303.04185) with independent oracles:

* the least-squares fold equals ``np.linalg.lstsq(A_keep, A_all @ W_next)`` (float64 NumPy; 1e-4 relative);
* the convex (KCM) coefficients equal ``scipy.optimize.nnls`` on the system augmented with a heavily weighted
  sum-to-one row (a standard exact-penalty form of simplex-constrained least squares; 2e-3 absolute);
* the magnitude-norm baseline (``weight_norm_scores`` + ``select_top``) keeps exactly the neurons that
  ``torch.nn.utils.prune.ln_structured(module, "weight", amount, n=2, dim=0)`` keeps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import paperlab.prune as pr


def test_lstsq_fold_equals_numpy_lstsq():
  rng = np.random.default_rng(0)
  a = np.maximum(rng.normal(size=(50, 10)), 0).astype(np.float32)
  w = rng.normal(size=(10, 4)).astype(np.float32)
  keep = np.array([0, 1, 3, 4, 6, 9])
  ours = np.asarray(pr.fold_pruned_neurons(jnp.asarray(w), jnp.asarray(a), jnp.asarray(keep), method="lstsq"))
  ref = np.linalg.lstsq(a[:, keep].astype(np.float64), a.astype(np.float64) @ w, rcond=None)[0]
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_convex_coefficients_equal_scipy_nnls_with_a_sum_to_one_row():
  rng = np.random.default_rng(1)
  basis = np.maximum(rng.normal(size=(30, 5)), 0)
  targets = np.maximum(rng.normal(size=(30, 3)), 0)
  ours = np.asarray(pr.convex_coefficients(jnp.asarray(targets, jnp.float32), jnp.asarray(basis, jnp.float32),
                                           num_iters=3000))
  big = 1e3
  for i in range(3):
    ref = optimize.nnls(np.vstack([basis, big * np.ones((1, 5))]), np.concatenate([targets[:, i], [big]]))[0]
    np.testing.assert_allclose(ours[i], ref, atol=2e-3)


torch = pytest.importorskip("torch")
from torch.nn.utils import prune as tprune  # noqa: E402


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.75])
def test_weight_norm_selection_equals_torch_ln_structured(amount):
  torch.manual_seed(0)
  layer = torch.nn.Linear(9, 16)
  tprune.ln_structured(layer, "weight", amount=amount, n=2, dim=0)
  torch_keep = layer.weight_mask.numpy().any(axis=1)
  kernel = jnp.asarray(layer.weight_orig.detach().numpy().T)  # Flax (in, out)
  keep = pr.select_top(pr.weight_norm_scores(kernel), 16 - round(amount * 16))
  ours = np.zeros(16, bool)
  ours[np.asarray(keep)] = True
  np.testing.assert_array_equal(ours, torch_keep)
