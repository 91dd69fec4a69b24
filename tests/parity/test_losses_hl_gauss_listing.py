"""Parity of HL-Gauss with the paper's listing.

Oracle: a torch (float64) transcription of the listing in Farebrother et al., "Stop Regressing: Training Value
Functions via Classification for Scalable Deep RL", arXiv:2403.03950, Listing 1 (``hl_gauss_transform`` /
``HLGaussLoss.transform_to_probs``): ``support = linspace(min, max, num_bins + 1)``, ``cdf = erf((support - y) /
(sqrt(2) sigma))``, ``probs = diff(cdf) / (cdf[-1] - cdf[0])``, loss = ``cross_entropy(logits, probs)``. The
listing does not clip ``y``. It is compared where it is finite (up to 6 sigma outside the support in float64;
farther out it divides 0 by 0). Tolerance: 1e-6 absolute on probabilities, 1e-5 relative on losses.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import paperlab.losses as pl

LO, HI, BINS = -2.0, 3.0, 32
SIGMA = 0.75 * (HI - LO) / BINS


def _listing_probs(target, lo=LO, hi=HI, num_bins=BINS, sigma=SIGMA):
  support = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
  target = torch.as_tensor(np.asarray(target, np.float64))
  cdf_evals = torch.special.erf((support - target.unsqueeze(-1)) / (torch.sqrt(torch.tensor(2.0,
                                                                                 dtype=torch.float64)) * sigma))
  z = cdf_evals[..., -1] - cdf_evals[..., 0]
  bin_probs = cdf_evals[..., 1:] - cdf_evals[..., :-1]
  return bin_probs / z.unsqueeze(-1)


@pytest.mark.parametrize("outside", [0.0, 1.0, 3.0, 6.0])
def test_target_matches_the_listing_inside_and_outside_the_support(outside):
  y = np.linspace(LO - outside * SIGMA, HI + outside * SIGMA, 301).astype(np.float32)
  ref = _listing_probs(y).numpy()
  assert np.isfinite(ref).all()
  np.testing.assert_allclose(pl.hl_gauss_target(y, BINS, LO, HI, SIGMA), ref, atol=1e-6)


def test_loss_and_gradient_match_cross_entropy_against_the_listing_without_clipping():
  rng = np.random.default_rng(0)
  y = rng.uniform(LO - 4 * SIGMA, HI + 4 * SIGMA, size=64).astype(np.float32)
  y[:4] = [HI + 2 * SIGMA, LO - 2 * SIGMA, HI + 0.5 * SIGMA, LO - 3 * SIGMA]  # outside: clipping would change them
  logits = rng.normal(size=(64, BINS)).astype(np.float32)
  z = torch.tensor(logits.astype(np.float64), requires_grad=True)
  ref = F.cross_entropy(z, _listing_probs(y), reduction="none")
  ref.sum().backward()
  value, grad = jax.value_and_grad(lambda l: pl.hl_gauss_loss(l, y, v_min=LO, v_max=HI).sum())(logits)
  np.testing.assert_allclose(pl.hl_gauss_loss(logits, y, v_min=LO, v_max=HI), ref.detach().numpy(), rtol=1e-5)
  np.testing.assert_allclose(grad, z.grad.numpy(), atol=1e-6)


def test_clip_targets_is_the_listing_applied_to_clipped_targets():
  y = np.array([HI + 2 * SIGMA, LO - 5 * SIGMA, 0.3, 100.0], np.float32)
  ref = _listing_probs(np.clip(y, LO, HI)).numpy()
  np.testing.assert_allclose(pl.hl_gauss_target(y, BINS, LO, HI, SIGMA, clip_targets=True), ref, atol=1e-6)
  logits = np.zeros((4, BINS), np.float32)
  np.testing.assert_allclose(pl.hl_gauss_loss(logits, y, v_min=LO, v_max=HI, clip_targets=True),
                             F.cross_entropy(torch.zeros(4, BINS, dtype=torch.float64), torch.tensor(ref),
                                             reduction="none").numpy(), rtol=1e-5)


def test_targets_far_outside_tend_to_one_hot_on_the_outer_bin():
  """Where the listing gives 0/0 the formula's limit is all mass in the outermost bin."""
  y = np.array([HI + 20 * SIGMA, LO - 1e3, np.inf, -np.inf], np.float32)
  target = np.asarray(pl.hl_gauss_target(y, BINS, LO, HI, SIGMA))
  np.testing.assert_allclose(target, np.eye(BINS)[[BINS - 1, 0, BINS - 1, 0]], atol=1e-6)
